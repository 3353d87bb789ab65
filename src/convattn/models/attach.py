"""``attach``: put convattn modules into an existing CNN (torchvision, timm, your own), in place.

Where each kind goes (the registry's ``kind``, see ``convattn.layers.contract``):

* ``output`` modules (SE, CBAM, ECA, STEAM, coord) at the output of each residual branch, before the addition
  (in blocks without a shortcut, at the block output). A block is recognised by its type (:data:`BLOCK_RULES`,
  subclasses included): the rule names the attribute whose output is the branch output; a ``Sequential`` there
  is followed to its last module. Stages are found by one dry forward pass: blocks with the same output stride
  form a stage. Channel counts come from that pass, never from the user.
* ``pre_conv`` modules (GCT) in front of every ``nn.Conv2d`` that sees a map larger than 1 x 1 in the dry pass
  (so not the convolutions of built-in squeeze-excitation gates or of heads after global pooling).
* ``conv`` replacements (AW) for every such ``nn.Conv2d`` with a kernel larger than 1 x 1 inside a recognised
  block (depthwise and grouped included; the stem stays plain, as in the AW paper's ResNets), built with
  ``AWConv2d.from_conv`` (same weights).

State-dict keys of the original network do not change: the module an attention attaches to keeps its class's
behaviour and its parameters, gains a child ``attn`` and runs it after itself (``output``) or before itself
(``pre_conv``). So plain (e.g. pretrained) weights load into the attached model with only the new keys missing,
and the attached model's state dict loads back into a freshly attached one.

``identity=True`` makes the attached network compute exactly what the original did: AW (zero-initialised PW2)
and GCT (gamma = beta = 0) already start as the identity; gated ``output`` modules are wrapped in
:class:`ResidualScale`, ``y = x + s * (m(x) - x)`` with a scalar ``s`` initialised to 0 (for a gate ``g`` that
is ``x * (1 + s * (g - 1))``, a zero-initialised scale on the gate's departure from 1).

``torch.jit.script`` is not supported on attached models (the attached modules call their class's own forward
through ``super()``, which TorchScript cannot compile); torch.fx, ``torch.export`` and ONNX export trace them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..layers import AWConv2d, AttentionModule, create_attn
from ..layers.contract import resolve_placement
from ..layers.create_attn import get_attn_spec, split_attn_name

__all__ = ["attach", "AttachReport", "ResidualScale", "BLOCK_RULES", "register_block", "find_blocks", "stage_blocks"]

#: Residual block types (``module.Class``, subclasses match too) -> attribute whose output is the branch output.
BLOCK_RULES: dict[str, str] = {
    "torchvision.models.resnet.BasicBlock": "bn2",
    "torchvision.models.resnet.Bottleneck": "bn3",
    "torchvision.models.mobilenetv2.InvertedResidual": "conv",
    "torchvision.models.mobilenetv3.InvertedResidual": "block",
    "torchvision.models.efficientnet.MBConv": "block",
    "torchvision.models.efficientnet.FusedMBConv": "block",
    "torchvision.models.convnext.CNBlock": "block",
    "torchvision.models.regnet.ResBottleneckBlock": "f",
    "timm.models.resnet.BasicBlock": "bn2",
    "timm.models.resnet.Bottleneck": "bn3",
    "timm.models._efficientnet_blocks.ConvBnAct": "bn1",
    "timm.models._efficientnet_blocks.DepthwiseSeparableConv": "bn2",
    "timm.models._efficientnet_blocks.InvertedResidual": "bn3",
    "timm.models._efficientnet_blocks.EdgeResidual": "bn2",
    "timm.models._efficientnet_blocks.UniversalInvertedResidual": "layer_scale",
    "timm.models.regnet.Bottleneck": "conv3",
    "timm.models.convnext.ConvNeXtBlock": "drop_path",
    "convattn.models.resnet.BasicBlock": "bn2",
    "convattn.models.resnet.Bottleneck": "bn3",
}


def register_block(block_type: type | str, attribute: str) -> None:
    """Teach ``attach`` a residual block type: ``attribute`` names the submodule whose output is the branch
    output (before the shortcut addition)."""
    key = block_type if isinstance(block_type, str) else f"{block_type.__module__}.{block_type.__qualname__}"
    BLOCK_RULES[key] = attribute


def _rule(module: nn.Module) -> str | None:
    for cls in type(module).__mro__:
        rule = BLOCK_RULES.get(f"{cls.__module__}.{cls.__qualname__}")
        if rule is not None:
            return rule
    return None


class ResidualScale(AttentionModule):
    """``y = x + scale * (module(x) - x)`` with ``scale`` initialised to 0: the identity at insertion."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.scale = nn.Parameter(torch.zeros(()))

    def reset_attention_parameters(self) -> None:
        nn.init.zeros_(self.scale)

    def no_weight_decay(self) -> set[str]:
        return {"scale"}  # weight decay would pull the module back towards the identity

    def attention(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.module.attention(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.scale.to(x.dtype) * (self.module(x) - x)


# --- modules that run an attached child after / before themselves (classes made once per base class) ---

class _ThenAttn:
    """Mixin: ``forward`` returns ``self.attn(<the base class's forward>)``."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.attn(super().forward(*args, **kwargs))


class _AttnThen:
    """Mixin: ``forward`` runs ``self.attn`` on the input, then the base class's forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.attn(x))


@functools.lru_cache(maxsize=None)
def _attached_class(base: type, mixin: type) -> type:
    suffix = "WithOutputAttn" if mixin is _ThenAttn else "WithInputAttn"
    return type(f"{base.__name__}{suffix}", (mixin, base), {"__module__": __name__})


def _attach_child(module: nn.Module, attn: nn.Module, mixin: type) -> None:
    if hasattr(module, "attn") and isinstance(getattr(module, "attn"), nn.Module):
        raise ValueError(f"{type(module).__name__} already has an attention attached (or a child named 'attn')")
    module.__class__ = _attached_class(type(module), mixin)
    module.add_module("attn", attn)


# --- what the dry pass sees ---

@dataclass
class Block:
    name: str
    module: nn.Module
    target_name: str  # full name of the module whose output is the branch output
    target: nn.Module
    channels: int = 0
    reduction: int = 0
    stage: int = -1
    index: int = -1  # position within its stage


def _branch_target(block: nn.Module, attribute: str) -> tuple[str, nn.Module]:
    target = getattr(block, attribute, None)
    if not isinstance(target, nn.Module):
        raise ValueError(f"{type(block).__name__} has no submodule {attribute!r} (the attach rule of this block "
                         "type); register the right one with convattn.models.attach.register_block")
    name = attribute
    while isinstance(target, nn.Sequential) and len(target) > 0:  # follow to the last layer
        last = str(len(target) - 1)
        name, target = f"{name}.{last}", target[-1]
    return name, target


def find_blocks(model: nn.Module) -> list[Block]:
    """The residual blocks ``attach`` recognises, outermost only, in module order."""
    blocks: list[Block] = []
    inside: tuple[str, ...] = ()
    for name, m in model.named_modules():
        if inside and any(name.startswith(p + ".") for p in inside):
            continue
        rule = _rule(m)
        if rule is not None and name:
            tname, target = _branch_target(m, rule)
            blocks.append(Block(name, m, f"{name}.{tname}", target))
            inside += (name,)
    return blocks


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError(f"attach: {type(model).__name__} has no nn.Conv2d; it is not a CNN convattn can attach to")


@torch.no_grad()
def _dry_pass(model: nn.Module, blocks: list[Block], size: int) -> dict[nn.Module, tuple[int, int]]:
    """Fill each block's channels and output stride; return each conv's input (H, W)."""
    conv_in: dict[nn.Module, tuple[int, int]] = {}
    hooks = []
    for b in blocks:
        def out_hook(mod, inp, out, b=b):
            b.channels, b.reduction = out.shape[1], max(1, size // out.shape[-1])
        hooks.append(b.target.register_forward_hook(out_hook))
    def conv_hook(mod, inp) -> None:
        conv_in.setdefault(mod, tuple(inp[0].shape[-2:]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_pre_hook(conv_hook))
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        x = torch.zeros(1, _input_channels(model), size, size, device=_device(model), dtype=_dtype(model))
        model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, t in modes:
            m.training = t
    return conv_in


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32


def _assign_stages(blocks: list[Block]) -> list[int]:
    reductions = sorted({b.reduction for b in blocks})
    counts = [0] * len(reductions)
    for b in blocks:
        b.stage = reductions.index(b.reduction)
        b.index = counts[b.stage]
        counts[b.stage] += 1
    return counts


def stage_blocks(model: nn.Module, dry_run_size: int = 64) -> tuple[list[Block], list[int]]:
    """The recognised residual blocks of ``model`` with their channels, output stride, stage and index (one dry
    forward pass), and the number of blocks per stage."""
    blocks = find_blocks(model)
    _dry_pass(model, blocks, dry_run_size)
    return blocks, _assign_stages(blocks)


# --- the report ---

@dataclass
class AttachReport:
    """What ``attach`` inserted: one row per insertion (``kind``, ``module`` name, ``where`` it sits, channels,
    stage and block (0-based; -1 outside blocks), added parameters)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    blocks_per_stage: list[int] = field(default_factory=list)
    identity: bool = False

    @property
    def added_params(self) -> int:
        return sum(r["params"] for r in self.rows)

    def count(self, kind: str | None = None) -> int:
        return sum(1 for r in self.rows if kind is None or r["kind"] == kind)

    def summary(self) -> str:
        by: dict[str, int] = {}
        for r in self.rows:
            by[r["module"]] = by.get(r["module"], 0) + 1
        what = ", ".join(f"{n} x{k}" for n, k in by.items()) or "nothing"
        return (f"attached {what}: {self.added_params:,} parameters; stages (blocks each): "
                f"{self.blocks_per_stage}; identity at insertion: {self.identity}")


# --- selection ---

Where = Any  # None | "all" | rule name | {stage: indices} | [stages] | callable(name, module) -> bool


def _select_blocks(blocks: list[Block], counts: list[int], where: Where, default_rule: Any) -> list[Block]:
    if callable(where) and not isinstance(where, str):
        return [b for b in blocks if where(b.name, b.module)]
    if where is None or isinstance(where, str):
        chosen = resolve_placement(default_rule if where is None else where)(counts)
    elif isinstance(where, dict):
        chosen = set()
        for stage, idxs in where.items():
            if not 1 <= int(stage) <= len(counts):
                raise ValueError(f"attach where: stage {stage} does not exist; this model has stages 1..{len(counts)} "
                                 f"with {counts} blocks")
            n = counts[int(stage) - 1]
            for i in (range(n) if idxs == "all" else [idxs] if isinstance(idxs, int) else idxs):
                if not -n <= i < n:
                    raise ValueError(f"attach where: stage {stage} has {n} blocks, index {i} is out of range")
                chosen.add((int(stage) - 1, i % n))
    elif isinstance(where, (list, tuple)):
        bad = [s for s in where if not 1 <= int(s) <= len(counts)]
        if bad:
            raise ValueError(f"attach where: stages {bad} do not exist; this model has stages 1..{len(counts)}")
        chosen = {(int(s) - 1, b) for s in where for b in range(counts[int(s) - 1])}
    else:
        raise ValueError(f"attach where must be None, 'all', a rule name, {{stage: [blocks]}}, a list of stages or a "
                         f"callable(name, module) -> bool; got {where!r}")
    return [b for b in blocks if (b.stage, b.index) in chosen]


def _select_convs(model: nn.Module, conv_in: dict[nn.Module, tuple[int, int]], chosen_blocks: list[Block] | None,
                  where: Where, min_kernel: int) -> list[tuple[str, nn.Conv2d]]:
    """Plain ``nn.Conv2d`` layers (not inside convattn modules) that saw a map larger than 1 x 1 in the dry pass,
    with a kernel of at least ``min_kernel``, inside ``chosen_blocks`` (None: anywhere) and accepted by a callable
    ``where``."""
    skip: set[int] = set()
    for m in model.modules():
        if isinstance(m, AttentionModule):  # never inside convattn's own modules
            skip |= {id(c) for c in m.modules()}
    out = []
    prefixes = None if chosen_blocks is None else tuple(b.name + "." for b in chosen_blocks)
    for name, m in model.named_modules():
        if type(m) is not nn.Conv2d or id(m) in skip:
            continue
        hw = conv_in.get(m)
        if hw is None or hw[0] * hw[1] <= 1 or max(m.kernel_size) < min_kernel:
            continue
        if callable(where) and not where(name, m):
            continue
        if prefixes is not None and not name.startswith(prefixes):
            continue
        out.append((name, m))
    return out


def _param_count(m: nn.Module, exclude: Iterable[nn.Parameter] = ()) -> int:
    ex = {id(p) for p in exclude}
    return sum(p.numel() for p in m.parameters() if id(p) not in ex)


def _split_parts(attn: str | None) -> tuple[list[str], list[str]]:
    if attn is None or attn.strip().lower() in ("", "none"):
        return [], []
    parts = split_attn_name(attn)
    pre = [p for p in parts if get_attn_spec(p).kind == "pre_conv"]
    if len(pre) > 1:
        raise ValueError(f"attach: at most one pre-convolution attention, got {'+'.join(pre)}")
    return [p for p in parts if p not in pre], pre


def attach(model: nn.Module, attn: str | None = None, conv: str | None = None, *, where: Where = None,
           identity: bool = False, attn_kwargs: dict[str, Any] | None = None,
           conv_kwargs: dict[str, Any] | None = None, dry_run_size: int = 64) -> nn.Module:
    """Insert convattn modules into ``model`` in place and return it; ``model.convattn_report`` says what went where.

    Args:
        model: Any CNN built from recognised blocks (see :data:`BLOCK_RULES`; :func:`register_block` adds more).
        attn: Registered attention name(s) joined with ``+`` (``"se"``, ``"steam"``, ``"gct"``, ``"se+gct"``).
        conv: ``"aw"`` replaces k x k convolutions (k > 1) by AWConv2d with the same weights.
        where: Which blocks (or convs) get modules: None (each module's default placement, e.g. STEAM's
            ``stage_ends``), ``"all"``, a placement rule name, ``{stage: [block indices] | "all"}`` (stages from
            1), a list of stages, or ``callable(name, module) -> bool`` (called with blocks for block-output
            modules and with ``nn.Conv2d`` modules for GCT and AW).
        identity: Start as the original network's function (see the module docstring).
        attn_kwargs / conv_kwargs: Options of the attention modules / of AWConv2d.
        dry_run_size: Input size of the dry pass that finds channels and stages (64 suits ImageNet CNNs).
    """
    if conv not in (None, "", "none", "aw"):
        raise ValueError(f"Unknown conv {conv!r}. Valid: None or 'aw' (AWConv2d)")
    if conv_kwargs and conv != "aw":  # checked before anything is changed
        raise ValueError("attach: conv_kwargs configure AW-convolution; pass conv='aw' too")
    out_parts, pre_parts = _split_parts(attn)
    attn_kwargs = dict(attn_kwargs or {})
    blocks = find_blocks(model)
    if out_parts and not blocks:
        kinds = sorted({type(m).__name__ for m in model.modules() if len(list(m.children())) > 1})[:12]
        raise ValueError(f"attach: no residual block of a known type in {type(model).__name__} (container types "
                         f"found: {', '.join(kinds)}); teach attach a block type with "
                         "convattn.models.attach.register_block(BlockClass, 'attribute_of_the_branch_output')")
    conv_in = _dry_pass(model, blocks, dry_run_size)
    counts = _assign_stages(blocks)
    report = AttachReport(blocks_per_stage=counts, identity=identity)
    dd = dict(device=_device(model), dtype=_dtype(model))

    if out_parts:
        name = "+".join(out_parts)
        rule = get_attn_spec(out_parts[0]).placement if len(out_parts) == 1 else "all"
        for b in _select_blocks(blocks, counts, where, rule):
            m = create_attn(name, b.channels, **attn_kwargs).to(**dd)
            if identity:
                m = ResidualScale(m).to(**dd)
            _attach_child(b.target, m, _ThenAttn)
            report.rows.append(dict(kind="output", module=name, where=f"{b.target_name}.attn", channels=b.channels,
                                    stage=b.stage, block=b.index, params=_param_count(m)))
    # convolutions: inside the selected blocks when `where` picks stages/blocks; else every eligible one
    chosen = _select_blocks(blocks, counts, where, "all") if isinstance(where, (dict, list, tuple)) else None
    if pre_parts:
        kw = attn_kwargs if not out_parts else {}
        for cname, c in _select_convs(model, conv_in, chosen, where, 1):
            m = create_attn(pre_parts[0], c.in_channels, **kw).to(**dd)
            _attach_child(c, m, _AttnThen)
            report.rows.append(dict(kind="pre_conv", module=pre_parts[0], where=f"{cname}.attn",
                                    channels=c.in_channels, stage=-1, block=-1, params=_param_count(m)))
    if conv == "aw":
        ckw = dict(conv_kwargs or {})
        for cname, c in _select_convs(model, conv_in, blocks if chosen is None else chosen, where, 2):
            aw = _aw_from_conv(c, ckw)
            parent_name, _, leaf = cname.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, aw)
            report.rows.append(dict(kind="conv", module="aw", where=cname, channels=c.out_channels, stage=-1,
                                    block=-1, params=_param_count(aw, [aw.weight] + ([aw.bias] if aw.bias is not None else []))))
    if not report.rows and (out_parts or pre_parts or conv):
        raise ValueError(f"attach: nothing was inserted into {type(model).__name__} (where={where!r} selected no "
                         f"block or convolution; stages have {counts} blocks)")
    model.convattn_report = report
    return model


def _aw_from_conv(c: nn.Conv2d, kwargs: dict[str, Any]) -> AWConv2d:
    if "mode" in kwargs:
        return AWConv2d.from_conv(c, **kwargs)
    try:  # the grouped generator (full_g) where its divisibility holds, else full
        return AWConv2d.from_conv(c, mode="full_g", **kwargs)
    except ValueError:
        return AWConv2d.from_conv(c, mode="full", **kwargs)
