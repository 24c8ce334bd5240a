#!/usr/bin/env bash
# Builds the GPU binary without a GPU: `cargo build --release --features cuda,nccl`
# for lt-cli (and the GPU benches and tests when given `--all-targets`), with the
# toolkit from .ci/cuda-env.sh. The target directory lives outside the clone
# ($LT_CUDA_TARGET, default ~/.cache/lt-cuda/target) so that the slow part,
# candle-kernels' nvcc compilation (~40 min on 2 cores), is paid once per machine.
#
#     .ci/cuda-build.sh                  # lt-cli with cuda + nccl
#     .ci/cuda-build.sh --all-targets    # also the test and bench binaries
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fetch --locked >/dev/null
# shellcheck source=.ci/cuda-env.sh
source .ci/cuda-env.sh
export CARGO_TARGET_DIR="${LT_CUDA_TARGET:-$LT_CUDA_HOME/target}"
# Not `--workspace`: xtask has no GPU code and is built by the CPU checks.
exec cargo build --release --locked \
    -p lt-models -p lt-train -p lt-cli --features lt-cli/cuda,lt-cli/nccl "$@"
