#!/usr/bin/env python3
"""Merges the parts packaging/bench/gpu-side-by-side.sh writes (ours-*.json,
peers.json) into its one JSON. Run by that script at its end, and by
packaging/cuda/gpu-session.sh when the script ran out of time: the parts it
finished still make a table.

    python3 packaging/bench/side-by-side-merge.py PARTS_DIR OUT.json
"""
import glob, json, os, sys, subprocess
work, out = sys.argv[1], sys.argv[2]
def load(p):
    try:
        return json.load(open(p))
    except Exception as e:
        return {"error": f"{p}: {e}"}
ours = {os.path.basename(p)[:-5]: load(p) for p in sorted(glob.glob(f"{work}/ours-*.json"))}
peers = load(f"{work}/peers.json")
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True).stdout.strip()
except OSError as e:
    gpu = f"unknown (nvidia-smi: {e})"
table = {}
for name, j in ours.items():
    for d in j.get("decode", []):
        table[f"versifier {name[5:]} batch {d['batch']}"] = round(d["tokens_per_s"], 1)
for p in peers.get("peers", []):
    for d in p.get("decode", []):
        table[f"transformers {p['peer']} 124m {p['dtype']} batch {d['batch']}"] = round(d["tokens_per_s"], 1)
json.dump({"gpu": gpu, "new_tokens": 128, "prompt_tokens": 16,
           "sampling": "temperature 0.8, top-k 40, top-p 0.95, repetition penalty 1.1",
           "tokens_per_s": table, "ours": ours, "peers": peers}, open(out, "w"), indent=1)
print(json.dumps(table, indent=1))
