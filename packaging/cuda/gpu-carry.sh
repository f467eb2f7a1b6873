#!/usr/bin/env bash
# Makes the folder a GPU session carries to the device machine (`.gpu/`, ignored
# by git): the CUDA build stripped and gzipped, and a corpus for the trainer's
# speed runs (the first CORPUS_MIB of train.txt, gzipped, and eval.txt).
#
#   packaging/cuda/gpu-carry.sh CORPUS_DIR [BINARY] [CORPUS_MIB]
#
# BINARY defaults to target-cuda/release/versifier (packaging/cuda/build.sh).
# Then: run(command="packaging/cuda/gpu-session.sh .gpu \$OUT", carry=[".gpu"]).
set -euo pipefail
corpus=${1:?corpus folder from versifier corpus (train.txt, eval.txt)}
bin=${2:-target-cuda/release/versifier}; mib=${3:-12}
cd "$(dirname "$0")/../.."
rm -rf .gpu && mkdir -p .gpu/corpus
strip -o .gpu/versifier "$bin" && gzip -9 .gpu/versifier
head -c $((mib << 20)) "$corpus/train.txt" | python3 -c 'import sys; d=sys.stdin.buffer.read(); sys.stdout.buffer.write(d[:d.rfind(b"\n")+1])' | gzip -9 > .gpu/corpus/train.txt.gz
cp "$corpus/eval.txt" .gpu/corpus/
du -sh .gpu/* .gpu/corpus/*
