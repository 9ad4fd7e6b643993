#!/bin/sh
# SAM ViT-B against PyTorch in one run: random weights at the released sizes, the image
# embedding of a 1024² input and one click's decode, PyTorch (transformers) then Krya.
#   tools/bench/sam.sh [PYTHON]     (default /var/tmp/golden-venv/bin/python)
set -e
PY=${1:-/var/tmp/golden-venv/bin/python}
DIR=${TMPDIR:-/tmp}/krya-sam-bench
cd "$(dirname "$0")/../.."
"$PY" tools/bench/sam_torch.py "$DIR" --runs 3
cargo run -q --release -p krya-engine --example sam_bench -- --runs 3 "$DIR/sam-vit-b.safetensors"
