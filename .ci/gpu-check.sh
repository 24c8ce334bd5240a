#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from the repository root,
# with gpu-bundle/ made by .ci/gpu-prepare.sh (no Rust toolchain needed here):
#
#   1. the machine: driver, GPU, PyTorch, and the CUDA libraries found;
#   2. the GPU tests (cuDNN conv / max-pool vs the CPU kernels, bf16, ResNet
#      trajectories; lt-train's device-side NCM / tau-norm / metrics); a test
#      that prints "skipped: no usable CUDA device" fails the check here;
#   3. a short CIFAR-10-LT training run (configs/gpu_check.toml) on the CPU
#      and on the GPU with strict f32 (LT_CUDNN_TF32=0): same batches, so the
#      epoch losses must agree to ~1e-2 relative;
#   4. the benchmark against PyTorch (crates/lt-models/benches/gpu_bench.sh).
#
# Everything is logged to $OUT/gpu-check.log (OUT defaults to gpu-out). Each
# step runs even if an earlier one failed; the exit status is the number of
# failed steps.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-gpu-out}
B=gpu-bundle
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu-check.log") 2>&1
failed=0
failures=()
step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); failures+=("$*"); }

step "machine"
nvidia-smi || fail "nvidia-smi"
PY=${PEER_PYTHON:-python3}
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))' ||
    echo "no PyTorch with CUDA: the benchmark runs ours only"
# The CUDA libraries: PyTorch's nvidia/* wheels, then a system toolkit.
libdirs=$("$PY" - <<'PY' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for so in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(so))
    dirs.update(glob.glob(os.path.join(sp, "torch", "lib")))
print(":".join(sorted(dirs)))
PY
)
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
    [ -d "$d" ] && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

mkdir -p "$B/run"
for f in "$B"/bin/*.xz; do
    xz -d -c "$f" > "$B/run/$(basename "$f" .xz)" && chmod +x "$B/run/$(basename "$f" .xz)"
done
missing=$(ldd "$B/run/lt-cli" | grep "not found" || true)
if [ -n "$missing" ]; then
    echo "libraries not found (the bundle links CUDA 13 libraries):"
    echo "$missing"
    fail "CUDA libraries"
fi

step "GPU tests"
# A GPU test without a usable device prints "<test>: skipped: ..." and passes
# (that is what .ci/run relies on against the driver stub). Here a GPU is the
# point, so a skip fails the step.
for t in "$B"/run/gpu-*; do
    name=$(basename "$t")
    "$t" --nocapture --test-threads 1 2>&1 | tee "$OUT/$name.out" || fail "$name"
    # With --nocapture the message may follow "test <name> ... " on one line.
    skipped=$(grep -oE '[A-Za-z0-9_]+: skipped: (no usable CUDA device|built without the .cuda. feature)' \
        "$OUT/$name.out" | sed 's/: skipped: .*//' | sort -u | tr '\n' ' ')
    if [ -n "$skipped" ]; then
        fail "$name skipped GPU tests instead of running them: ${skipped% } (see $OUT/$name.out)"
    fi
done

step "training: CPU vs GPU"
export LT_CUDNN_TF32=0
for dev in cpu cuda:0; do
    run="$OUT/gpu_check_${dev%%:*}"
    rm -rf "$run"
    start=$(date +%s)
    "$B/run/lt-cli" train --config configs/gpu_check.toml \
        --set "device=\"$dev\"" --set "run_dir=\"$run\"" || fail "train on $dev"
    echo "train on $dev: $(($(date +%s) - start)) s"

done
"$PY" - "$OUT" <<'PY' || fail "CPU and GPU trajectories differ"
import json, sys
out = sys.argv[1]
def records(dev):
    return [json.loads(l) for l in open(f"{out}/gpu_check_{dev}/metrics.jsonl") if l.strip()]
cpu, gpu = records("cpu"), records("cuda")
ok = len(cpu) == len(gpu) and len(cpu) > 0
for c, g in zip(cpu, gpu):
    rel = abs(c["train_loss"] - g["train_loss"]) / abs(c["train_loss"])
    print(f"epoch {c['epoch']}: loss cpu {c['train_loss']:.5f} gpu {g['train_loss']:.5f} (rel {rel:.2e}), "
          f"img/s cpu {c['images_per_sec']:.0f} gpu {g['images_per_sec']:.0f}")
    ok &= rel < 1e-2
sys.exit(0 if ok else 1)
PY

step "benchmark"
BENCH_BIN="$B/run/resnet_step" PEER_PYTHON="$PY" crates/lt-models/benches/gpu_bench.sh "${BENCH_ROUNDS:-2}" ||
    fail "benchmark"

step "done: $failed failed step(s)"
for f in "${failures[@]}"; do echo "FAILED: $f"; done
exit "$failed"
