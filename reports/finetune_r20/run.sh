#!/usr/bin/env bash
# Issue 28 part 3b: attach attention to our own trained ResNet-20 and fine-tune it.
# 1) the plain ResNet-20 trained once with the evidence study's recipe (Fashion-MNIST, 20k images x 10 epochs);
# 2) each module attached in the identity form and fine-tuned for 2 epochs at a tenth of the LR, against
#    fine-tuning the plain network (arm none) for the same 2 epochs. Resumable: rerun to continue.
set -euo pipefail
OUT=${OUT:-reports/finetune_r20}
DATA=(--data fashion-mnist --data-dir ${FMNIST_DIR:-/usr/share/datasets/fashion-mnist} --train-size 20000)
convattn train --model resnet20 "${DATA[@]}" --epochs 10 --seed 0 --threads 1 --quiet --out "$OUT/plain"
W=$(ls -d "$OUT"/plain/checkpoints/epoch_0010)/model.safetensors
convattn compare --model resnet20 "${DATA[@]}" --pretrained-path "$W" --identity --epochs 2 --lr 0.01 \
    --warmup-epochs 0 --seeds 3 --time-budget 0 --threads 1 --quiet \
    --variants none,se,eca,cbam,steam,aw --out "$OUT/finetune"
