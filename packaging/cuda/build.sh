#!/usr/bin/env bash
# Builds `versifier` with the `cuda` feature without a system CUDA toolkit.
#
# It downloads NVIDIA's CUDA 13.0 wheels from PyPI (pip download, no install),
# unpacks them into one folder, makes the unversioned .so links the linker
# wants, builds a stub libcuda.so (the real one comes with the driver at run
# time), and runs cargo. Keep nvcc at 13.0: drivers of the 580 series reject
# PTX from newer toolkits.
#
# The CUDA libraries are *loaded at run time* (cudarc's `dynamic-loading`), not
# linked: candle 0.11 asks cudarc for `dynamic-linking`, which makes the binary
# refuse to start without libcuda.so.1, so this script builds against a copy of
# candle-core whose manifest asks for `dynamic-loading` instead (one line
# changed, copied from cargo's registry into the target folder, passed with
# `--config patch...`; Cargo.lock is restored when it exits: do not commit while it runs). Versifier checks the
# libraries before any CUDA call (device::cuda_runtime), so the same
# binary runs on GPU machines and, with a one-line notice, on CPU elsewhere.
# VERSIFIER_CUDA_LINKING=dynamic-linking builds candle's way instead.
#
# Usage: packaging/cuda/build.sh [TOOLKIT_DIR] (default: ~/.cache/versifier-cuda13)
# Env:   CUDA_COMPUTE_CAP (default 80: runs on Ampere, Ada and Hopper),
#        CARGO_TARGET_DIR (default target-cuda, so CPU and CUDA builds do not evict each other),
#        VERSIFIER_CUDA_DOWNLOAD_ONLY=1 fetches the toolkit and stops.
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
[ "${VERSIFIER_CUDA_DOWNLOAD_ONLY:-0}" = 1 ] && { echo "toolkit in $dir"; exit 0; }
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
patch_args=()
if [ "${VERSIFIER_CUDA_LINKING:-dynamic-loading}" = dynamic-loading ]; then
  # candle-kernels links the CUDA runtime (`-l cudart`, for its MoE kernels).
  # Offer ld only the static archive under that name, so the binary carries
  # the runtime (which itself opens the driver lazily) and needs no CUDA .so
  # to start; and drop the toolkit's lib folder from the search path.
  static="$dir/static-cudart"
  mkdir -p "$static"
  ln -sf "$lib/libcudart_static.a" "$static/libcudart.a"
  export RUSTFLAGS="${RUSTFLAGS% -L $stub -L $lib} -L $static"
  candle_manifest=$(cargo metadata --format-version 1 --locked |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="candle-core"))')
  patched="$CARGO_TARGET_DIR/patched/candle-core"
  rm -rf "$patched" && mkdir -p "$(dirname "$patched")"
  cp -r "$(dirname "$candle_manifest")" "$patched"
  sed -i 's/"dynamic-linking",/"dynamic-loading",/' "$patched/Cargo.toml"
  grep -q '"dynamic-loading",' "$patched/Cargo.toml" || { echo "could not switch candle-core to dynamic-loading" >&2; exit 1; }
  cp Cargo.lock "$CARGO_TARGET_DIR/Cargo.lock.orig"
  trap 'cp "$CARGO_TARGET_DIR/Cargo.lock.orig" Cargo.lock' EXIT
  patch_args=(--config "patch.crates-io.candle-core.path=\"$(cd "$patched" && pwd)\"")
fi
# CARGO_SUBCOMMAND=clippy lints the CUDA-only code the same way (after TOOLKIT_DIR:
# `--all-targets -- -D warnings`).
cargo "${CARGO_SUBCOMMAND:-build}" --release --features cuda "${patch_args[@]}" "$@"
[ "${CARGO_SUBCOMMAND:-build}" = build ] || exit 0
echo "built $CARGO_TARGET_DIR/release/versifier"
echo "run it with LD_LIBRARY_PATH=$lib (cuBLAS, cuRAND 13) and the NVIDIA driver's libcuda.so.1;"
echo "without them it runs on CPU and says so in one line"
