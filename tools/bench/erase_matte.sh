#!/bin/sh
# The editor's models against PyTorch in one run: big-lama at 512² and IS-Net at 1024², random
# weights at the released sizes, PyTorch (spandrel; the DIS reference) then Krya.
#   DIS_ISNET=/var/tmp/dis/isnet.py tools/bench/erase_matte.sh [PYTHON]
#   (DIS_ISNET: IS-Net/models/isnet.py of xuebinqin/DIS@b6764e2038; see tools/golden/isnet.py)
set -e
PY=${1:-/var/tmp/golden-venv/bin/python}
DIR=${TMPDIR:-/tmp}/krya-erase-matte-bench
cd "$(dirname "$0")/../.."
"$PY" tools/bench/erase_matte_torch.py "$DIR" --runs 3
cargo run -q --release -p krya-engine --example erase_matte_bench -- --runs 3 "$DIR"
