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

Where a tune rhymes is derived the same way. Each line's last character is
read in the 詞林正韻 (`cilin.tsv`: its 19 部 as sets of the 平水韻 groups of
`pingshui.json`; a simplified character through `s2t.tsv`, as the decoder
reads it). Two line ends rhyme together when they share a 部 in at least 75%
of the tune's poems in the pattern (elsewhere the share is below 0.45: a
chance match of two unrelated line ends is about 15%); line ends linked that
way form one rhyme (a, b, ...: 菩薩蠻 changes rhyme three times). A rhyme
position is 平 when at least 80% of the poems' unambiguous characters there
are 平, 仄 (上, 去 or 入) when 80% are 仄, else 中 (either). The column reads
one word per line: `-` for no rhyme, else the rhyme's letter and tone, so
浣溪沙 is `a平 a平 a平 - a平 a平`. The last column is the share of the
tune's poems in the pattern that end two lines of one rhyme on the same
character: near 0 for most tunes, 1.00 for 如夢令 (如夢，如夢 by rule).

The tones inside the lines (the tune's 詞譜) come from the same poems: a
position is 平 or 仄 when at least 90% of the poems' characters there whose
every reading has one tone agree, else 中 (either). The column holds one word
of 平/仄/中 per line: 浣溪沙 begins `中仄平平仄仄平 中平中仄仄平平`. At 0.9, 65%
of the 20 most common tunes' positions are fixed and 80% of their Song 詞
keep every one of them.

Usage: python packaging/corpus/make_ci_tunes.py <chinese-poetry package folder>
(npm pack chinese-poetry@2.0.1, unpacked; the collection is MIT-licensed).
The traditional form of each name comes from OpenCC (`pip install opencc`,
Apache-2.0), so a name typed either way finds its tune.
"""
import collections
import glob
import json
import os
import re
import sys

import opencc

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "src", "poetry", "data")
RHYME_SHARE = 0.75
TONES_SHARE = 0.90
TONE_SHARE = 0.80
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


def rhyme_readings():
    """char -> {(部, 平 or 仄)} from the 平水韻 table and the 詞林正韻 部."""
    bu_of = collections.defaultdict(list)
    for line in open(os.path.join(DATA, "cilin.tsv"), encoding="utf-8"):
        if line.startswith("#") or not line.strip():
            continue
        bu, *columns = line.rstrip("\n").split("\t")
        for key in "".join(columns):
            bu_of[key].append(int(bu))
    table = json.load(open(os.path.join(DATA, "pingshui.json"), encoding="utf-8"))
    of_char = collections.defaultdict(set)
    for tone_key, sections in table.items():
        for groups in sections.values():
            for name, members in groups.items():
                key = name[-1]
                tone = "平" if tone_key == "ping" else "仄"
                chars = "".join(members)
                if key not in chars:
                    chars += key  # 下平一先 lacks 先, as the loader knows
                for c in chars:
                    of_char[c].update((bu, tone) for bu in bu_of[key])
    s2t = {}
    for line in open(os.path.join(DATA, "s2t.tsv"), encoding="utf-8"):
        if not line.startswith("#") and "\t" in line:
            s, t = line.rstrip("\n").split("\t")
            s2t[s] = t

    def readings(c):
        if c in of_char:
            return of_char[c]
        return set().union(*(of_char.get(t, set()) for t in s2t.get(c, "")))

    return readings


def repeated_rhyme_share(pattern_poems, rhymes):
    """Share of the poems that end two lines of one rhyme on one character."""
    words = rhymes.split()
    repeats = 0
    for ends in pattern_poems:
        by_rhyme = collections.defaultdict(list)
        for end, word in zip(ends, words):
            if word != "-":
                by_rhyme[word[0]].append(end)
        repeats += any(len(v) != len(set(v)) for v in by_rhyme.values())
    return repeats / len(pattern_poems)


def tones_of(pattern_texts, lengths, readings):
    """One word per line: 平, 仄 or 中 at each position (see the module doc)."""
    words, at = [], 0
    for length in lengths:
        word = ""
        for i in range(at, at + length):
            counts = collections.Counter()
            for text in pattern_texts:
                kinds = {t for _, t in readings(text[i])}
                if len(kinds) == 1:
                    counts[kinds.pop()] += 1
            total = sum(counts.values())
            top, count = counts.most_common(1)[0] if counts else ("中", 0)
            word += top if total and count / total >= TONES_SHARE else "中"
        words.append(word)
        at += length
    return " ".join(words)


def rhymes_of(pattern_poems, n, readings):
    """One word per line: `-`, or the rhyme's letter and its tone (平, 仄, 中)."""
    ends = [[readings(p[i][-1]) for i in range(n)] for p in pattern_poems]

    def share(i, j):
        both = [(e[i], e[j]) for e in ends if e[i] and e[j]]
        hits = sum(bool({b for b, _ in x} & {b for b, _ in y}) for x, y in both)
        return hits / len(both) if both else 0.0

    parent = list(range(n))

    def root(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for i in range(n):
        for j in range(i + 1, n):
            if share(i, j) >= RHYME_SHARE:
                parent[root(j)] = root(i)
    members = collections.defaultdict(list)
    for i in range(n):
        members[root(i)].append(i)
    letter = {}
    for n_rhyme, group in enumerate(sorted(g for g in members.values() if len(g) > 1)):
        for i in group:
            letter[i] = chr(ord("a") + n_rhyme)
    words = []
    for i in range(n):
        if i not in letter:
            words.append("-")
            continue
        tones = collections.Counter()
        for e in ends:
            kinds = {t for _, t in e[i]}
            if len(kinds) == 1:
                tones[kinds.pop()] += 1
        top, count = tones.most_common(1)[0] if tones else ("中", 0)
        total = sum(tones.values())
        words.append(letter[i] + (top if total and count / total >= TONE_SHARE else "中"))
    return " ".join(words)


source = os.path.join(sys.argv[1], "dist", "songci")
readings = rhyme_readings()
here = os.path.join(os.path.dirname(__file__), "..", "..", "src", "poetry", "data")
by_tune = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(source, "ci.song.*.json"))):
    for poem in json.load(open(path, encoding="utf-8")):
        lines = lines_of(poem.get("paragraphs", []))
        if lines and poem.get("rhythmic") and poem["rhythmic"] != "失调名":
            text = "".join(poem["paragraphs"])
            counts = collections.Counter(c for c in text if is_hanzi(c))
            ends = [run[-1] for run in re.split("[" + "".join(MARKS) + "]", text) if run]
            chars = "".join(c for c in text if is_hanzi(c))
            by_tune[poem["rhythmic"]].append((lines, max(counts.values()), ends, chars))

rows = []
for tune, poems in by_tune.items():
    if len(poems) < MIN_POEMS:
        continue
    lengths = collections.Counter(tuple(n for n, _ in p) for p, _, _, _ in poems)
    pattern, count = lengths.most_common(1)[0]
    share = count / len(poems)
    if share < MIN_SHARE:
        continue
    marks = [collections.Counter() for _ in pattern]
    most, in_pattern, texts = [], [], []
    for p, top, ends, chars in poems:
        if tuple(n for n, _ in p) == pattern:
            most.append(top)
            in_pattern.append(ends)
            texts.append(chars)
            for i, (_, m) in enumerate(p):
                marks[i][m] += 1
    text = "".join(f"{n}{m.most_common(1)[0][0]}" for n, m in zip(pattern, marks))
    cap = 2
    while sum(t <= cap for t in most) < WITHIN_CAP * len(most):
        cap += 1
    rhymes = rhymes_of(in_pattern, len(pattern), readings)
    repeats = repeated_rhyme_share(in_pattern, rhymes)
    tones = tones_of(texts, pattern, readings)
    rows.append((len(poems), tune, text, share, cap, rhymes, repeats, tones))

rows.sort(key=lambda r: (-r[0], r[1]))
with open(os.path.join(here, "ci-tunes.tsv"), "w", encoding="utf-8") as out:
    out.write("# tune\ttraditional\tpattern (line length + mark)\tpoems\tshare following the pattern\trepeat cap\trhymes (per line: - or rhyme letter + 平/仄/中)\tshare repeating a rhyme character\ttones (per line: 平/仄/中 at each position)\n")
    out.write("# made by packaging/corpus/make_ci_tunes.py from chinese-poetry@2.0.1 songci (MIT)\n")
    s2t = opencc.OpenCC("s2t")
    for poems, tune, text, share, cap, rhymes, repeats, tones in rows:
        out.write(f"{tune}\t{s2t.convert(tune)}\t{text}\t{poems}\t{share:.2f}\t{cap}\t{rhymes}\t{repeats:.2f}\t{tones}\n")
print(f"{len(rows)} tunes")
