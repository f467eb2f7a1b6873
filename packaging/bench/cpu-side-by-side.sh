#!/usr/bin/env bash
# Ours and PyTorch, interleaved on the same machine and thread count, so a noisy
# neighbour slows both alike. Prints the median tokens/s of each over ROUNDS.
#
#   packaging/bench/cpu-side-by-side.sh [ROUNDS] [PYTHON]
#
# PYTHON must have torch and transformers (e.g. a venv: pip install torch transformers).
# VERSIFIER_BEFORE_BIN=path/to/an/older/versifier adds its runs, interleaved, as
# "before-<dtype>" (a change measured against the build it replaces, same run).
# PyTorch runs fp32 only: its bf16 CPU path took over two minutes per run on
# the 2-core VM in the README (no AVX-512 BF16 there).
set -euo pipefail
rounds=${1:-5}
py=${2:-python3}
here=$(cd "$(dirname "$0")" && pwd)
bin=${VERSIFIER_BIN:-$here/../../target/release/versifier}
threads=$(nproc)
out=$(mktemp -d)
for r in $(seq "$rounds"); do
  for dt in f32 f16 bf16; do
    "$bin" bench --synthetic gpt2-124m --device cpu --dtype "$dt" --batches 1,8 --new-tokens 64 --json \
      > "$out/ours-$dt-$r.json"
    if [ -n "${VERSIFIER_BEFORE_BIN:-}" ]; then
      "$VERSIFIER_BEFORE_BIN" bench --synthetic gpt2-124m --device cpu --dtype "$dt" --batches 1,8 --new-tokens 64 --json \
        > "$out/before-$dt-$r.json"
    fi
  done
  for dt in float32; do
    "$py" "$here/pytorch_baseline.py" --threads "$threads" --dtype "$dt" --new-tokens 64 > "$out/torch-$dt-$r.json"
  done
  echo "round $r done" >&2
done
python3 - "$out" <<'PY'
import glob, json, statistics, sys, platform
out = sys.argv[1]
rows = {}
for f in sorted(glob.glob(f"{out}/*.json")):
    name = f.rsplit("/", 1)[1].rsplit("-", 1)[0]
    j = json.load(open(f))
    for d in j["decode"]:
        rows.setdefault((name, d["batch"]), []).append(d["tokens_per_s"])
cpu = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")][:1]
print(json.dumps({
    "cpu": cpu[0] if cpu else platform.processor(),
    "median_tokens_per_s": {f"{n} batch {b}": round(statistics.median(v), 1) for (n, b), v in sorted(rows.items())},
    "runs": {f"{n} batch {b}": [round(x, 1) for x in v] for (n, b), v in sorted(rows.items())},
}, indent=1))
PY
