#!/bin/sh
# The upscalers against PyTorch in one run: full-size random-weight RealESRGAN_x4plus and
# realesr-general-x4v3, forward on a 256x256 tile, PyTorch (spandrel) then Krya's engine.
#   tools/bench/upscale.sh [PYTHON]     (default /var/tmp/golden-venv/bin/python)
set -e
PY=${1:-/var/tmp/golden-venv/bin/python}
DIR=${TMPDIR:-/tmp}/krya-upscale-bench
cd "$(dirname "$0")/../.."
"$PY" tools/bench/upscale_torch.py "$DIR" --size 256 --runs 3
cargo run -q --release -p krya-engine --example upscale_bench -- --size 256 --runs 3 \
  "$DIR/x4plus.safetensors" "$DIR/general-x4v3.safetensors"
