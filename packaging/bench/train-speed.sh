#!/usr/bin/env bash
# Trainer speed and loss at equal tokens on a GPU: the bundled model's
# configuration (6 x 384, context 128) on the prepared corpus, f32 (TF32) as
# today and bf16 compute with larger batches, the same token budget each.
# Prints one JSON object per run (the train_summary.json of each) to stdout.
# Usage: packaging/bench/train-speed.sh VERSIFIER_BINARY CORPUS_DIR [STEPS]
# TRAIN_DEVICE (default cuda:0) picks the device; TRAIN_FLAGS are added to every
# run (a dry run on the CPU: TRAIN_DEVICE=cpu TRAIN_FLAGS="--n-layer 1 --n-embd 64 --context 32").
set -euo pipefail
bin=${1:?versifier binary}; corpus=${2:?corpus folder (train.txt, eval.txt)}; steps=${3:-600}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
run() { # name, then train flags
  local name=$1; shift
  "$bin" --log-dir none train --corpus "$corpus" --out "$work/$name" --device "${TRAIN_DEVICE:-cuda:0}" \
    --eval-every "$steps" --checkpoint-every 0 "$@" ${TRAIN_FLAGS:-} >/dev/null
  python3 -c "import json,sys; d=json.load(open('$work/$name/train_summary.json')); d['run']='$name'; print(json.dumps(d))"
}
# Warm-up a tenth of each run's steps, so the four see the same schedule per token.
run f32-b64 --steps "$steps" --batch-size 64 --warmup $((steps / 10))
run bf16-b64 --steps "$steps" --batch-size 64 --compute bf16 --warmup $((steps / 10))
run bf16-b256 --steps $((steps / 4)) --batch-size 256 --compute bf16 --lr 2e-3 --warmup $((steps / 40))
run bf16-b64x4 --steps $((steps / 4)) --batch-size 64 --grad-accum 4 --compute bf16 --lr 2e-3 --warmup $((steps / 40))
