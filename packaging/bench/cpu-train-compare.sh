#!/usr/bin/env bash
# CPU trainer, two builds side by side: the bundled model's configuration
# (6 x 384, context 128, batch 64) for the same steps on the same corpus and
# seed, so the losses at equal tokens should agree and only the speed and the
# memory differ. Prints one JSON object: each run's train_summary.json with its
# eval log and the peak resident memory (from GNU time).
# Usage: packaging/bench/cpu-train-compare.sh BEFORE_BINARY AFTER_BINARY CORPUS_DIR [STEPS]
set -euo pipefail
before=${1:?versifier binary before}; after=${2:?versifier binary after}
corpus=${3:?corpus folder (train.txt, eval.txt)}; steps=${4:-20}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
run() { # name, binary
  /usr/bin/time -f %M -o "$work/$1.rss" "$2" --log-dir none train --corpus "$corpus" --out "$work/$1" \
    --device cpu --steps "$steps" --eval-every $((steps / 2)) --checkpoint-every 0 >/dev/null
}
run before "$before"
run after "$after"
python3 - "$work" "$steps" <<'PY'
import json, os, platform, subprocess, sys
work, steps = sys.argv[1], int(sys.argv[2])
def run(name):
    d = json.load(open(f"{work}/{name}/train_summary.json"))
    d["eval_log"] = [json.loads(l) for l in open(f"{work}/{name}/train_log.jsonl")]
    d["peak_rss_mib"] = int(open(f"{work}/{name}.rss").read().split()[-1]) / 1024
    return d
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
b, a = run("before"), run("after")
print(json.dumps({
    "machine": {"cpu": cpu, "threads": os.cpu_count()},
    "steps": steps,
    "speedup_tokens_per_s": a["tokens_per_s"] / b["tokens_per_s"],
    "peak_rss_ratio": a["peak_rss_mib"] / b["peak_rss_mib"],
    "eval_loss_diff": a["eval_loss"] - b["eval_loss"],
    "before": b, "after": a,
}, indent=1))
PY
