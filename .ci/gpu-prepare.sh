#!/usr/bin/env bash
# Prepares the GPU check on a machine without a GPU: builds the CUDA binaries
# (lt-cli with cuda + nccl, the GPU test binaries, the resnet_step bench),
# strips and compresses them (the CUDA kernels' PTX is most of their size and
# compresses ~10x), and cuts a small CIFAR-10-LT subset, all into gpu-bundle/
# (git-ignored, ~25 MB). Then, on the GPU machine, from the repository root:
#
#     .ci/gpu-check.sh          # writes gpu-out/ (or $OUT)
#
# The GPU machine needs the NVIDIA driver (CUDA 13.0 or newer) and the CUDA 13
# libraries the binaries link (cuBLAS 13, cuRAND 10, NVRTC 13, cuDNN 9,
# cudart 13, NCCL 2): a PyTorch built for CUDA 13 carries them in its
# nvidia/* wheels, which gpu-check.sh finds.
set -euo pipefail
cd "$(dirname "$0")/.."
B=gpu-bundle
rm -rf "$B"
mkdir -p "$B/bin" "$B/data"

cargo fetch --locked >/dev/null
# shellcheck source=.ci/cuda-env.sh
source .ci/cuda-env.sh
export CARGO_TARGET_DIR="${LT_CUDA_TARGET:-$LT_CUDA_HOME/target}"
build() {
    cargo build --release --locked --message-format=json "$@" |
        python3 -c 'import sys, json
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        crate = m["manifest_path"].split("/")[-2]
        name = m["target"]["name"]
        # Test binaries are named after their crate: gpu-lt-models, gpu-lt-train.
        print(name + "-" + crate if "test" in m["target"]["kind"] else name, m["executable"])'
}
{
    build -p lt-cli --features cuda,nccl --bin lt-cli
    build -p lt-models --features cuda --test gpu --bench resnet_step
    if [ -f crates/lt-train/tests/gpu.rs ]; then
        build -p lt-train --features cuda --test gpu
    fi
} > "$B/artifacts.txt"
while read -r name exe; do
    cp "$exe" "$B/bin/$name"
    strip "$B/bin/$name"
    xz -T2 -6 -f "$B/bin/$name"
done < "$B/artifacts.txt"

# CIFAR-10-LT subset: every 8th image of the r100 train list, 50 test images
# per class.
if [ ! -f data/cifar10/cifar10_lt_r100_train.txt ]; then
    cargo xtask fetch-data cifar10 --source ../shared/data/cifar10-jpg.tar.gz --root data
fi
python3 - "$B/data" <<'PY'
import os, shutil, sys
out = sys.argv[1]
def subset(src, dst, keep):
    lines, seen = [], {}
    for i, line in enumerate(open(src)):
        rel, label = line.split()
        if keep(i, label, seen):
            lines.append(line)
            os.makedirs(os.path.join(out, os.path.dirname(rel)), exist_ok=True)
            shutil.copyfile(os.path.join("data/cifar10", rel), os.path.join(out, rel))
    open(os.path.join(out, dst), "w").writelines(lines)
    return len(lines)
def every_8th(i, label, seen):
    return i % 8 == 0
def first_50(i, label, seen):
    seen[label] = seen.get(label, 0) + 1
    return seen[label] <= 50
print("train", subset("data/cifar10/cifar10_lt_r100_train.txt", "train.txt", every_8th))
print("test", subset("data/cifar10/cifar10_test.txt", "test.txt", first_50))
PY
du -sh "$B"
ls -la "$B/bin"
