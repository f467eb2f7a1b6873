#!/usr/bin/env bash
# Fetches the chinese-poetry collection (MIT) with the ordinary npm client and
# turns it into Versifier's training text.
#
# Usage: packaging/corpus/fetch.sh [DATA_DIR]   (default: data)
# Then:  versifier train --corpus DATA_DIR/corpus ...   (see models/tang-poems/MODEL_CARD.md)
set -euo pipefail
data=${1:-data}
mkdir -p "$data/chinese-poetry"
(cd "$data/chinese-poetry" && npm pack chinese-poetry@2.0.1 >/dev/null && tar xzf chinese-poetry-2.0.1.tgz)
cargo run --release -- corpus --source "$data/chinese-poetry/package" --out "$data/corpus" --song --holdout-per-10k 200 --seed 2026
