"""Writes src/poetry/data/ci-tunes.tsv: the line pattern of each 詞 tune (詞牌)
with enough poems, derived from the Song 詞 of the chinese-poetry collection
(`songci/ci.song.*.json`, simplified script, the tune in `rhythmic`).

For each tune: the poems whose text is only ideographs and punctuation are
reduced to their lines (the runs between marks). The most common sequence of
line lengths is the tune's pattern; at each line the mark most of those poems
use, normalised to `，` (，、；：) or `。` (。？！), is its punctuation. Kept:
tunes with at least 50 such poems whose pattern at least 25% of them follow
(many tunes have variants; the share is in the file). `失调名` (tune lost) is
left out. The repeat cap of a tune is how many times the repeat guard lets
one character stand in a poem of it: the smallest count (at least 2, as in a
詩) that at least 90% of its poems in the pattern stay within, so the guard
forbids only what fewer than 1 in 10 of them has (長相思 repeats lines by rule;
浣溪沙 hardly ever holds a character three times).

Usage: python packaging/corpus/make_ci_tunes.py <chinese-poetry package folder>
(npm pack chinese-poetry@2.0.1, unpacked; the collection is MIT-licensed).
The traditional form of each name comes from OpenCC (`pip install opencc`,
Apache-2.0), so a name typed either way finds its tune.
"""
import collections
import glob
import json
import os
import sys

import opencc

MARKS = {"，": "，", "、": "，", "；": "，", "：": "，", "。": "。", "？": "。", "！": "。"}
MIN_POEMS = 50
MIN_SHARE = 0.25
WITHIN_CAP = 0.90


def is_hanzi(c):
    return "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf"


def lines_of(paragraphs):
    """[(length, mark)] or None when anything else appears."""
    out, n = [], 0
    for c in "".join(paragraphs):
        if c in MARKS:
            if n == 0:
                return None
            out.append((n, MARKS[c]))
            n = 0
        elif is_hanzi(c):
            n += 1
        elif not c.isspace():
            return None
    return out if n == 0 and out else None


source = os.path.join(sys.argv[1], "dist", "songci")
here = os.path.join(os.path.dirname(__file__), "..", "..", "src", "poetry", "data")
by_tune = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(source, "ci.song.*.json"))):
    for poem in json.load(open(path, encoding="utf-8")):
        lines = lines_of(poem.get("paragraphs", []))
        if lines and poem.get("rhythmic") and poem["rhythmic"] != "失调名":
            counts = collections.Counter(c for c in "".join(poem["paragraphs"]) if is_hanzi(c))
            by_tune[poem["rhythmic"]].append((lines, max(counts.values())))

rows = []
for tune, poems in by_tune.items():
    if len(poems) < MIN_POEMS:
        continue
    lengths = collections.Counter(tuple(n for n, _ in p) for p, _ in poems)
    pattern, count = lengths.most_common(1)[0]
    share = count / len(poems)
    if share < MIN_SHARE:
        continue
    marks = [collections.Counter() for _ in pattern]
    most = []
    for p, top in poems:
        if tuple(n for n, _ in p) == pattern:
            most.append(top)
            for i, (_, m) in enumerate(p):
                marks[i][m] += 1
    text = "".join(f"{n}{m.most_common(1)[0][0]}" for n, m in zip(pattern, marks))
    cap = 2
    while sum(t <= cap for t in most) < WITHIN_CAP * len(most):
        cap += 1
    rows.append((len(poems), tune, text, share, cap))

rows.sort(key=lambda r: (-r[0], r[1]))
with open(os.path.join(here, "ci-tunes.tsv"), "w", encoding="utf-8") as out:
    out.write("# tune\ttraditional\tpattern (line length + mark)\tpoems\tshare following the pattern\trepeat cap\n")
    out.write("# made by packaging/corpus/make_ci_tunes.py from chinese-poetry@2.0.1 songci (MIT)\n")
    s2t = opencc.OpenCC("s2t")
    for poems, tune, text, share, cap in rows:
        out.write(f"{tune}\t{s2t.convert(tune)}\t{text}\t{poems}\t{share:.2f}\t{cap}\n")
print(f"{len(rows)} tunes")
