"""Writes src/poetry/data/s2t.tsv: for every character of the 平水韻 table
(src/poetry/data/pingshui.json) whose simplified form differs, the line
`simplified<TAB>traditional forms`, so simplified input (rhyme names, acrostic
heads, `versifier check`) finds its readings. When several traditional
characters share one simplified form (干: 乾/幹), all are listed and the
simplified character takes the readings of each.

Usage: python packaging/corpus/make_rhyme_s2t.py   (needs `pip install opencc`;
OpenCC's data is Apache-2.0)
"""
import json
import os

import opencc

here = os.path.join(os.path.dirname(__file__), "..", "..", "src", "poetry", "data")
table = json.load(open(os.path.join(here, "pingshui.json"), encoding="utf-8"))
t2s = opencc.OpenCC("t2s")
chars = set()
for tone in table.values():
    for section in tone.values():
        for members in section.values():
            chars.update("".join(members))
mapping = {}
for t in sorted(chars):
    s = t2s.convert(t)
    if len(s) == 1 and s != t:
        mapping.setdefault(s, []).append(t)
with open(os.path.join(here, "s2t.tsv"), "w", encoding="utf-8") as f:
    f.write("# simplified<TAB>traditional forms in the rhyme table (OpenCC t2s, inverted); see README.md\n")
    for s in sorted(mapping):
        f.write(s + "\t" + "".join(mapping[s]) + "\n")
print(f"{len(chars)} characters, {len(mapping)} simplified forms")
