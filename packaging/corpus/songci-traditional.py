#!/usr/bin/env python3
"""A copy of the chinese-poetry package whose Song 詞 are in traditional script.

The package's 詞 (`songci/ci.song.*.json`) are simplified and its 詩 traditional.
`versifier corpus --s2t models/tang-poems/s2t.tsv` is not enough for training on
them: that table maps only the simplified characters the model's vocabulary lacks
(it is for prompts), so 来, 无, 楼 and every other simplified form the Song 詩
happen to use stay simplified, and a model fine-tuned on them writes mixed script
(models/tang-poems/MODEL_CARD.md, "Fine-tuning on 詞"). This converts each 詞's
`paragraphs` with OpenCC's phrase-aware simplified-to-traditional conversion
(云 stays 云 in 人云亦云, becomes 雲 in 白云); the tune names (`rhythmic`) stay
as they are, since the tune table is keyed by the simplified name. Everything
else is linked, not copied.

Usage: packaging/corpus/songci-traditional.py PACKAGE_DIR OUT_DIR   (pip install opencc)
then:  versifier corpus --source OUT_DIR --song --ci ...
"""
import json
import os
import sys

import opencc


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = (os.path.abspath(p) for p in sys.argv[1:])
    dist = os.path.join(src, "dist")
    songci = os.path.join(dist, "songci")
    if not os.path.isdir(songci):
        sys.exit(f"{songci}: not found; PACKAGE_DIR is chinese-poetry's package folder (packaging/corpus/fetch.sh)")
    convert = opencc.OpenCC("s2t").convert
    os.makedirs(os.path.join(out, "dist", "songci"), exist_ok=True)
    for name in os.listdir(dist):
        link = os.path.join(out, "dist", name)
        if name != "songci" and not os.path.lexists(link):
            os.symlink(os.path.join(dist, name), link)
    poems = changed = 0
    for name in sorted(os.listdir(songci)):
        path = os.path.join(songci, name)
        target = os.path.join(out, "dist", "songci", name)
        if not (name.startswith("ci.song.") and name.endswith(".json")):
            if not os.path.lexists(target):
                os.symlink(path, target)
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        for poem in data:
            lines = poem.get("paragraphs")
            if isinstance(lines, list):
                new = [convert(l) if isinstance(l, str) else l for l in lines]
                changed += int(new != lines)
                poem["paragraphs"] = new
                poems += 1
        with open(target, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
    print(f"{out}: {poems} 詞 read, {changed} changed by the conversion")


if __name__ == "__main__":
    main()
