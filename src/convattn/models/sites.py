"""Where ``attach`` puts modules: the ``where=`` selection of blocks, the convolutions a pass saw (for GCT and AW),
per-stage options, and the AW-convolution that computes exactly what a convolution computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import torch
from torch import nn

from ..layers import AWConv2d
from ..layers.contract import Site, resolve_placement
from ..layers.create_attn import get_attn_spec, split_attn_name
from .blocks import Block
from .trace import Pass

__all__ = ["Where", "check_where", "select_blocks", "ConvSite", "conv_sites", "param_count", "split_parts",
           "per_stage", "configured", "equivalent_aw"]

# --- selection ---

#: attach's ``where=``: None | "all" | a placement rule name | {stage: block indices or "all"} | [stages] |
#: callable(name, module) -> bool
Where = Union[None, str, Mapping[int, Union[Sequence[int], str]], Sequence[int], Callable[[str, nn.Module], bool]]


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"attach where: {what} must be an int, got {v!r} ({type(v).__name__})")
    return v


def check_where(where: Where, counts: list[int]) -> set[tuple[int, int]] | None:
    """Validated ``where`` -> chosen (stage, block) pairs, 0-based (None for a rule or a callable)."""
    if where is None or callable(where) and not isinstance(where, str):
        return None
    if isinstance(where, str):
        return None  # a placement rule, resolved by name (unknown names are refused there)
    shape = f"this model has stages 1..{len(counts)} with {counts} blocks"
    chosen: set[tuple[int, int]] = set()
    if isinstance(where, dict):
        for stage, idxs in where.items():
            s = _int(stage, "a stage")
            if not 1 <= s <= len(counts):
                raise ValueError(f"attach where: stage {s} does not exist; {shape}")
            n = counts[s - 1]
            if idxs == "all":
                idxs = list(range(n))
            elif isinstance(idxs, str):
                raise ValueError(f"attach where: stage {s} takes 'all', a block index or a list of them, got {idxs!r}")
            elif not isinstance(idxs, (list, tuple, range)):
                idxs = [idxs]
            for i in idxs:
                i = _int(i, f"a block index of stage {s}")
                if not -n <= i < n:
                    raise ValueError(f"attach where: stage {s} has {n} blocks, index {i} is out of range")
                chosen.add((s - 1, i % n))
        return chosen
    if isinstance(where, (list, tuple)):
        for s in where:
            s = _int(s, "a stage")
            if not 1 <= s <= len(counts):
                raise ValueError(f"attach where: stage {s} does not exist; {shape}")
            chosen |= {(s - 1, b) for b in range(counts[s - 1])}
        return chosen
    raise ValueError(f"attach where must be None, 'all', a rule name, {{stage: [blocks]}}, a list of stages or a "
                     f"callable(name, module) -> bool; got {where!r}")


def select_blocks(blocks: list[Block], counts: list[int], where: Where, default_rule: Any) -> list[Block]:
    chosen = check_where(where, counts)
    if chosen is None:
        if callable(where) and not isinstance(where, str):
            return [b for b in blocks if where(b.name, b.module if b.module is not None else b.target)]
        chosen = resolve_placement(default_rule if where is None else where)(counts)
    return [b for b in blocks if (b.stage, b.index) in chosen]


@dataclass
class ConvSite:
    name: str
    conv: nn.Conv2d
    in_hw: tuple[int, int]
    in_block: bool
    block: Block | None
    first_in_block: bool


def conv_sites(p: Pass, blocks: list[Block]) -> list[ConvSite]:
    """Every ``nn.Conv2d`` (subclasses included, not inside convattn modules) that ran on a map larger than
    1 x 1, in forward order, with the block it belongs to."""
    named = [b for b in blocks if b.module is not None and b.name]
    out: list[ConvSite] = []
    seen: set[int] = set()
    first_of: set[int] = set()
    for c in p.calls:
        m = c.module
        if not isinstance(m, nn.Conv2d) or isinstance(m, AWConv2d) or c.in_attention or c.name is None \
                or id(m) in seen or len(c.in_shape) != 4:
            continue
        seen.add(id(m))
        hw = (c.in_shape[-2], c.in_shape[-1])
        if hw[0] * hw[1] <= 1:
            continue
        blk = next((b for b in named if c.name.startswith(b.name + ".")), None)
        if blk is None:
            blk = next((b for b in blocks if b.module is None and id(m) in b.convs), None)
        first = blk is not None and id(blk) not in first_of
        if first:
            first_of.add(id(blk))
        out.append(ConvSite(c.name, m, hw, blk is not None, blk, first))
    return out


def param_count(m: nn.Module, exclude: Iterable[nn.Parameter] = ()) -> int:
    ex = {id(p) for p in exclude}
    return sum(p.numel() for p in m.parameters() if id(p) not in ex)


def split_parts(attn: Any) -> tuple[list[str], list[str]]:
    if attn is None:
        return [], []
    if not isinstance(attn, str):
        raise ValueError(f"attach: attn must be a registered attention name (e.g. 'se', 'se+gct') or None, got "
                         f"{attn!r} ({type(attn).__name__})")
    if attn.strip().lower() in ("", "none"):
        return [], []
    parts = split_attn_name(attn)
    pre = [p for p in parts if get_attn_spec(p).kind == "pre_conv"]
    if len(pre) > 1:
        raise ValueError(f"attach: at most one pre-convolution attention, got {'+'.join(pre)}")
    return [p for p in parts if p not in pre], pre


def per_stage(kwargs: dict[str, Any], stage: int, num_stages: int, what: str) -> dict[str, Any]:
    """A list value with one entry per stage is taken per stage (e.g. ECA ``kernel_size=[3, 5, 5, 7]``)."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, list):
            if len(v) != num_stages:
                raise ValueError(f"attach: per-stage {what} option {k}={v} needs {num_stages} values (one per stage)")
            v = v[stage] if stage >= 0 else v[0]
        out[k] = v
    return out


def configured(name: str, site: Site, kwargs: dict[str, Any]) -> dict[str, Any]:
    spec = get_attn_spec(name)
    return spec.configure(site, dict(kwargs)) if spec.configure is not None else dict(kwargs)


def _aw_candidates(site: ConvSite, kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """AW options that may reproduce ``site.conv``: its own geometry, then TF "same" padding, then a fixed
    padding read off its forward."""
    c = site.conv
    if type(c) is nn.Conv2d or "input_padding" in kwargs:
        return [kwargs]
    return [kwargs, {**kwargs, "input_padding": "same"}] + \
        [{**kwargs, "input_padding": tuple(int(v) for v in pad)} for pad in _recorded_pads(c)]


def _recorded_pads(conv: nn.Conv2d) -> list[tuple[int, ...]]:
    pads = []
    for m in conv.modules():
        pad = getattr(m, "padding", None)
        if m is not conv and isinstance(m, (nn.ZeroPad2d, nn.ConstantPad2d)) and isinstance(pad, tuple) and len(pad) == 4:
            pads.append(pad)
    return pads


@torch.no_grad()
def equivalent_aw(site: ConvSite, kwargs: dict[str, Any], aw_modes: tuple[str, ...]) -> AWConv2d:
    """An AWConv2d computing exactly what ``site.conv`` computes (checked for subclasses; see the module
    docstring), in the first of ``aw_modes`` that the convolution's shape allows."""
    c = site.conv
    errors = []
    for kw in _aw_candidates(site, kwargs):
        aw = _aw_from_conv(c, kw, aw_modes)
        if type(c) is nn.Conv2d:
            return aw
        ok = True
        for dh in (0, 1):
            h, w = max(site.in_hw[0], 3) + dh, max(site.in_hw[1], 3) + dh
            x = torch.randn(2, c.in_channels, h, w, generator=torch.Generator().manual_seed(dh),
                            dtype=torch.float64).to(device=c.weight.device, dtype=c.weight.dtype)
            modes = (c.training, aw.training)
            c.eval(), aw.eval()
            try:
                ref, got = c(x), aw(x)
            except Exception as e:  # noqa: BLE001 - a candidate that cannot run is no match
                errors.append(f"{type(e).__name__}: {e}")
                ok = False
                break
            finally:
                c.train(modes[0]), aw.train(modes[1])
            tol = 1e-4 if c.weight.dtype == torch.float32 else 1e-2
            if ref.shape != got.shape or (ref - got).abs().max() > tol * max(1.0, ref.abs().max().item()):
                ok = False
                break
        if ok:
            return aw
    raise ValueError(f"{site.name} ({type(c).__name__}) is a convolution that computes more than a padding and a "
                     "convolution (e.g. weight standardisation); an AW-convolution cannot replace it exactly")


def _aw_from_conv(c: nn.Conv2d, kwargs: dict[str, Any], modes: tuple[str, ...]) -> AWConv2d:
    for i, mode in enumerate(modes):  # e.g. the grouped generator (full_g) where its divisibility holds, else full
        try:
            return AWConv2d.from_conv(c, **{**kwargs, "mode": mode})
        except ValueError:
            if i == len(modes) - 1:
                raise
    raise ValueError("no AW mode to try")
