#!/usr/bin/env bash
# Runs one fuzz target for a while, seeded from the project's own fixtures.
#
#   tests/fuzz/run.sh TARGET [SECONDS]        (default 600)
#   targets: safetensors_load pytorch_pickle config_json tokenizer_files store_files
#
# Uses cargo fuzz (cargo install cargo-fuzz) on the stable toolchain:
# RUSTC_BOOTSTRAP=1 lets stable accept the sanitizer flags cargo fuzz passes.
# Findings land in tests/fuzz/artifacts/TARGET/; minimise one with
#   RUSTC_BOOTSTRAP=1 cargo fuzz tmin --fuzz-dir tests/fuzz TARGET ARTIFACT
# then copy it to tests/fixtures/fuzz-regressions/TARGET/ (replayed by
# tests/fuzz_regressions.rs in the normal suite) and fix the bug.
# The last line printed is libFuzzer's final stats line (execs, exec/s).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
target=$1
seconds=${2:-600}
fx="$root/tests/fixtures"
corpus="$root/tests/fuzz/corpus/$target"
mkdir -p "$corpus"
seed() { cp "$1" "$corpus/seed-$(basename "$(dirname "$1")")-$(basename "$1")"; }
prefixed() { { printf "$1"; cat "$2"; } > "$corpus/seed-$3"; }
case "$target" in
  safetensors_load) seed "$fx/hf-safetensors/model.safetensors"; seed "$fx/hub-safetensors/model.safetensors" ;;
  pytorch_pickle) seed "$fx/pytorch-bin/pytorch_model.bin"
    for f in "$fx"/hostile-pickle/*.bin; do seed "$f"; done ;;
  config_json) for d in hf-safetensors hub-safetensors pytorch-bin; do seed "$fx/$d/config.json"; done
    seed "$root/models/tang-poems/config.json" ;;
  tokenizer_files) prefixed '\x00' "$fx/hf-safetensors/tokenizer.json" tokenizer.json
    prefixed '\x01' "$fx/hub-safetensors/vocab.txt" vocab.txt
    head -c 4000 "$root/models/tang-poems/vocab.txt" > /tmp/versifier-vocab-head.txt
    prefixed '\x01' /tmp/versifier-vocab-head.txt tang-vocab-head.txt ;;
  store_files) printf '\x00{"variations": 3, "sampling": {"temperature": 0.7}, "theme": "dark", "window_size": [900, 700]}' > "$corpus/seed-settings"
    printf '\x01[{"prompt":"春","form":"QiJue","text":"春風","model":"tang","sampling":{"seed":1},"unix_ms":1}]' > "$corpus/seed-history" ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
# Regression inputs are seeds too.
if [ -d "$fx/fuzz-regressions/$target" ]; then cp "$fx/fuzz-regressions/$target"/* "$corpus/" 2>/dev/null || true; fi
export VERSIFIER_FUZZ_SCRATCH=${VERSIFIER_FUZZ_SCRATCH:-/dev/shm}
cd "$root"
RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir tests/fuzz -O "$target" "$corpus" -- \
  -max_total_time="$seconds" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1 2>&1 |
  tee "$root/tests/fuzz/last-$target.log" | grep -E "^(#[0-9]+.*(DONE|pulse)|stat::|==[0-9]+==|SUMMARY|Done)" | tail -n 12
