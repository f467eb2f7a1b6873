#!/usr/bin/env bash
# Builds `versifier` with the `cuda` feature without a system CUDA toolkit.
#
# It downloads NVIDIA's CUDA 13.0 wheels from PyPI (pip download, no install),
# unpacks them into one folder, makes the unversioned .so links the linker
# wants, builds a stub libcuda.so (the real one comes with the driver at run
# time), and runs cargo. Keep nvcc at 13.0: drivers of the 580 series reject
# PTX from newer toolkits.
#
# Usage: packaging/cuda/build.sh [TOOLKIT_DIR] (default: ~/.cache/versifier-cuda13)
# Env:   CUDA_COMPUTE_CAP (default 80: runs on Ampere, Ada and Hopper),
#        CARGO_TARGET_DIR (default target-cuda, so CPU and CUDA builds do not evict each other).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
dir=${1:-$HOME/.cache/versifier-cuda13}
[ $# -gt 0 ] && shift
mkdir -p "$dir/wheels"
wheels=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-crt==13.0.88
  nvidia-nvvm==13.0.88 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.0.35 nvidia-cuda-nvrtc==13.0.88
)
if [ ! -x "$dir/nvidia/cu13/bin/nvcc" ]; then
  python3 -m pip download --no-deps --only-binary=:all: --platform manylinux_2_27_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$dir/wheels" "${wheels[@]}"
  for w in "$dir"/wheels/*.whl; do python3 -m zipfile -e "$w" "$dir"; done
  chmod +x "$dir"/nvidia/cu13/bin/* "$dir"/nvidia/cu13/nvvm/bin/* 2>/dev/null || true
fi
root="$dir/nvidia/cu13"
lib="$root/lib"
for name in libcublas libcublasLt libcurand libnvrtc libcudart; do
  versioned=$(ls "$lib"/$name.so.* 2>/dev/null | sort | head -n1)
  [ -n "$versioned" ] && ln -sf "$(basename "$versioned")" "$lib/$name.so"
done
# The driver library is only needed to link; at run time the driver's own is used.
stub="$dir/stub"
if [ ! -f "$stub/libcuda.so" ]; then
  mkdir -p "$stub"
  grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' "$root/include/cuda.h" | sort -u |
    awk '{print "void " $1 "(void) {}"}' > "$stub/stub.c"
  gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
  ln -sf libcuda.so "$stub/libcuda.so.1"
fi
cd "$here"
export CUDA_ROOT="$root" CUDA_PATH="$root" PATH="$root/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-80}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-cuda}
export RUSTFLAGS="${RUSTFLAGS:-} -L $stub -L $lib"
cargo build --release --features cuda "$@"
echo "built $CARGO_TARGET_DIR/release/versifier"
echo "run it with LD_LIBRARY_PATH=$lib (cuBLAS, cuRAND, NVRTC 13) and the NVIDIA driver's libcuda.so.1"
