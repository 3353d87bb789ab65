"""``convattn maps``: read each module's attention (its ``attention(x)``) on an image and draw it.

* channel gates per block (SE, ECA, GCT, CBAM and STEAM channel branches) as a heat map, one row per module;
* spatial gates (CBAM, STEAM's SIA) upsampled and overlaid on the image;
* AW-convolution kernel modulation statistics per layer (mean, std, min, max of A);
* Grad-CAM (Selvaraju et al., ICCV 2017) of the predicted class on the last stage;
* with ``--stats N``: each module's attention statistics over N validation images (how far the gates are from
  their init and how much they depend on the input), as CSV and Markdown.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AttentionModule
from ..optional import require
from ..report import atomic_write_text, save_figure

__all__ = ["attention_maps", "attention_statistics", "grad_cam", "save_maps", "load_image", "validation_images"]


def _entry(attn: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A module's ``attention(x)`` (the contract's keys) in the maps' layout: ``channel`` (N, C), ``spatial``
    (N, H, W), ``aw`` (the kernel modulation A, (N, ...)); other keys (coord's ``height`` (N, C, H), ``width``
    (N, C, W)) with their singleton axis dropped."""
    entry: dict[str, torch.Tensor] = {}
    for key, v in attn.items():
        if key == "kernel":
            entry["aw"] = v
        elif key == "channel":
            entry[key] = v[:, :, 0, 0]
        elif key == "spatial":
            entry[key] = v[:, 0]
        else:
            entry[key] = v.squeeze(3) if v.shape[3] == 1 else v.squeeze(2)
    return entry


@torch.no_grad()
def _collect_attention(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Per attention module (by name): its attention on the batch ``x`` (see ``_entry``)."""
    found: dict[str, dict[str, torch.Tensor]] = {}
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, inp) -> None:  # before forward: in-place modules (STEAM in a block) change inp
            found[name] = _entry(mod.attention(inp[0]))
        return fn

    for name, m in model.named_modules():
        if isinstance(m, AttentionModule):
            hooks.append(m.register_forward_pre_hook(hook(name)))
    try:
        model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return found


def attention_maps(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """Per attention module (by name): ``channel`` (C,), ``spatial`` (H, W) and/or ``aw`` (A) for image ``x`` (1, C, H, W)."""
    return {n: {k: v[0] for k, v in e.items()} for n, e in _collect_attention(model, x).items()}


def attention_statistics(model: nn.Module, x: torch.Tensor) -> list[dict[str, Any]]:
    """Statistics of every attention module's output over the batch ``x`` (N ≥ 2 images), one row per module and kind.

    ``mean``/``std``/``min``/``max`` over all values; ``sample_std``: the standard deviation across the N images,
    averaged over the attention's elements, i.e. how much the attention depends on the input (0 for a constant
    gate, such as GCT or AW-convolution at init).
    """
    if x.dim() != 4 or x.shape[0] < 2:
        raise ValueError(f"attention_statistics needs a batch of at least 2 images (N, C, H, W), got {tuple(x.shape)}")
    rows = []
    for name, entry in _collect_attention(model, x).items():
        for kind, v in entry.items():
            v = v.double()
            rows.append(dict(module=name, kind=kind, shape=list(v.shape[1:]), mean=v.mean().item(),
                             std=v.std().item(), sample_std=v.std(0).mean().item(), min=v.min().item(),
                             max=v.max().item()))
    return rows


def _last_stage(model: nn.Module) -> nn.Module:
    """The ResNet's last non-empty stage; in other CNNs the last block ``attach`` finds."""
    for name in ("layer4", "layer3"):
        stage = getattr(model, name, None)
        if isinstance(stage, nn.Sequential) and len(stage) > 0:
            return stage
    from ..models.attach import find_blocks
    blocks = find_blocks(model)
    if blocks:
        return blocks[-1].module if blocks[-1].module is not None else blocks[-1].target
    raise ValueError(f"Grad-CAM needs a ResNet (layer3/layer4) or a CNN in which attach finds blocks; "
                     f"{type(model).__name__} has neither")


def grad_cam(model: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[torch.Tensor, int, torch.Tensor]:
    """(CAM (H, W) in [0, 1], target class, softmax probabilities) for one image, on the last stage's output."""
    stage = _last_stage(model)
    store: dict[str, torch.Tensor] = {}

    def fwd(mod, inp, out):
        out.retain_grad()
        store["act"] = out

    h = stage.register_forward_hook(fwd)
    try:
        model.eval()
        with torch.enable_grad():
            logits = model(x.requires_grad_(False))
            target = int(logits.argmax(1)) if target is None else target
            model.zero_grad(set_to_none=True)
            logits[0, target].backward()
    finally:
        h.remove()
    act, grad = store["act"], store["act"].grad  # (1, C, h, w)
    weights = grad.mean((2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = F.relu((weights * act).sum(1, keepdim=True))  # (1, 1, h, w)
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam / cam.max().clamp_min(1e-12)
    return cam.detach(), target, logits.softmax(1)[0].detach()


def load_image(path: str | os.PathLike, in_chans: int, size: int, mean, std) -> tuple[torch.Tensor, np.ndarray]:
    """(normalised tensor (1, C, size, size), display image) from an image file; ValueError if unreadable."""
    from PIL import Image

    from ..data.files import open_image
    img = open_image(path, "L" if in_chans == 1 else "RGB")
    w, h = img.size  # resize the short side, centre crop
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
    left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
    img = img.crop((left, top, left + size, top + size))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    t = (torch.from_numpy(arr) - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    return t[None].float(), arr.transpose(1, 2, 0)


def validation_images(data: Any, info: dict[str, Any], indices: list[int]) -> list[tuple[str, torch.Tensor, np.ndarray, int]]:
    """(name, normalised tensor (1, C, H, W), display image, label) for validation images of a run's data set
    (``data``: the run's :class:`~convattn.data.DataBundle`; ``info``: its data.json, for the normalisation)."""
    mean, std = torch.tensor(info["mean"]).view(-1, 1, 1), torch.tensor(info["std"]).view(-1, 1, 1)
    items = []
    for i in indices:
        if not 0 <= i < data.val.num_samples:
            raise ValueError(f"--index {i} out of range: the validation set has {data.val.num_samples} images")
        if data.name == "folder":
            x, y = data.val.dataset[i]  # (C, H, W) after the evaluation transform
            x = x[None]
        else:
            x = (data.val.images[i:i + 1].float() - data.val.mean) / data.val.std  # (1, C, H, W)
            y = data.val.labels[i]
        disp = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, C) in [0, 1]
        items.append((f"val{i}", x.float(), disp, int(y)))
    return items


STATS_COLUMNS = ["module", "kind", "mean", "std", "sample_std", "min", "max"]


def save_statistics(rows: list[dict[str, Any]], out_dir: str | os.PathLike, title: str) -> list[Path]:
    """Write ``attention_stats.csv`` and ``attention_stats.md`` (rows of :func:`attention_statistics`)."""
    from ..report import to_markdown, write_csv
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown = [dict(r, **{k: round(r[k], 4) for k in STATS_COLUMNS[2:]}) for r in rows]
    write_csv(out / "attention_stats.csv", shown, STATS_COLUMNS + ["shape"])
    md = [f"# {title}", "", to_markdown(shown, STATS_COLUMNS, {"sample_std": "std across images"}), "",
          "channel/spatial: sigmoid gates (GCT: its tanh gate 1 + tanh(·)); aw: the kernel modulation A of "
          "K' = K(1 + A). std across images: per element, averaged (0 = the same attention for every input)."]
    atomic_write_text(out / "attention_stats.md", "\n".join(md) + "\n")
    return [out / "attention_stats.csv", out / "attention_stats.md"]


def save_maps(model: nn.Module, x: torch.Tensor, display: np.ndarray, out_dir: str | os.PathLike,
              classes: list[str] | None = None, label: int | None = None) -> dict[str, Any]:
    """Write channel_gates.png, spatial_maps.png, aw_modulation.png, gradcam.png and maps.json; returns the summary."""
    matplotlib = require("matplotlib", "plots", "attention maps")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not torch.isfinite(x).all():
        raise ValueError("the input image contains NaN or Inf values")
    maps = attention_maps(model, x)
    shown = display[..., 0] if display.shape[-1] == 1 else display
    cmap_img = "gray" if display.shape[-1] == 1 else None
    summary: dict[str, Any] = {"modules": {}}
    written = []

    def save(fig, name):
        save_figure(fig, out / name)
        written.append(name)

    chan = [(n, e["channel"]) for n, e in maps.items() if "channel" in e]
    if chan:
        width = max(len(v) for _, v in chan)
        grid = np.full((len(chan), width), np.nan)
        for i, (_, v) in enumerate(chan):
            grid[i, :len(v)] = v.float().numpy()
        fig, ax = plt.subplots(figsize=(10, 0.35 * len(chan) + 1.5))
        im = ax.imshow(grid, aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_yticks(range(len(chan)), [n for n, _ in chan], fontsize=7)
        ax.set_xlabel("channel")
        ax.set_title("channel gates per module")
        fig.colorbar(im, ax=ax)
        save(fig, "channel_gates.png")
    spat = [(n, e["spatial"]) for n, e in maps.items() if "spatial" in e]
    if spat:
        cols = min(4, len(spat))
        rows = (len(spat) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (n, m) in zip(axes.flat, spat):
            up = F.interpolate(m[None, None].float(), size=shown.shape[:2], mode="bilinear", align_corners=False)[0, 0]
            ax.imshow(shown, cmap=cmap_img)
            ax.imshow(up.numpy(), cmap="jet", alpha=0.45)
            ax.set_title(n, fontsize=7)
        save(fig, "spatial_maps.png")
    aw = [(n, e["aw"]) for n, e in maps.items() if "aw" in e]
    if aw:
        stats = np.array([[a.mean().item(), a.std().item(), a.min().item(), a.max().item()] for _, a in aw])
        fig, ax = plt.subplots(figsize=(max(6, 0.4 * len(aw) + 2), 3.8))
        xs = np.arange(len(aw))
        ax.errorbar(xs, stats[:, 0], yerr=stats[:, 1], fmt="o", capsize=3, label="mean ± std of A")
        ax.plot(xs, stats[:, 2], "v", label="min")
        ax.plot(xs, stats[:, 3], "^", label="max")
        ax.set_xticks(xs, [n for n, _ in aw], rotation=70, fontsize=7)
        ax.set_ylabel("kernel modulation A (K' = K(1 + A))")
        ax.legend(fontsize=7)
        save(fig, "aw_modulation.png")
    cam, target, probs = grad_cam(model, x.clone())
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    axes[0].imshow(shown, cmap=cmap_img)
    name = classes[target] if classes and target < len(classes) else str(target)
    truth = f", label {classes[label] if classes and label is not None else label}" if label is not None else ""
    axes[0].set_title(f"pred {name} ({probs[target]:.2f}){truth}", fontsize=8)
    axes[1].imshow(shown, cmap=cmap_img)
    axes[1].imshow(cam.numpy(), cmap="jet", alpha=0.5)
    axes[1].set_title("Grad-CAM (last stage)", fontsize=8)
    for ax in axes:
        ax.axis("off")
    save(fig, "gradcam.png")
    for n, e in maps.items():
        s = {}
        if "channel" in e:
            v = e["channel"].float()
            s["channel"] = dict(mean=v.mean().item(), std=v.std().item() if len(v) > 1 else 0.0, min=v.min().item(),
                                max=v.max().item(), channels=len(v))
        if "spatial" in e:
            v = e["spatial"].float()
            s["spatial"] = dict(mean=v.mean().item(), min=v.min().item(), max=v.max().item(), shape=list(v.shape))
        if "aw" in e:
            v = e["aw"].float()
            s["aw"] = dict(mean=v.mean().item(), std=v.std().item(), min=v.min().item(), max=v.max().item(),
                           abs_mean=v.abs().mean().item())
        summary["modules"][n] = s
    summary.update(prediction=target, probability=probs[target].item(), label=label, files=written)
    atomic_write_text(out / "maps.json", json.dumps(summary, indent=2))
    return summary
