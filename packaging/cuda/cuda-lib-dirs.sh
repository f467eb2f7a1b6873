#!/usr/bin/env bash
# Prints, colon-separated, the folders on this machine that hold the CUDA 13
# libraries the CUDA build loads (cuBLAS, cuRAND; NVRTC where candle asks for
# it) and NVML, for LD_LIBRARY_PATH:
#
#   export LD_LIBRARY_PATH="$(bash packaging/cuda/cuda-lib-dirs.sh):${LD_LIBRARY_PATH:-}"
find / -xdev \( -name 'libcublas.so.13*' -o -name 'libnvrtc.so.13*' -o -name 'libcurand.so.10*' -o -name 'libnvidia-ml.so.1' \) 2>/dev/null \
  | xargs -r -n1 dirname | sort -u | paste -sd:
