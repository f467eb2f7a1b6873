#!/usr/bin/env bash
# Ours and PyTorch on one GPU in one run, on the same random GPT-2 124M
# checkpoint (and the bundled model for ours): decode tokens/s at batch 1 and 8
# in f32 and f16, ours with and without CUDA graphs and fused kernels (and with
# the tokens drawn on the device), the peers eager and
# static-cache compiled, all with the same sampling settings. Writes one JSON.
#
#   packaging/bench/gpu-side-by-side.sh BINARY OUT.json [MODEL_DIR]
#
# SBS_PARTS (default: a temporary folder) receives each run's JSON as it ends,
# so a run cut short keeps what it finished (side-by-side-merge.py merges them).
# MODEL_DIR (default: a temporary folder) receives the random checkpoint, so a
# later command (the lifecycle bench) can use the same one.
# Runs on the GPU machine (no Rust needed): BINARY is the CUDA build (may be .xz or .gz);
# python3 must have torch and transformers.
set -uo pipefail
bin=$1; out=$2
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
case "$bin" in *.gz|*.xz) bash "$(dirname "$0")/../cuda/unpack.sh" "$bin" /tmp/versifier-cuda --exec && bin=/tmp/versifier-cuda;; esac
if [ -z "${VERSIFIER_LIBS_SET:-}" ]; then
  libdirs=$(bash "$here/../cuda/cuda-lib-dirs.sh")
  export LD_LIBRARY_PATH="$libdirs:${LD_LIBRARY_PATH:-}"
fi
work=${SBS_PARTS:-$(mktemp -d)}; mkdir -p "$work"
model=${3:-$(mktemp -d)/gpt2-124m-random}
python3 - "$model" <<'PY'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained(sys.argv[1])
PY
cp "$root/tests/fixtures/hf-safetensors/tokenizer.json" "$model/"
n=128
# Ours: graphs and fused kernels, the same with each step's tokens drawn on the
# device (`-draws1`), graphs with candle's composed kernels, and fused kernels
# without graphs.
for dt in f32 f16; do
  for v in "1 1 0" "1 1 1" "1 0 0" "0 1 0"; do
    set -- $v; g=$1; f=$2; d=$3
    name="graphs$g-fused$f"; [ "$d" = 1 ] && name="$name-draws1"
    for m in 124m tang; do
      dir=$model; [ $m = tang ] && dir="$root/models/tang-poems"
      VERSIFIER_CUDA_GRAPHS=$g VERSIFIER_FUSED_KERNELS=$f VERSIFIER_DEVICE_DRAWS=$d "$bin" bench --model "$dir" --device cuda:0 --dtype $dt --batches 1,8 --new-tokens $n --json \
        > "$work/ours-$m-$dt-$name.json" || echo "ours $m $dt $name failed" >&2
    done
  done
done
PYTHONUNBUFFERED=1 python3 "$here/pytorch_gpu_peers.py" "$model" --new-tokens $n --out "$work/peers.json" || echo "peers failed" >&2
python3 "$here/side-by-side-merge.py" "$work" "$out"
