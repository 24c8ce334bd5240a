#!/usr/bin/env bash
# One-command GPU benchmark: the training step of ResNeXt-50 32x4d at 224
# (batch 256, bf16) and of the CIFAR ResNet-32 (batch 128, f32 and bf16),
# ours (`resnet_step --device cuda:0`) and PyTorch's (`torch_gpu_step.py`,
# when `python3 -c 'import torch'` works) alternately on the same GPU,
# printing every run and the ratio of median img/s (ours / PyTorch).
#
#   crates/lt-models/benches/gpu_bench.sh [ROUNDS]
#
# Environment:
#   BENCH_BIN    the resnet_step binary of a `--features cuda` build (default:
#                built here with .ci/cuda-build.sh; on a GPU machine without a
#                Rust toolchain, build it elsewhere and point BENCH_BIN at it)
#   PEER_PYTHON  python with torch + torchvision (default python3)
#   CASES        override the cases, e.g. "resnext50_32x4d:256:bf16 resnet32:128:f32"
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROUNDS=${1:-3}
PEER_PYTHON=${PEER_PYTHON:-python3}
CASES=${CASES:-"resnext50_32x4d:256:bf16 resnet32:128:f32 resnet32:128:bf16"}
if [ -z "${BENCH_BIN:-}" ]; then
    "$HERE/../../../.ci/cuda-build.sh" --bench resnet_step >&2
    BENCH_BIN=$(ls -t "${LT_CUDA_TARGET:-$HOME/.cache/lt-cuda/target}"/release/deps/resnet_step-* |
        grep -v '\.d$' | head -n 1)
fi
have_peer=0
"$PEER_PYTHON" -c 'import torch, torchvision; assert torch.cuda.is_available()' 2>/dev/null && have_peer=1
[ "$have_peer" = 1 ] || echo "PyTorch with CUDA not found ($PEER_PYTHON): ours only" >&2
median() { python3 -c 'import sys, statistics; print(statistics.median(float(x) for x in sys.argv[1:]))' "$@"; }
ips() { python3 -c 'import sys, json; print(json.loads(sys.stdin.read().strip().splitlines()[-1])["img_per_s_median"])'; }
for case in $CASES; do
    IFS=: read -r model batch precision <<<"$case"
    ours=() peer=()
    for _ in $(seq "$ROUNDS"); do
        line=$("$BENCH_BIN" --model "$model" --batch "$batch" --precision "$precision" \
            --device cuda:0 --steps 20 --warmup 5 --classes 1000)
        echo "$line"
        ours+=("$(ips <<<"$line")")
        if [ "$have_peer" = 1 ]; then
            line=$("$PEER_PYTHON" "$HERE/torch_gpu_step.py" --model "$model" --batch "$batch" \
                --precision "$precision" --steps 20 --warmup 5 --classes 1000)
            echo "$line"
            peer+=("$(ips <<<"$line")")
        fi
    done
    o=$(median "${ours[@]}")
    if [ "$have_peer" = 1 ]; then
        p=$(median "${peer[@]}")
        echo "RESULT $model batch $batch $precision: ours $o img/s, PyTorch $p img/s, ratio $(python3 -c "print(round($o / $p, 2))")"
    else
        echo "RESULT $model batch $batch $precision: ours $o img/s"
    fi
done
