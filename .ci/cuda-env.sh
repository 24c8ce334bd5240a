# shellcheck shell=bash
# CUDA toolkit from PyPI wheels, for building `--features cuda` (and `nccl`) on a
# machine with no system CUDA and no GPU. Source it:
#
#     source .ci/cuda-env.sh          # installs once, then only exports
#     cargo build --release -p lt-cli --features cuda
#
# What it does, and why each step is needed:
# - installs pinned NVIDIA wheels into a virtual environment under $LT_CUDA_HOME
#   (default ~/.cache/lt-cuda), every package pinned (nvcc's compiler front end
#   and its assembler must come from the same release): nvcc, runtime headers, CCCL, cuBLAS, cuRAND, NVRTC,
#   cuDNN 9 and NCCL. The release is CUDA 13.0, the oldest of the 13 series:
#   candle's kernels are embedded as PTX, which a driver loads only if it is
#   at least as new as the nvcc that wrote it, and the H200 machines lent
#   here run a CUDA 13.0 driver (580.x).
#   cuDNN 9.19.0.56 and NCCL 2.28.9 are the versions PyTorch 2.11's CUDA 13
#   wheels carry, which is where a GPU machine usually gets its libraries.
#   CUDARC_CUDA_VERSION=13000 makes cudarc bind that API level.
# - the wheels ship only versioned shared objects (`libcublas.so.13`, ...): the
#   linker wants `-lcublas`, so $LT_CUDA_HOME/lib gets unversioned symlinks.
# - the wheels ship no `libcuda.so` (it belongs to the driver). candle links cudarc
#   with `dynamic-linking`, so the build needs a library exporting the driver's
#   `cu*` symbols: we compile a stub from the names cudarc declares, with the real
#   driver's soname `libcuda.so.1`, so that on a GPU machine the loader binds the
#   binary to the installed driver and never to the stub.
# - exports PATH (nvcc), CUDA_ROOT / CUDA_PATH / CUDA_HOME (headers, for
#   candle-kernels' nvcc calls), CUDNN_LIB (a root whose lib/ holds every library
#   above: cudarc's build script adds `<root>/lib` to the link search path),
#   CUDA_COMPUTE_CAP (default 90; 80 for A100) and CUDARC_CUDA_VERSION.
#
# Nothing here needs a GPU. Set LT_CUDA_HOME to share one install between clones.

LT_CUDA_HOME="${LT_CUDA_HOME:-$HOME/.cache/lt-cuda}"
export LT_CUDA_HOME

_lt_cuda_packages=(
    "nvidia-cuda-nvcc==13.0.88"
    # nvcc's own parts: unpinned, pip takes the newest, whose PTX an older
    # ptxas rejects ("Unsupported .version").
    "nvidia-cuda-crt==13.0.88"
    "nvidia-nvvm==13.0.88"
    "nvidia-cuda-runtime==13.0.96"
    "nvidia-cuda-nvrtc==13.0.88"
    "nvidia-cuda-cccl==13.0.85"
    "nvidia-cublas==13.0.2.14"
    "nvidia-curand==10.4.0.35"
    "nvidia-cudnn-cu13==9.19.0.56"
    "nvidia-nccl-cu13==2.28.9"
)

_lt_cuda_install() {
    local marker="$LT_CUDA_HOME/.installed"
    local want
    # The marker records the packages and the stub's revision.
    want="$(printf '%s\n' "${_lt_cuda_packages[@]}" "libcuda-stub-2")"
    if [[ -f "$marker" && "$(cat "$marker")" == "$want" ]]; then
        return 0
    fi
    echo "cuda-env: installing the CUDA toolkit wheels into $LT_CUDA_HOME" >&2
    rm -rf "$LT_CUDA_HOME/venv" "$LT_CUDA_HOME/lib"
    mkdir -p "$LT_CUDA_HOME" || return 1
    python3 -m venv "$LT_CUDA_HOME/venv" || return 1
    "$LT_CUDA_HOME/venv/bin/pip" install --quiet --disable-pip-version-check \
        --only-binary=:all: "${_lt_cuda_packages[@]}" || return 1

    local site
    site="$("$LT_CUDA_HOME/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    local nv="$site/nvidia"
    mkdir -p "$LT_CUDA_HOME/lib"
    # Unversioned names for the linker, versioned ones for the loader.
    local so base
    for so in "$nv"/cu13/lib/lib*.so.* "$nv"/cudnn/lib/lib*.so.* "$nv"/nccl/lib/lib*.so.*; do
        [[ -e "$so" ]] || continue
        base="$(basename "$so")"
        ln -sf "$so" "$LT_CUDA_HOME/lib/$base"
        ln -sf "$so" "$LT_CUDA_HOME/lib/${base%%.so.*}.so"
    done

    # The driver stub: every `cu*` function cudarc's driver bindings declare,
    # each returning CUDA_ERROR_NO_DEVICE (100), so that a binary run against
    # the stub (CI, with LD_LIBRARY_PATH set) reports "no device" instead of
    # misbehaving. Its soname is the driver's, so binaries record
    # `libcuda.so.1` and bind to the real driver at run time.
    local cudarc_sys
    cudarc_sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys 2>/dev/null | tail -n 1)"
    if [[ -z "$cudarc_sys" ]]; then
        echo "cuda-env: cudarc sources not found; run 'cargo fetch' first" >&2
        return 1
    fi
    grep -rhoE '\bfn cu[A-Za-z0-9_]+\(' "$cudarc_sys" | sed -e 's/^fn //' -e 's/($//' | sort -u \
        | awk '{ printf "int %s(void) { return 100; }\n", $1 }' > "$LT_CUDA_HOME/libcuda-stub.c"
    gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$LT_CUDA_HOME/lib/libcuda.so.1" \
        "$LT_CUDA_HOME/libcuda-stub.c" || return 1
    ln -sf libcuda.so.1 "$LT_CUDA_HOME/lib/libcuda.so"
    printf '%s\n' "$nv" > "$LT_CUDA_HOME/nvidia-root"
    printf '%s\n' "$want" > "$marker"
}

if _lt_cuda_install; then
    _lt_nv="$(cat "$LT_CUDA_HOME/nvidia-root")"
    export PATH="$_lt_nv/cu13/bin:$PATH"
    export CUDA_ROOT="$_lt_nv/cu13"
    export CUDA_PATH="$CUDA_ROOT"
    export CUDA_HOME="$CUDA_ROOT"
    export CUDNN_LIB="$LT_CUDA_HOME"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}"
    # Headers of cuDNN / NCCL for anything that compiles against them.
    export CPATH="$_lt_nv/cudnn/include:$_lt_nv/nccl/include${CPATH:+:$CPATH}"
    unset _lt_nv
else
    echo "cuda-env: failed to set up the CUDA toolkit under $LT_CUDA_HOME" >&2
    false
fi
