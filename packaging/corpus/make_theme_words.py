#!/usr/bin/env python3
"""The theme word list and the held-out keyword sets, from the chinese-poetry
collection (MIT) that the bundled models were trained on.

* `src/poetry/data/theme-words.txt`: the two-character words of classical
  verse, by corpus statistics over the *training* side of the split that
  `versifier corpus --holdout-per-10k 200 --seed 2026` makes (fetch.sh): a
  pair of characters standing together inside a line at least MIN_COUNT times,
  whose pointwise mutual information is at least MIN_PMI bits (they stand
  together far more often than chance), and that never crosses the 2+3 / 2+2+3
  caesura of a line more often than it keeps to it. A sentence typed as a theme
  (寫一首關於秋夜思鄉的詩) is reduced to the words of this list in it
  (秋夜, 思鄉): modern words (關於, 一首) are not verse and do not reach it.
* `packaging/bench/keywords-heldout.tsv`: keyword sets of 2 to 4 words from
  the *held-out* regular quatrains (五絕 and 七絕), which no model saw: each
  poem's most salient words by TF-IDF (a word of the list that the poem holds
  and that stands at least SET_MIN_COUNT times in the training poems, weighted
  by how rare it is across them), no character shared
  between two words of a set. One set a line: the source poem's id, its form,
  the words separated by spaces.

Usage: make_theme_words.py DATA_DIR/chinese-poetry/package [--sets 300]
"""
import argparse
import collections
import glob
import json
import math
import os
import random
import re

MIN_COUNT = 40
MIN_PMI = 1.5
SEED = 2026
HOLDOUT_PER_10K = 200
# A keyword set's words are ones a user would ask for: common in verse.
SET_MIN_COUNT = 150

HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def split_hash(seed, text):
    """`train::corpus::split_hash`: FNV-1a over the UTF-8 bytes, seeded."""
    h = 0xCBF29CE484222325 ^ seed
    for b in text.encode("utf-8"):
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def clean(text):
    """`train::corpus::clean`: notes in brackets and whitespace removed."""
    out, depth = [], 0
    for c in text:
        if c in "（(〔[【{":
            depth += 1
        elif c in "）)〕]】}":
            depth = max(0, depth - 1)
        elif depth == 0 and not c.isspace():
            out.append(c)
    return "".join(out)


def regular_lines(body):
    """The lines of a regular 絕句 or 律詩 (`forms::regular_form`), else None."""
    parts = re.split(r"([，。])", body)
    lines, marks = parts[0::2], parts[1::2]
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(lines) != len(marks) or len(lines) not in (4, 8):
        return None
    n = len(lines[0])
    if n not in (5, 7) or any(len(l) != n or not all(HAN.match(c) for c in l) for l in lines):
        return None
    if any(m != ("，" if i % 2 == 0 else "。") for i, m in enumerate(marks)):
        return None
    if len(set(lines)) != len(lines):
        return None
    return lines


def poems(source):
    files = sorted(glob.glob(os.path.join(source, "dist", "quantangshi", "poet.*.json")))
    seen = set()
    for path in files:
        with open(path, encoding="utf-8") as f:
            for poem in json.load(f):
                body = clean("".join(poem.get("paragraphs") or []))
                if any(c in body for c in "□■○◻�？"):
                    continue
                lines = regular_lines(body)
                if lines is None or body in seen:
                    continue
                seen.add(body)
                held = split_hash(SEED, body) % 10_000 < HOLDOUT_PER_10K
                yield poem.get("id", ""), lines, held


def caesura_ok(n, start):
    """Whether a word at `start` keeps to the line's rhythm (2+3, 2+2+3)."""
    cuts = (2,) if n == 5 else (2, 4)
    return not any(start < c < start + 2 for c in cuts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("--sets", type=int, default=300)
    ap.add_argument("--words-out", default="src/poetry/data/theme-words.txt")
    ap.add_argument("--sets-out", default="packaging/bench/keywords-heldout.tsv")
    args = ap.parse_args()

    chars, pairs, kept_rhythm, df = (collections.Counter() for _ in range(4))
    train_docs = 0
    held = []
    for pid, lines, is_held in poems(args.source):
        if is_held:
            if len(lines) == 4:
                held.append((pid, lines))
            continue
        train_docs += 1
        in_poem = set()
        for line in lines:
            chars.update(line)
            for i in range(len(line) - 1):
                w = line[i : i + 2]
                pairs[w] += 1
                kept_rhythm[w] += 1 if caesura_ok(len(line), i) else -1
                in_poem.add(w)
        df.update(in_poem)
    total_chars = sum(chars.values())
    total_pairs = sum(pairs.values())
    words = {}
    for w, n in pairs.items():
        if n < MIN_COUNT or kept_rhythm[w] <= 0 or w[0] == w[1]:
            continue
        pmi = math.log2((n / total_pairs) / ((chars[w[0]] / total_chars) * (chars[w[1]] / total_chars)))
        if pmi >= MIN_PMI:
            words[w] = n
    ordered = sorted(words, key=lambda w: (-words[w], w))
    with open(args.words_out, "w", encoding="utf-8") as f:
        f.write(
            f"# Two-character words of classical verse: count >= {MIN_COUNT} inside the lines of the\n"
            f"# {train_docs} training poems of chinese-poetry (MIT), PMI >= {MIN_PMI} bits, keeping the\n"
            "# caesura; made by packaging/corpus/make_theme_words.py. One word a line, most common first.\n"
        )
        for w in ordered:
            f.write(w + "\n")

    rng = random.Random(SEED)
    rng.shuffle(held)
    sets = []
    for pid, lines in held:
        found = {}
        for line in lines:
            for i in range(len(line) - 1):
                w = line[i : i + 2]
                if words.get(w, 0) >= SET_MIN_COUNT and caesura_ok(len(line), i):
                    found[w] = math.log(train_docs / (1 + df[w]))
        ranked = sorted(found, key=lambda w: (-found[w], w))
        want = rng.choice((2, 3, 4))
        chosen = []
        for w in ranked:
            if all(not set(w) & set(c) for c in chosen):
                chosen.append(w)
            if len(chosen) == want:
                break
        if len(chosen) >= 2:
            form = "wujue" if len(lines[0]) == 5 else "qijue"
            sets.append((pid, form, chosen))
        if len(sets) == args.sets:
            break
    with open(args.sets_out, "w", encoding="utf-8") as f:
        f.write(
            "# Keyword sets from held-out quatrains of chinese-poetry (MIT), never trained on;\n"
            "# made by packaging/corpus/make_theme_words.py. id, form, words.\n"
        )
        for pid, form, chosen in sets:
            f.write(f"{pid}\t{form}\t{' '.join(chosen)}\n")
    print(json.dumps({"train_poems": train_docs, "words": len(ordered), "held_quatrains": len(held), "sets": len(sets)}))


if __name__ == "__main__":
    main()
