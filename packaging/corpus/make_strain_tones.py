"""Writes src/poetry/data/strain-tones.tsv: tone classes for characters the
平水韻 table (pingshui.json, with s2t.tsv) does not list, read from the 平仄
annotations (`strains`) that the chinese-poetry collection ships beside its
Tang and Song poems. Each poem's annotation is aligned with its text; a
character seen at least 5 times gets 平 or 仄 when 95% or more of its marks
agree, else `either`. Rhyme groups are not derived: such a character never
stands at a rhyme position.

Usage: python packaging/corpus/make_strain_tones.py <chinese-poetry package folder>
(npm pack chinese-poetry@2.0.1, unpacked; the collection is MIT-licensed)
"""
import collections
import glob
import json
import os
import sys

source = os.path.join(sys.argv[1], "dist")
here = os.path.join(os.path.dirname(__file__), "..", "..", "src", "poetry", "data")
table = json.load(open(os.path.join(here, "pingshui.json"), encoding="utf-8"))
known = set()
for tone in table.values():
    for section in tone.values():
        for members in section.values():
            known.update("".join(members))
for line in open(os.path.join(here, "s2t.tsv"), encoding="utf-8"):
    if not line.startswith("#"):
        known.add(line.split("\t")[0])

strains = {}
for f in glob.glob(os.path.join(source, "strains", "json", "*.json")):
    for entry in json.load(open(f, encoding="utf-8")):
        strains[entry["id"]] = "".join(entry["strains"])
seen = collections.defaultdict(collections.Counter)
for f in glob.glob(os.path.join(source, "quantangshi", "poet.*.json")):
    for poem in json.load(open(f, encoding="utf-8")):
        marks = strains.get(poem.get("id"))
        text = "".join(poem.get("paragraphs", []))
        if marks is None or len(marks) != len(text):
            continue
        for c, m in zip(text, marks):
            if m in "平仄" and c not in known:
                seen[c][m] += 1
rows = []
for c, counts in sorted(seen.items()):
    total = sum(counts.values())
    if total < 5:
        continue
    ping = counts["平"] / total
    tone = "ping" if ping >= 0.95 else "ze" if ping <= 0.05 else "either"
    rows.append(f"{c}\t{tone}\t{counts['平']}\t{counts['仄']}")
with open(os.path.join(here, "strain-tones.tsv"), "w", encoding="utf-8") as f:
    f.write("# char<TAB>ping|ze|either<TAB>平 marks<TAB>仄 marks (chinese-poetry strains); see README.md\n")
    f.write("\n".join(rows) + "\n")
print(f"{len(rows)} characters")
