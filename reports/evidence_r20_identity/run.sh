#!/usr/bin/env bash
# Issue 27: does the identity form (attach(identity=True), `--identity`), which removes the gated modules' early
# deficit, change the final accuracy of the evidence study (ResNet-20, Fashion-MNIST 20k images x 10 epochs)?
# The evidence study's recipe and seeds, one gated arm in the identity form per compare folder, so two can run
# side by side on two cores: `run.sh se`, `run.sh cbam`, `run.sh eca`, `run.sh steam`.
# The plain network is not retrained: the identity form does not change it, so each folder starts with the
# evidence study's `none` runs (same recipe, same seeds), copied in. Resumable: rerun to continue.
set -euo pipefail
ARM=$1
OUT=${OUT:-reports/evidence_r20_identity}/$ARM
mkdir -p "$OUT/runs/none"
for s in 0 1 2; do
  [ -d "$OUT/runs/none/seed$s" ] || cp -r reports/evidence_r20/runs/none/seed$s "$OUT/runs/none/"
done
convattn compare --data fashion-mnist --data-dir ${FMNIST_DIR:-/usr/share/datasets/fashion-mnist} \
  --train-size 20000 --epochs 10 --seeds 3 --variants "$ARM" --identity --threads 1 --quiet --out "$OUT"
