#!/usr/bin/env bash
# Makes the folder a GPU session carries to the device machine (`.gpu/`, ignored
# by git): the CUDA build stripped and xz-compressed (18 MB where gzip gives
# 29), and a corpus for the trainer (about CORPUS_MIB of train.txt, every
# k-th poem, xz-compressed, and eval.txt). Then checks that the working tree and
# the carry together fit what a device call takes (64 MiB), and fails naming
# the figures when they do not (the call would be refused).
#
#   packaging/cuda/gpu-carry.sh CORPUS_DIR [BINARY] [CORPUS_MIB]
#
# BINARY defaults to target-cuda/release/versifier (packaging/cuda/build.sh).
# Then: run(command="packaging/cuda/gpu-session.sh .gpu \$OUT", carry=[".gpu"]).
set -euo pipefail
corpus=${1:?corpus folder from versifier corpus (train.txt, eval.txt)}
bin=${2:-target-cuda/release/versifier}; mib=${3:-16}
cd "$(dirname "$0")/../.."
rm -rf .gpu && mkdir -p .gpu/corpus
strip -o .gpu/versifier "$bin" && xz -9e -T0 .gpu/versifier
# Every k-th poem, so the slice holds every form and tune in proportion (the
# file runs through the collection in order: its first megabytes hold no 詞).
python3 - "$corpus/train.txt" "$mib" <<'PY' | xz -9e -T0 > .gpu/corpus/train.txt.xz
import math, os, sys
path, mib = sys.argv[1], int(sys.argv[2])
k = max(1, math.ceil(os.path.getsize(path) / (mib << 20)))
with open(path, "rb") as f:
    for i, line in enumerate(f):
        if i % k == 0:
            sys.stdout.buffer.write(line)
PY
cp "$corpus/eval.txt" .gpu/corpus/
du -sh .gpu/* .gpu/corpus/*
# What travels: tracked files, untracked ones git does not ignore, and the carry.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -cb 2>/dev/null | awk '$2 == "total" {n += $1} END {print n + 0}')
carried=$(du -sb .gpu | cut -f1)
limit=$((64 << 20))
echo "travels: working tree $((tree >> 20)) MiB + .gpu $((carried >> 20)) MiB = $(((tree + carried) >> 20)) MiB of $((limit >> 20))"
if [ $((tree + carried)) -gt "$limit" ]; then
  echo "too large for a device call: carry a smaller corpus (CORPUS_MIB, now $mib) or none" >&2
  exit 1
fi
