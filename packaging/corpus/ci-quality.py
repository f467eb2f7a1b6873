#!/usr/bin/env python3
"""The 詞 figures of a model (models/tang-poems/MODEL_CARD.md, "Fine-tuning on 詞").

Draws 8 tunes x 4 one-character prompts x 4 variations with
`versifier generate --form ci:TUNE --json` (temperature 0.8, top-k 40, the
default repeat guard and rules, seed 1: the sampling of `bench --quality`, with
160 tokens max so that every tune fits) and scores them as `src/eval/quality.rs`
scores 詩: repeated characters per poem (ideographs minus distinct ones, the mean
over the poems) and distinct-2 (distinct character bigrams over all bigrams, the
prompt included). Also counts the 詞 that ended by themselves with every line's
length and mark as in the tune's pattern (`versifier forms`).

Each 詞 that kept its pattern is also judged by `versifier check --tune` for
its tune's rhymes (the 詞林正韻, where the tune's Song 詞 rhyme) and 詞譜
(the tones the data fixes): `rhyme_kept`, `tones_kept`.

Usage: packaging/corpus/ci-quality.py VERSIFIER_BIN MODEL_DIR OUT.json [--large SEED] [--rules strict|off] [--tunes 20]
  --large SEED: 8 tunes x 8 prompts (春月風花雪山水夜) x 8 variations (512 詞)
  with that seed, the protocol the 詞 model (models/song-ci) was confirmed on:
  128 詞 leave a standard error of about 0.2 on the repeated characters.
  --rules off: the form alone (for a 詞, what strict rules were before they
  held its rhymes). --tunes 20: the 20 most common tunes (`versifier forms`)
  instead of the 8 above.
Held-out 詞 perplexity is a separate command:
  versifier bench --quality --model MODEL_DIR --corpus FT_CORPUS/ci-eval
"""
import json
import subprocess
import sys

TUNES = ["浣溪沙", "鹧鸪天", "菩萨蛮", "西江月", "减字木兰花", "蝶恋花", "点绛唇", "清平乐"]
PROMPTS = ["春", "月", "風", "花"]
VARIATIONS = 4
SEED = 1


def is_hanzi(c):
    o = ord(c)
    return any(
        lo <= o <= hi
        for lo, hi in [
            (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2A6DF),
            (0x2A700, 0x2EBEF), (0x30000, 0x3134F),
        ]
    )


def lines_of(text):
    """(length, mark) of each run ended by ， or 。; None if anything else appears."""
    out, n = [], 0
    for c in text:
        if c in "，。":
            out.append((n, c))
            n = 0
        elif is_hanzi(c):
            n += 1
        else:
            return None
    return out if n == 0 else None


def patterns(binary, top=None):
    """Simplified tune name -> [(length, mark)] from `versifier forms` (the
    first `top` tunes it lists, most poems first, when given)."""
    global TUNES
    listing = subprocess.run([binary, "forms"], check=True, capture_output=True, text=True).stdout
    rows = [r.strip().split("\t") for r in listing.splitlines() if r.startswith("  ") and "\t" in r]
    if top:
        TUNES = [cols[0] for cols in rows[:top]]
    found = {}
    for cols in rows:
        if len(cols) >= 3 and cols[0] in TUNES:
            pattern = []
            n = ""
            for c in cols[2]:
                if c.isdigit():
                    n += c
                else:
                    pattern.append((int(n), c))
                    n = ""
            found[cols[0]] = pattern
    missing = [t for t in TUNES if t not in found]
    if missing:
        sys.exit(f"versifier forms does not list {missing}")
    return found


def rules_kept(binary, tune, poem):
    """Whether `versifier check --tune` finds the 詞's rhymes, and its tones, kept."""
    run = subprocess.run([binary, "--log-dir", "none", "check", "--tune", tune, "--json", poem],
                         capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"versifier check --tune {tune} {poem}: {run.stderr.strip()}")
    report = json.loads(run.stdout)
    return report["rhyme_kept"], report["tones_kept"]


def main():
    global PROMPTS, VARIATIONS, SEED
    args, rules, top = sys.argv[1:], "strict", None
    if "--rules" in args:
        i = args.index("--rules")
        rules = args[i + 1] if i + 1 < len(args) else ""
        del args[i:i + 2]
    if "--tunes" in args:
        i = args.index("--tunes")
        top = int(args[i + 1]) if i + 1 < len(args) and args[i + 1].isdigit() else 0
        del args[i:i + 2]
        if not top:
            sys.exit(__doc__)
    if rules not in ("strict", "off"):
        sys.exit(__doc__)
    if len(args) == 5 and args[3] == "--large" and args[4].isdigit():
        PROMPTS = ["春", "月", "風", "花", "雪", "山", "水", "夜"]
        VARIATIONS, SEED = 8, int(args[4])
    elif len(args) != 3:
        sys.exit(__doc__)
    binary, model, out_path = args[:3]
    tune_patterns = patterns(binary, top)
    poems, per_tune = [], {}
    for tune in TUNES:
        kept = rhymed = toned = 0
        for prompt in PROMPTS:
            cmd = [
                binary, "generate", "--model", model, "--device", "cpu", "--log-dir", "none",
                "--form", f"ci:{tune}", "--prompt", prompt, "--variations", str(VARIATIONS),
                "--seed", str(SEED), "--temperature", "0.8", "--top-k", "40",
                "--max-tokens", "160", "--rules", rules, "--json",
            ]
            run = subprocess.run(cmd, capture_output=True, text=True)
            if run.returncode != 0:
                sys.exit(f"{' '.join(cmd)}: {run.stderr.strip()}")
            result = json.loads(run.stdout)
            for text, stop in zip(result["text"], result["stop"]):
                poem = result["prompt"] + text
                ok = stop == "stop" and lines_of(poem) == tune_patterns[tune]
                rhyme, tones = rules_kept(binary, tune, poem) if ok else (False, False)
                kept += int(ok)
                rhymed += int(rhyme)
                toned += int(tones)
                poems.append({"tune": tune, "prompt": prompt, "text": poem, "stop": stop,
                              "pattern_kept": ok, "rhyme_kept": rhyme, "tones_kept": tones})
        per_tune[tune] = {"samples": len(PROMPTS) * VARIATIONS, "pattern_kept": kept,
                          "rhyme_kept": rhymed, "tones_kept": toned}

    texts = [p["text"] for p in poems]
    repeated = sum(
        len([c for c in t if is_hanzi(c)]) - len({c for c in t if is_hanzi(c)}) for t in texts
    ) / len(texts)
    bigrams = [(a, b) for t in texts for a, b in zip(t, t[1:])]
    report = {
        "model": model,
        "settings": f"{len(TUNES)} tunes x {len(PROMPTS)} prompts ({''.join(PROMPTS)}) x "
        f"{VARIATIONS} variations, seed {SEED}, temperature 0.8, top-k 40, rules {rules}, repeat guard",
        "samples": len(texts),
        "pattern_kept": sum(p["pattern_kept"] for p in poems),
        "rhyme_kept": sum(p["rhyme_kept"] for p in poems),
        "tones_kept": sum(p["tones_kept"] for p in poems),
        "repeated_chars_per_poem": round(repeated, 3),
        "distinct_2": round(len(set(bigrams)) / max(1, len(bigrams)), 3),
        "per_tune": per_tune,
        "poems": poems,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(report, f, ensure_ascii=False, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "poems"}, ensure_ascii=False))


if __name__ == "__main__":
    main()
