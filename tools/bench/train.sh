#!/bin/sh
# One LoRA training step of an SD 1.5-size UNet at 512² (rank 16, batch 1, random weights),
# PyTorch + peft then Krya, each printing its step time and peak memory.
#   tools/bench/train.sh [PYTHON] [LATENT_SIDE]   (defaults /var/tmp/golden-venv/bin/python, 64)
set -e
PY=${1:-/var/tmp/golden-venv/bin/python}
SIZE=${2:-64}
DIR=${TMPDIR:-/tmp}/krya-train-bench
cd "$(dirname "$0")/../.."
"$PY" tools/bench/train_torch.py "$DIR" --runs 2 --size "$SIZE"
cargo run -q --release -p krya-engine --example train_bench -- "$DIR" --runs 2 --size "$SIZE"
