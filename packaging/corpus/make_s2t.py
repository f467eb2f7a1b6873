"""Writes s2t.tsv for a character model: simplified -> traditional for every
character whose simplified form the vocabulary lacks, so prompts in simplified
script (春风) find the model's traditional characters (春風).

Usage: python packaging/corpus/make_s2t.py models/tang-poems   (needs `pip install opencc`)
OpenCC's data is Apache-2.0. When several traditional characters share one
simplified form (发: 發/髮), the one the model saw most often (lowest id; the
vocabulary is ordered by frequency) wins.
"""
import os
import sys

import opencc

model = sys.argv[1]
t2s = opencc.OpenCC("t2s")
vocab = [line.rstrip("\n") for line in open(os.path.join(model, "vocab.txt"), encoding="utf-8")]
present = set(vocab)
best = {}
for tok in vocab:  # most frequent first
    if len(tok) != 1:
        continue
    s = t2s.convert(tok)
    if len(s) == 1 and s != tok and s not in present and s not in best:
        best[s] = tok
with open(os.path.join(model, "s2t.tsv"), "w", encoding="utf-8") as f:
    for s, t in sorted(best.items()):
        f.write(f"{s}\t{t}\n")
print(f"{len(best)} simplified characters mapped")
