#!/usr/bin/env bash
# The CUDA benchmark set of benchmarks/README.md, in one go (on a GPU machine; results under $1):
#   bash benchmarks/cuda_suite.sh benchmarks/results
# ResNet-50 against torchvision's/timm's networks and every variant against the plain network, at batch 32 and
# 128: fp32 (NCHW), and bf16 autocast + channels_last.
set -uo pipefail  # one failing step does not stop the others
out=${1:?results folder}
export PYTHONUNBUFFERED=1
python benchmarks/cuda_check.py --out "$out/cuda_check.md"
for b in 32 128; do
  python benchmarks/bench.py --suite models --models resnet50 --device cuda --batch $b --repeats 10 \
      --out "$out/cuda_models_r50_b${b}_fp32"
  python benchmarks/bench.py --suite models --models resnet50 --device cuda --batch $b --repeats 10 \
      --amp bfloat16 --channels-last --out "$out/cuda_models_r50_b${b}_bf16_cl"
done
python benchmarks/bench_reference.py --refs plain,se,eca,cbam --device cuda --batches 32,128 --repeats 10 \
    --out "$out/cuda_reference_r50_fp32"
python benchmarks/bench_reference.py --refs plain,se,eca,cbam --device cuda --batches 32,128 --repeats 10 \
    --amp bfloat16 --channels-last --out "$out/cuda_reference_r50_bf16_cl"
