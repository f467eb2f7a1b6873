#!/usr/bin/env python3
"""A corpus with keywords in front of each poem, for a model that expects
them: each line of a `versifier corpus` folder (`[QIJUE]poem`) becomes
`[QIJUE]〈w1、w2〉poem`, where w1, w2 … are 1 to 4 of the poem's own salient
words, in the order they stand in it: words of `src/poetry/data/theme-words.txt`
(from the training poems of chinese-poetry, MIT) that the poem holds on its
rhythm (2+3, 2+2+3), weighted by TF-IDF over the training poems, no character
shared. A fifth of the poems keep no keywords (〈〉 left out), so the model
still writes without them. The same for eval.txt (held out, never trained on).

Usage: make_keyword_corpus.py CORPUS_DIR OUT_DIR [--sets FILE]
With --sets, also writes keyword sets of 2 to 4 words from the held-out poems
(eval.txt) in the benchmark's format (id, form, words; the form is the line's
tag: ci:TUNE for a 詞, wujue/qijue/wulv/qilv for a 詩).
At inference Versifier sends the same prefix when the model's vocabulary has
〈 and 〉 (see models/*/MODEL_CARD.md, "Keywords").
"""
import collections
import math
import os
import random
import re
import sys

SEED = 2026
NO_KEYWORDS = 0.2
WORDS = set(
    w.strip()
    for w in open("src/poetry/data/theme-words.txt", encoding="utf-8")
    if w.strip() and not w.startswith("#")
)


def rhythm_ok(n, start):
    cuts = (2,) if n == 5 else (2, 4)
    return not any(start < c < start + 2 for c in cuts)


def words_of(body):
    found = []
    for line in re.split(r"[，。]", body):
        for i in range(len(line) - 1):
            w = line[i : i + 2]
            if w in WORDS and rhythm_ok(len(line), i):
                found.append(w)
    return found


FORMS = {"[WUJUE]": "wujue", "[QIJUE]": "qijue", "[WULV]": "wulv", "[QILV]": "qilv"}


def write_sets(path, lines, df, docs, rng):
    """Keyword sets of 2 to 4 salient words from held-out lines."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("# Keyword sets from held-out poems of chinese-poetry (MIT), never trained on;\n")
        f.write("# made by packaging/corpus/make_keyword_corpus.py --sets. id, form, words.\n")
        for n, line in enumerate(lines):
            tag, body = line.split("]", 1)[0] + "]", line.split("]", 1)[1]
            form = "ci:" + tag[4:-1] if tag.startswith("[CI:") else FORMS.get(tag)
            ranked = sorted(set(words_of(body)), key=lambda w: (-math.log(docs / (1 + df[w])), w))
            want, chosen = rng.choice((2, 3, 4)), []
            for w in ranked:
                if len(chosen) == want:
                    break
                if all(not set(w) & set(c) for c in chosen):
                    chosen.append(w)
            if form and len(chosen) >= 2:
                f.write(f"heldout-{n + 1}\t{form}\t{' '.join(chosen)}\n")


def main():
    src, out = sys.argv[1], sys.argv[2]
    sets = sys.argv[sys.argv.index("--sets") + 1] if "--sets" in sys.argv else None
    os.makedirs(out, exist_ok=True)
    train = open(os.path.join(src, "train.txt"), encoding="utf-8").read().splitlines()
    df = collections.Counter()
    for line in train:
        df.update(set(words_of(line.split("]", 1)[-1])))
    docs = len(train)
    rng = random.Random(SEED)
    stats = collections.Counter()
    for name in ("train.txt", "eval.txt"):
        lines = open(os.path.join(src, name), encoding="utf-8").read().splitlines()
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            for line in lines:
                tag, body = (line.split("]", 1)[0] + "]", line.split("]", 1)[1]) if line.startswith("[") else ("", line)
                found = words_of(body)
                ranked = sorted(set(found), key=lambda w: (-math.log(docs / (1 + df[w])), w))
                chosen = []
                want = rng.choice((1, 2, 3, 4))
                for w in ranked:
                    if len(chosen) == want:
                        break
                    if all(not set(w) & set(c) for c in chosen):
                        chosen.append(w)
                if not chosen or rng.random() < NO_KEYWORDS:
                    f.write(f"{tag}{body}\n")
                    stats[name + " without"] += 1
                    continue
                chosen.sort(key=body.index)
                f.write(f"{tag}〈{'、'.join(chosen)}〉{body}\n")
                stats[name + " with"] += 1
    if sets:
        held = open(os.path.join(src, "eval.txt"), encoding="utf-8").read().splitlines()
        write_sets(sets, held, df, docs, random.Random(SEED + 1))
    print(dict(stats))


if __name__ == "__main__":
    main()
