#!/usr/bin/env bash
# Installs, on a machine without a GPU, the CUDA 13.0 toolkit that building mistral.rs with
# `--features cuda` needs (docs/BUILD.md, "GPU"; ../shared/GPU.md): nvcc and the libraries
# from NVIDIA's PyPI wheels, pinned, plus a link stub for libcuda.so.1 (the driver library,
# which only a GPU host has). Prints the environment to build with.
#
#   eval "$(benches/gpu/cuda-toolkit.sh)"      # installs into $CUDA_TOOLKIT_DIR (/opt/cu13)
#
# nvcc stays at 13.0.x: a newer one writes PTX that the 580 driver refuses to load.
set -euo pipefail
DIR="${CUDA_TOOLKIT_DIR:-/opt/cu13}"
CU="$DIR/nvidia/cu13"
CUDARC="${CUDARC_SRC:-$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)}"

if [ ! -x "$CU/bin/nvcc" ]; then
    mkdir -p "$DIR"
    # One pip command, --no-deps: pip --target into an existing nvidia/ skips packages, and
    # nvidia-cuda-nvcc's own dependencies are unpinned (they resolve to 13.5).
    python3 -m pip install --quiet --no-deps --target "$DIR" \
        nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 \
        nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 >&2
fi
"$CU/bin/nvcc" --version | grep -q 'release 13\.0' || { echo "nvcc in $CU is not 13.0" >&2; exit 1; }

ln -sfn lib "$CU/lib64"
for l in cudart cublas cublasLt nvrtc; do ln -sfn "lib$l.so.13" "$CU/lib/lib$l.so"; done
ln -sfn libcurand.so.10 "$CU/lib/libcurand.so"

# The driver API cudarc declares, as functions that return an error: enough to link; the
# host's driver provides the real libcuda.so.1 at run time.
if [ ! -f "$CU/lib/stubs/libcuda.so" ]; then
    [ -f "$CUDARC/src/driver/sys/mod.rs" ] || { echo "cudarc 0.19.10 sources not found (run cargo fetch)" >&2; exit 1; }
    mkdir -p "$CU/lib/stubs"
    tmp="$(mktemp -d)"
    grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$CUDARC/src/driver/sys/mod.rs" \
        | sed -E 's/^\s+fn //; s/\($//' | sort -u \
        | awk '{print "int " $1 "(void) { return 999; /* CUDA_ERROR_UNKNOWN */ }"}' > "$tmp/stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$tmp/stub.c"
    rm -rf "$tmp"
fi

cat <<ENV
export PATH="$CU/bin:\$PATH" CUDA_HOME="$CU" CUDA_COMPUTE_CAP=90 CUDARC_CUDA_VERSION=13000 NVCC_APPEND_FLAGS=-compress-mode=size
ENV
