#!/usr/bin/env bash
# Unpacks a carried file (.xz as gpu-carry.sh packs the build and the corpus,
# .gz as earlier carries did, or plain) to DEST; --exec makes it executable.
# xz with the xz tool where there is one, else with Python's lzma module (the
# GPU machine has Python).
#
#   packaging/cuda/unpack.sh SRC DEST [--exec]
set -euo pipefail
src=${1:?packed file}; dest=${2:?where to unpack it}
case "$src" in
  *.xz) if command -v xz > /dev/null; then xz -dc "$src" > "$dest"
        else python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$src" "$dest"; fi ;;
  *.gz) gzip -dc "$src" > "$dest" ;;
  *) [ "$src" -ef "$dest" ] || cp "$src" "$dest" ;;
esac
[ "${3:-}" = --exec ] && chmod +x "$dest"
exit 0
