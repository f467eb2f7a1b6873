#!/usr/bin/env bash
# The corpus the bundled model is fine-tuned on to write 詞 to their tunes
# (models/tang-poems/MODEL_CARD.md, "Fine-tuning on 詞"): every tune-tagged 詞
# of a `versifier corpus --song --ci` folder's training text, and every
# EVERY-th 詩 of it (default 7: twice the 詞's characters), so that the model
# keeps writing 詩 while it learns the tunes. The held-out text is the folder's
# own (詩 and 詞), so nothing held out is trained on.
#
# Usage: packaging/corpus/ci-finetune-corpus.sh CI_CORPUS_DIR OUT_DIR [EVERY]
#   CI_CORPUS_DIR from: versifier corpus --source DIR/package --out CI_CORPUS_DIR \
#     --song --ci --s2t models/tang-poems/s2t.tsv --holdout-per-10k 200 --seed 2026
# Also writes OUT_DIR/ci-eval/: the held-out 詞 alone (with the training text,
# which `bench --quality --corpus` fits its bigram baseline on), to score a
# model's 詞; its 詩 are scored on the plain corpus (data/corpus), as before.
set -euo pipefail
src=${1:?versifier corpus --ci folder}; out=${2:?out folder}; every=${3:-7}
for f in train.txt eval.txt; do
  [ -f "$src/$f" ] || { echo "$src/$f: not found; make it with versifier corpus --song --ci" >&2; exit 2; }
done
grep -q '^\[CI:' "$src/train.txt" || { echo "$src/train.txt: no [CI:tune] lines; make it with --ci" >&2; exit 2; }
# 无 is the simplified 無: 詞 left in simplified script (by a versifier before
# `corpus --ci` converted them with OpenCC) have it in a third of the poems,
# converted ones in none.
ci=$(grep -c '^\[CI:' "$src/train.txt"); simplified=$(grep '^\[CI:' "$src/train.txt" | grep -c '无' || true)
if [ $((simplified * 100)) -gt "$ci" ]; then
  echo "$src/train.txt: $simplified of its $ci 詞 have 无, so they are in simplified script; make the corpus again with this versifier's corpus --ci, which converts them" >&2
  exit 2
fi
mkdir -p "$out/ci-eval"
awk -v every="$every" '/^\[CI:/ {print; next} (n++ % every == 0) {print}' "$src/train.txt" > "$out/train.txt"
cp "$src/eval.txt" "$out/eval.txt"
cp "$out/train.txt" "$out/ci-eval/train.txt"
grep '^\[CI:' "$src/eval.txt" > "$out/ci-eval/eval.txt"
echo "$out: $(grep -c '^\[CI:' "$out/train.txt") 詞 and $(grep -vc '^\[CI:' "$out/train.txt") 詩 to train on;" \
  "held out $(grep -vc '^\[CI:' "$out/eval.txt") 詩, $(wc -l < "$out/ci-eval/eval.txt") 詞"
