#!/usr/bin/env bash
# Out of memory on a real GPU: another process (PyTorch) holds all but N MiB of
# cuda:0, then `versifier generate`, the lifecycle bench and the headless
# window snapshots run against it. Each must say "out of memory" or refuse the
# load with the figures and options that fit, never blame a file.
#
#   packaging/cuda/oom-check.sh BINARY OUT_DIR [MODEL_DIR] [FREE_MIB...]
#
# Defaults: the bundled model, 300 900 1400 MiB left free. Each command has 60 s
# (exit 124 means it hung); OOM_SNAPSHOTS=0 skips the snapshots; OOM_PROMPT_ARGS
# replaces `--prompt 月 --form qijue` (e.g. `--prompt-ids 1,2,3` for a GPT-2 vocabulary).
set -uo pipefail
bin=$1; out=$2; model=${3:-models/tang-poems}; shift $(( $# < 3 ? $# : 3 ))
frees=("$@"); [ ${#frees[@]} -eq 0 ] && frees=(300 900 1400)
case "$bin" in *.gz|*.xz) bash "$(dirname "$0")/unpack.sh" "$bin" /tmp/versifier-cuda --exec && bin=/tmp/versifier-cuda;; esac
mkdir -p "$out"
for free in "${frees[@]}"; do
  ready=$(mktemp -u); mkfifo "$ready"
  python3 - "$free" "$ready" <<'PY' &
import sys, time, torch
free_target = int(sys.argv[1]) << 20
free, total = torch.cuda.mem_get_info()
hog = torch.empty(max(free - free_target, 0), dtype=torch.uint8, device="cuda")
free, _ = torch.cuda.mem_get_info()
open(sys.argv[2], "w").write(f"{free >> 20}\n")
time.sleep(600)
PY
  hog=$!
  left=$(cat "$ready"); rm -f "$ready"
  {
    echo "== another process holds the GPU; ${left} MiB left free (asked ${free})"
    echo "-- generate (f32, 8 variations)"
    timeout 60 "$bin" generate --model "$model" --device cuda:0 --dtype f32 --variations 8 ${OOM_PROMPT_ARGS:---prompt 月 --form qijue} 2>&1; echo "exit $?"
    echo "-- generate (f16, 1 variation)"
    timeout 60 "$bin" generate --model "$model" --device cuda:0 --dtype f16 ${OOM_PROMPT_ARGS:---prompt 月 --form qijue} 2>&1; echo "exit $?"
    echo "-- lifecycle (3 cycles)"
    timeout 60 "$bin" bench --lifecycle --model "$model" --device cuda:0 --cycles 3 --new-tokens 16 2>&1 | head -c 1500; echo; echo "exit $?"
    echo "-- snapshots"
    [ "${OOM_SNAPSHOTS:-1}" = 1 ] && timeout 60 "$bin" snapshots --device cuda:0 --out "$out/snapshots-$free" --variations 8 --max-tokens 64 2>&1; echo "exit $?"
  } > "$out/oom-$free.txt"
  kill "$hog"; wait "$hog" 2>/dev/null
  rm -rf "$out/snapshots-$free"
  grep -E "^(==|--|error|note|exit)" "$out/oom-$free.txt"
done
