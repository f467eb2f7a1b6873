#!/usr/bin/env bash
# Verifies a CUDA build on a GPU machine that has no Rust: conformance against the
# transformers fixtures in f32/f16/bf16, decode speed, the load -> generate ->
# release lifecycle with NVML figures, pictures of the window's meter
# (`versifier snapshots`), and a PyTorch baseline on the same GPU.
#
# Usage: packaging/cuda/verify-on-gpu.sh BINARY OUT_DIR [CYCLES]
# Needs: the NVIDIA driver (libcuda, libnvidia-ml), cuBLAS/cuRAND/NVRTC 13 somewhere
# on disk (found below), and python with torch + transformers for the baseline.
set -uo pipefail
bin=$1; out=$2; cycles=${3:-100}
case "$bin" in *.gz|*.xz) bash "$(dirname "$0")/unpack.sh" "$bin" /tmp/versifier-cuda --exec && bin=/tmp/versifier-cuda;; esac
mkdir -p "$out"
libdirs=$(bash "$(dirname "$0")/cuda-lib-dirs.sh")
export LD_LIBRARY_PATH="$libdirs:${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv | tee "$out/gpu.csv"
for dt in f32 f16 bf16; do
  "$bin" selftest --fixtures tests/fixtures --device cuda:0 --dtype "$dt" >> "$out/selftest.json"; echo "selftest $dt exit $?"
done
"$bin" bench --quality --model models/tang-poems --device cuda:0 > "$out/quality-cuda.json"; echo "quality exit $?"
# The window's meter on this GPU without a display (software-rendered PNGs of
# the real app): before load, generating, ready, after Release.
"$bin" snapshots --device cuda:0 --out "$out/snapshots" --variations 8 --max-tokens 256 | tee "$out/snapshots.txt"; echo "snapshots exit $?"
rm -rf "$out/snapshots/app-data"
for dt in f32 f16; do
  "$bin" bench --synthetic gpt2-124m --device cuda:0 --dtype "$dt" --batches 1,8 --new-tokens 128 > "$out/bench-cuda-$dt.json"; echo "bench $dt exit $?"
done
model=$(mktemp -d)/gpt2-124m-random
python3 - "$model" <<'PY'
import sys, torch
from transformers import GPT2Config, GPT2LMHeadModel
torch.manual_seed(0)
GPT2LMHeadModel(GPT2Config()).save_pretrained(sys.argv[1])
PY
cp tests/fixtures/hf-safetensors/tokenizer.json "$model/"
"$bin" bench --lifecycle --model "$model" --device cuda:0 --dtype f32 --cycles "$cycles" --new-tokens 32 > "$out/lifecycle-cuda.json"; echo "lifecycle exit $?"
python3 - "$model" > "$out/pytorch-baseline.json" <<'PY'
import json, sys, time, torch
from transformers import GPT2LMHeadModel
m = GPT2LMHeadModel.from_pretrained(sys.argv[1]).cuda().eval()
res = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
for b in (1, 8):
    ids = torch.arange(16, device="cuda").unsqueeze(0).repeat(b, 1)
    with torch.no_grad():
        for rep in range(2):
            out = m(ids, use_cache=True); past = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize(); t = time.time(); n = 128
            for _ in range(n):
                out = m(nxt, past_key_values=past, use_cache=True); past = out.past_key_values
                nxt = out.logits[:, -1:].argmax(-1)
            torch.cuda.synchronize()
    res[f"batch{b}_tokens_per_s"] = n * b / (time.time() - t)
print(json.dumps(res))
PY
echo "baseline exit $?"
