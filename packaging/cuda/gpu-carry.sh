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
# The tracked tree alone is over the limit: run packaging/cuda/slim-tree.sh on
# first, then run(command="packaging/cuda/gpu-session.sh .gpu \$OUT", carry=[".gpu"]),
# then packaging/cuda/slim-tree.sh off.
set -euo pipefail
corpus=${1:?corpus folder from versifier corpus (train.txt, eval.txt)}
bin=${2:-target-cuda/release/versifier}; mib=${3:-16}
cd "$(dirname "$0")/../.."
limit=$((64 << 20))
# A tree too large for any carry fails now, not after minutes of compression.
if [ "$(bash packaging/cuda/slim-tree.sh bytes)" -gt $((limit - (8 << 20))) ]; then
  echo "too large for a device call: run packaging/cuda/slim-tree.sh on (and off after the call)" >&2
  exit 1
fi
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
# What travels: the working tree (counted as slim-tree.sh counts it) and the carry.
tree=$(bash packaging/cuda/slim-tree.sh bytes)
carried=$(du -sb .gpu | cut -f1)
echo "travels: working tree $((tree >> 20)) MiB + .gpu $((carried >> 20)) MiB = $(((tree + carried) >> 20)) MiB of $((limit >> 20))"
if [ $((tree + carried)) -gt "$limit" ]; then
  if bash packaging/cuda/slim-tree.sh status | grep -q '^slim tree: off'; then
    echo "too large for a device call: run packaging/cuda/slim-tree.sh on (and off after the call)" >&2
  else
    echo "too large for a device call: carry a smaller corpus (CORPUS_MIB, now $mib) or none" >&2
  fi
  exit 1
fi
