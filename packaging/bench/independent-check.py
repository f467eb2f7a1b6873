"""Checks Versifier's poems with an independent implementation of the same
rules: the PoemStructureChecker of the PyPI package pingshui_rhyme 0.20 (its own
rhyme checker and 平仄 patterns over its own copy of the table).

Usage: pip install pingshui_rhyme==0.20
       python packaging/bench/independent-check.py target/release/versifier strict|off BATCHES
Each batch is 8 poems per form (wujue, qijue, wulv, qilv, two acrostics) at
temperature 0.8, top-k 40. Prints the counts and the first failures.
"""
import json, subprocess, sys
from pingshui_rhyme.poem_structure_checker import PoemStructureChecker
c = PoemStructureChecker()
binary = sys.argv[1]; rules = sys.argv[2]
forms = [("wujue",5),("qijue",7),("wulv",5),("qilv",7),("acrostic:春夏秋冬",7),("acrostic:風花雪月",7)]
prompts = ["春","月","山","江","秋","風","花","夜"]
tot=ok_r=ok_m=ok_b=0; fails=[]
for fi,(form,_) in enumerate(forms):
    for k in range(int(sys.argv[3])):
        args=[binary,"generate","--device","cpu","--form",form,"--seed",str(1000+fi*100+k),"--variations","8","--max-tokens","80","--json","--log-dir","none","--rules",rules,"--temperature","0.8","--top-k","40","--top-p","1","--repetition-penalty","1"]
        p = prompts[k % len(prompts)]
        if not form.startswith("acrostic"): args += ["--prompt", p]
        else: p = ""
        d=json.loads(subprocess.run(args,capture_output=True,text=True,check=True).stdout)
        for t in d["text"]:
            poem = p + t
            r,rm = c.check_poem_rhyming(poem); m,mm = c.check_poem_pingze_meter(poem)
            tot+=1; ok_r+=r; ok_m+=m; ok_b+=(r and m)
            if not (r and m): fails.append((form, poem, rm, mm))
print(f"{rules}: {tot} poems; rhyme {ok_r} meter {ok_m} both {ok_b} ({ok_b/tot:.1%})")
for f in fails[:8]: print(f)
