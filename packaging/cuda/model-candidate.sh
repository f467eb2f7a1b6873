#!/usr/bin/env bash
# A larger bundled model in one call on the GPU machine (#17): trains a
# candidate of SHAPE (layers x width, 64-wide heads) within BUDGET_S seconds and
# judges it against the bundled model on the issue's measures, same seeds,
# same held-out text:
#
#   probe      30 steps, to measure this shape's tokens/s on this GPU
#   train      bf16 compute, batch 256, as many steps as fit TRAIN_SHARE of
#              the budget (at most the 42.6 M tokens the bundled model saw)
#   quality    versifier bench --quality --corpus, the candidate and the bundled
#   verdict    candidate-verdict.json: held-out perplexity at least 15% lower,
#              rhyme and tones kept in free form (both) not lower, repeated
#              characters per poem lower, distinct-2 not lower; ships only if all
#
#   packaging/cuda/model-candidate.sh CARRY_DIR OUT_DIR [SHAPE=8x512] [BUDGET_S=720]
#
# CARRY_DIR comes from packaging/cuda/gpu-carry.sh (the build and a corpus
# slice: the whole corpus does not fit a call beside the build, see the model
# card). OUT_DIR receives candidate.tar.gz (the figures, the training log and
# summary, config and vocabulary) and the candidate's f16 weights in parts of
# at most 15 MiB (a call returns files of at most 16 MiB, 64 MiB in all, so
# SHAPE must stay under about 57 MiB of weights: 8x512 does) with their
# sha256; `cat model.safetensors.part-* > model.safetensors` joins them.
# DEVICE=cpu with a CPU build and a tiny SHAPE is a dry run of the plumbing.
set -uo pipefail
carry=$(cd "${1:?carry folder}" && pwd); out=${2:?out folder}
shape=${3:-8x512}; budget=${4:-720}
root=$(cd "$(dirname "$0")/../.." && pwd)
dev=${DEVICE:-cuda:0}
layers=${shape%x*}; width=${shape#*x}; heads=$(( width / 64 > 0 ? width / 64 : 1 ))
mkdir -p "$out"; out=$(cd "$out" && pwd)
res=$(mktemp -d)/candidate; mkdir -p "$res"
work=$(mktemp -d)
start=$(date +%s)
left() { echo $(( budget - ($(date +%s) - start) )); }
bin="$work/versifier"
packed=$(ls "$carry"/versifier.xz "$carry"/versifier.gz "$carry"/versifier 2>/dev/null | head -1)
bash "$root/packaging/cuda/unpack.sh" "${packed:?no versifier build in $carry}" "$bin" --exec || exit 1
if [ "$dev" != cpu ]; then
  libdirs=$(bash "$root/packaging/cuda/cuda-lib-dirs.sh")
  export LD_LIBRARY_PATH="$libdirs:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$res/gpu.csv" 2>&1
fi
mkdir -p "$work/corpus"
packed=$(ls "$carry"/corpus/train.txt.xz "$carry"/corpus/train.txt.gz 2>/dev/null | head -1)
bash "$root/packaging/cuda/unpack.sh" "${packed:?no corpus in $carry/corpus}" "$work/corpus/train.txt" \
  && cp "$carry/corpus/eval.txt" "$work/corpus/" || exit 1
cd "$root"
batch=${CANDIDATE_BATCH:-256}; context=128
flags=(--corpus "$work/corpus" --device "$dev" --n-layer "$layers" --n-head "$heads" --n-embd "$width"
       --batch-size "$batch" --compute "${CANDIDATE_COMPUTE:-bf16}" --checkpoint-every 0 ${CANDIDATE_FLAGS:-})
log() { echo "$(( $(date +%s) - start )) s: $*" | tee -a "$res/steps.txt"; }

log "probe $shape ($heads heads), batch $batch"
"$bin" --log-dir none train "${flags[@]}" --out "$work/probe" --steps 1000 --stop-after 30 --warmup 10 \
  --eval-every 1000 > "$res/probe.log" 2>&1 || { log "probe failed"; tail -5 "$res/probe.log"; }
tps=$(python3 -c "import json; print(json.load(open('$work/probe/train_summary.json'))['tokens_per_s'])" 2>/dev/null || echo 0)
# Training gets TRAIN_SHARE of what is left; the two quality runs and the split the rest.
share=${TRAIN_SHARE:-0.7}
steps=$(python3 -c "
tps, left, share, per = float('$tps'), $(left), float('$share'), $batch * $context
fit = int(tps * left * share / per)
print(max(0, min(fit, 42_600_000 // per)))")
log "probe: $tps tokens/s; training $steps steps ($(( steps * batch * context )) tokens)"
if [ "$steps" -ge 20 ]; then
  "$bin" --log-dir none train "${flags[@]}" --out "$work/candidate" --steps "$steps" --warmup $(( steps / 20 )) \
    --lr "${CANDIDATE_LR:-2e-3}" --eval-every $(( steps / 5 )) > "$res/train.log" 2>&1 || log "training failed"
  log "trained"
else
  log "too few steps fit the budget: not trained"
fi
quality() { # name, model folder
  timeout --kill-after=5 $(( $(left) > 30 ? $(left) / 2 : 15 )) "$bin" --log-dir none bench --quality --model "$2" \
    --corpus "$work/corpus" --device "$dev" --constrained-samples "${CANDIDATE_SAMPLES:-40}" \
    --samples-per-prompt "${CANDIDATE_FREE_SAMPLES:-10}" \
    > "$res/quality-$1.json" 2> "$res/quality-$1.log" || log "quality $1 failed or ran out of time"
}
[ -f "$work/candidate/model.safetensors" ] && quality candidate "$work/candidate"
quality bundled models/tang-poems
log "quality done"
if [ -d "$work/candidate" ]; then
  for f in train_summary.json train_log.jsonl config.json vocab.txt; do
    [ -f "$work/candidate/$f" ] && cp "$work/candidate/$f" "$res/"
  done
fi
python3 - "$res" "$shape" > "$res/candidate-verdict.json" <<'PY'
import json, sys
res, shape = sys.argv[1], sys.argv[2]
def load(name):
    try:
        return json.load(open(f"{res}/{name}"))
    except Exception as e:
        return {"error": str(e)}
cand, old = load("quality-candidate.json"), load("quality-bundled.json")
def figures(q):
    f = q.get("free_guarded", {})
    return {"held_out_perplexity": q.get("held_out_perplexity"),
            "free_rhyme_and_tones_kept": f.get("both_fraction"),
            "repeated_chars_per_poem": f.get("repeated_chars_per_poem"),
            "distinct_2": f.get("distinct_2")}
c, o = figures(cand), figures(old)
def cmp(ok):
    try:
        return bool(ok())
    except TypeError:
        return None  # a figure is missing
tests = {
    "perplexity_at_least_15_percent_lower": cmp(lambda: c["held_out_perplexity"] <= 0.85 * o["held_out_perplexity"]),
    "free_rhyme_and_tones_not_lower": cmp(lambda: c["free_rhyme_and_tones_kept"] >= o["free_rhyme_and_tones_kept"]),
    "repeated_chars_lower": cmp(lambda: c["repeated_chars_per_poem"] < o["repeated_chars_per_poem"]),
    "distinct_2_not_lower": cmp(lambda: c["distinct_2"] >= o["distinct_2"]),
}
train = load("train_summary.json")
print(json.dumps({"shape": shape, "candidate": c, "bundled": o, "tests": tests,
                  "ships": all(v is True for v in tests.values()),
                  "training": {k: train.get(k) for k in ("steps", "params", "tokens_seen", "seconds",
                                                         "tokens_per_s", "eval_loss", "eval_perplexity")}},
                 indent=1))
PY
cat "$res/candidate-verdict.json"
tar -C "$(dirname "$res")" -czf "$out/candidate.tar.gz" candidate
if [ -f "$work/candidate/model.safetensors" ]; then
  split -b 15M -d "$work/candidate/model.safetensors" "$out/model.safetensors.part-"
  (cd "$out" && sha256sum "$work/candidate/model.safetensors" | cut -d' ' -f1 > model.safetensors.sha256)
  parts=$(ls "$out"/model.safetensors.part-* | wc -l)
  [ "$parts" -gt 5 ] && log "the weights need $parts parts: more than a call returns beside the figures"
fi
log "total of $budget s"
cp "$res/steps.txt" "$out/"
exit 0
