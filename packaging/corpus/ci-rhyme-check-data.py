#!/usr/bin/env python3
"""How the 詞 rhyme checker judges the Song 詞 themselves (README, "詞: the
tune's rhymes"): for each of the 20 most common tunes, up to N of its Song 詞
(chosen with a fixed seed) whose lines follow the tune's pattern are given to
`versifier check --tune TUNE --json`; prints how many keep their rhymes, how
many their tones (the 詞譜 the data fixes), and what the rhyme faults of the
others are: a line end in another 部, a character the 平水韻 table lacks
(韻書未收), a rhyme character used twice (重複), a rhyme in the other tone.

Usage: packaging/corpus/ci-rhyme-check-data.py VERSIFIER_BIN CHINESE_POETRY_PACKAGE [N=50]
(the package from `npm pack chinese-poetry@2.0.1`, unpacked)
"""
import collections
import glob
import json
import os
import random
import subprocess
import sys


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    binary, package = sys.argv[1:3]
    per_tune = int(sys.argv[3]) if len(sys.argv) == 4 else 50
    listing = subprocess.run([binary, "forms"], check=True, capture_output=True, text=True).stdout
    top = [r.strip().split("\t")[0] for r in listing.splitlines() if r.startswith("  ") and "\t" in r][:20]
    by_tune = collections.defaultdict(list)
    for path in sorted(glob.glob(os.path.join(package, "dist", "songci", "ci.song.*.json"))):
        for poem in json.load(open(path, encoding="utf-8")):
            if poem.get("rhythmic") in top:
                by_tune[poem["rhythmic"]].append("".join(poem["paragraphs"]))
    random.seed(1)
    faults, per = collections.Counter(), {}
    for tune in top:
        poems = by_tune[tune][:]
        random.shuffle(poems)
        kept = judged = toned = 0
        for text in poems:
            if judged >= per_tune:
                break
            run = subprocess.run([binary, "--log-dir", "none", "check", "--tune", tune, "--json", text],
                                 capture_output=True, text=True)
            if run.returncode != 0:
                continue  # not in the tune's pattern
            judged += 1
            report = json.loads(run.stdout)
            kept += report["rhyme_kept"]
            toned += report["tones_kept"]
            for p in report["problems"]:
                if p["rule"] not in ("rhyme", "repeated_rhyme"):
                    continue
                m = p["message"]
                faults["not in the table" if "未收" in m else "rhyme used twice" if "重複" in m
                       else "other tone" if "是仄聲" in m or "是平聲" in m else "another 部"] += 1
        per[tune] = {"judged": judged, "rhymes_kept": kept, "tones_kept": toned}
    judged = sum(t["judged"] for t in per.values())
    kept = sum(t["rhymes_kept"] for t in per.values())
    toned = sum(t["tones_kept"] for t in per.values())
    print(json.dumps({"judged": judged, "rhymes_kept": kept, "share": round(kept / judged, 3),
                      "tones_kept": toned, "tones_share": round(toned / judged, 3),
                      "faults": dict(faults), "per_tune": per}, ensure_ascii=False))


if __name__ == "__main__":
    main()
