"""``attach``: put convattn modules into any CNN (torchvision, timm, another package's, your own), in place.

The network's structure is read off its own computation (one recorded dry forward pass, see
:mod:`convattn.models.trace` and :mod:`convattn.models.blocks`), never from a list of block classes:

* ``output`` modules (SE, CBAM, ECA, STEAM, coord) at the output of each block's branch, before the residual
  addition (or the concatenation of a split/dense shortcut); in multi-branch blocks without a shortcut, at the
  block output; in networks without blocks (VGG), at the output of each stage. Stages are blocks of one output
  stride. Channel counts come from the pass, never from the user.
* ``pre_conv`` modules (GCT) in front of every convolution (``nn.Conv2d`` and its subclasses) that sees a map
  larger than 1 x 1 in the pass (so not the convolutions of built-in squeeze-excitation gates or of heads after
  global pooling).
* ``conv`` replacements (AW) for every such convolution with a kernel larger than 1 x 1 inside a block
  (depthwise and grouped included; the stem stays plain, as in the AW paper's ResNets; in a network without
  blocks, every one but the first), built with ``AWConv2d.from_conv`` (same weights). A subclass of
  ``nn.Conv2d`` with a forward of its own (TF "same" padding, a padding layer of its own) is replaced only by an
  AW-convolution that computes exactly what it computed, checked on random inputs at two sizes; a subclass
  that computes something else (e.g. weight standardisation) is refused with the reason.

State-dict keys of the original network do not change: a module an attention attaches to keeps its class's
behaviour and its parameters, gains a child ``attn`` and runs it after itself (``output``) or before itself
(``pre_conv``). So plain (e.g. pretrained) weights load into the attached model with only the new keys missing.

``attach`` is all or nothing: every module is built and checked before the network is changed, so a request
that fails in any part leaves the network as it was, and the error says which part failed.

``identity=True`` makes the attached network compute exactly what the original did: AW (zero-initialised PW2)
and GCT (gamma = beta = 0) already start as the identity; gated ``output`` modules are wrapped in
:class:`ResidualScale`, ``y = x + s * (m(x) - x)`` with a scalar ``s`` initialised to 0.

Attached networks pickle whole (``torch.save(model)``, ``copy.deepcopy``, ultralytics' checkpoints): an attached
module pickles as its base class plus a reconstructor (:mod:`convattn.models.attached`), both importable. An
``output`` module also runs after the alternate forwards a library switches a layer to (``forward_fuse`` after
ultralytics' Conv + BN fusion, ``forward_split``).

``torch.jit.script`` is refused on attached models with the reason (the attached modules call their class's own
forward through ``super()``); torch.fx, ``torch.export`` and ONNX export trace them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..layers import AWConv2d, create_attn
from ..layers.aw_conv import default_aw_modes
from ..layers.contract import Site, resolve_placement
from ..layers.helpers import first_conv
from ..layers.create_attn import get_attn_spec
from .attached import AttnThen, ResidualScale, ThenAttn, attach_child, has_attn
from .blocks import BLOCK_RULES, Block, assign_stages, find_blocks as _find_blocks, register_block, stage_outputs
from .sites import (ConvSite, Where, check_where, configured, conv_sites, equivalent_aw, param_count, per_stage,
                    select_blocks, split_parts)
from .trace import Pass, TraceError, record_pass

__all__ = ["attach", "AttachReport", "ResidualScale", "ThenAttn", "AttnThen", "BLOCK_RULES", "register_block",
           "find_blocks", "stage_blocks", "network_pass", "AFTER_ATTACH"]

# --- the dry pass ---

def _cfg_size(model: nn.Module) -> tuple[int | None, int | None]:
    """(channels, size) of the model's declared input (timm's ``pretrained_cfg``/``default_cfg``)."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        size = cfg.get("input_size") if isinstance(cfg, dict) else None
        if isinstance(size, (tuple, list)) and len(size) == 3:
            return int(size[0]), int(size[-1])
    return None, None


def _channel_candidates(model: nn.Module) -> list[int]:
    cands = [getattr(model, "in_chans", None), _cfg_size(model)[0]]
    conv = (first_conv(model) or (None, None))[1]
    if conv is not None:
        cands.append(conv.in_channels)
    cands += [3, 1]
    return list(dict.fromkeys(c for c in cands if isinstance(c, int) and not isinstance(c, bool) and c > 0))


def _check_size(dry_run_size: Any) -> None:
    if dry_run_size is None:
        return
    if isinstance(dry_run_size, bool) or not isinstance(dry_run_size, int) or not 8 <= dry_run_size <= 4096:
        raise ValueError(f"attach: dry_run_size must be an int in [8, 4096] (the side of the dry pass's input), "
                         f"got {dry_run_size!r}")


def _too_small(p: Pass, blocks: list[Block]) -> bool:
    """Some block saw a 1 x 1 map: deeper strides can no longer be told apart at this input size."""
    return any(p.size // max(b.reduction, 1) <= 1 for b in blocks)


def network_pass(model: nn.Module, dry_run_size: int | None = None) -> tuple[Pass, list[Block], list[int], list[str]]:
    """The recorded dry pass of ``model``, its blocks (stage and index set), blocks per stage and notes.

    ``dry_run_size`` None: the model's declared input size (timm ``pretrained_cfg``, at most 256), else 32 x the
    first convolution's stride; doubled (up to 1024) while some block sees a 1 x 1 map (deeper strides could not be
    told apart) or the network refuses so small an input. A size given explicitly is checked the same way, never
    changed.
    """
    if isinstance(model, torch.jit.ScriptModule):
        raise ValueError("attach needs the eager nn.Module: a TorchScript module (torch.jit.script/trace) cannot "
                         "be changed in place; attach to the eager model first, then script or export it")
    _check_size(dry_run_size)
    conv = (first_conv(model) or (None, None))[1]
    if conv is None:
        raise ValueError(f"attach: {type(model).__name__} has no nn.Conv2d; it is not a CNN convattn can attach to")
    explicit = dry_run_size is not None
    if explicit:
        size = dry_run_size
    else:
        cfg = _cfg_size(model)[1]
        size = min(cfg, 256) if cfg else 32 * max(conv.stride)
    first_err: Exception | None = None
    sizes = [size] if explicit else sorted({size * 2 ** i for i in range(6) if size * 2 ** i <= 1024} | {224, 299})
    sizes = [s for s in sizes if s >= size]  # doubling, and the usual ImageNet sizes for fixed-size heads
    for size in sizes:
        p = None
        for c in _channel_candidates(model):
            try:
                p = record_pass(model, size, c)
                break
            except TraceError as e:
                first_err = first_err or e
        if p is not None:
            blocks, notes = _find_blocks(p)
            if not blocks:
                blocks = stage_outputs(p)
                if blocks:
                    notes.append("no residual, split, dense or multi-branch block: a stage is a run of layers at "
                                 "one output stride, its output the last of them")
            if not _too_small(p, blocks):
                return p, blocks, assign_stages(blocks), notes
            if explicit:
                raise ValueError(f"attach: dry_run_size={size} is too small for {type(model).__name__}: some of its "
                                 f"blocks see 1 x 1 maps, so their strides cannot be told apart; use "
                                 f"dry_run_size >= {2 * size} (or leave it unset)")
    if first_err is None:
        raise ValueError(f"attach: {type(model).__name__}'s blocks see 1 x 1 maps at every dry-run size up to "
                         f"{sizes[-1]}; pass dry_run_size=")
    raise ValueError(f"attach: cannot run {type(model).__name__} on a dry input: {first_err}") from first_err


def find_blocks(model: nn.Module, dry_run_size: int | None = None) -> list[Block]:
    """The blocks ``attach`` finds in ``model`` (forward order, with channels, stride, stage and index)."""
    return network_pass(model, dry_run_size)[1]


def stage_blocks(model: nn.Module, dry_run_size: int | None = None) -> tuple[list[Block], list[int]]:
    """The blocks of ``model`` and the number of blocks per stage."""
    _, blocks, counts, _ = network_pass(model, dry_run_size)
    return blocks, counts


# --- the report ---

@dataclass
class AttachReport:
    """What ``attach`` inserted: one row per insertion (``kind``, ``module`` name, ``where`` it sits, channels,
    stage and block (0-based; -1 outside blocks), added parameters), the blocks per stage, the rules that found
    the blocks and notes on what was read but not used."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    blocks_per_stage: list[int] = field(default_factory=list)
    identity: bool = False
    block_kinds: dict[str, int] = field(default_factory=dict)
    dry_run_size: int = 0
    notes: list[str] = field(default_factory=list)

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
        found = ", ".join(f"{k} {n}" for k, n in self.block_kinds.items())
        return (f"attached {what}: {self.added_params:,} parameters; stages (blocks each): "
                f"{self.blocks_per_stage} ({found}; dry pass {self.dry_run_size} px); identity at insertion: "
                f"{self.identity}")




# --- attach ---

#: functions called with the network after every successful ``attach`` (convattn.models.timm_models adds the one
#: that records the network's recipe for timm's ``save_for_hf``: convattn.models.hub.record_recipe)
AFTER_ATTACH: list[Callable[[nn.Module], None]] = []


def attach(model: nn.Module, attn: str | None = None, conv: str | None = None, *, where: Where = None,
           identity: bool = False, attn_kwargs: dict[str, Any] | None = None,
           conv_kwargs: dict[str, Any] | None = None, dry_run_size: int | None = None,
           gct_placement: str = "every_conv", aw_convs: str = "kxk") -> nn.Module:
    """Insert convattn modules into ``model`` in place and return it; ``model.convattn_report`` says what went where.

    Args:
        model: Any CNN (an eager ``nn.Module``); its blocks and stages are read off one dry forward pass.
        attn: Registered attention name(s) joined with ``+`` (``"se"``, ``"steam"``, ``"gct"``, ``"se+gct"``).
        conv: ``"aw"`` replaces k x k convolutions (k > 1) by AWConv2d with the same weights.
        where: Which blocks (or convs) get modules: None (each module's default placement, e.g. STEAM's
            ``stage_ends``), ``"all"``, a placement rule name, ``{stage: [block indices] | "all"}`` (stages from
            1), a list of stages, or ``callable(name, module) -> bool`` (called with blocks for block-output
            modules and with convolutions for GCT and AW).
        identity: Start as the original network's function (see the module docstring).
        attn_kwargs / conv_kwargs: Options of the attention modules / of AWConv2d; a list with one value per stage
            is taken per stage (e.g. ECA ``{"kernel_size": [3, 5, 5, 7]}``).
        dry_run_size: Input side of the dry pass (default: from the model, see :func:`network_pass`).
        gct_placement: ``"every_conv"`` (GCT before every convolution, the official placement) or
            ``"per_block"`` (before the first convolution of each block only).
        aw_convs: ``"kxk"`` (alias ``"3x3"``: kernels larger than 1 x 1) or ``"all"`` (also the 1 x 1
            convolutions inside blocks).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"attach: model must be an nn.Module, got {type(model).__name__}")
    if conv is not None and (not isinstance(conv, str) or conv not in ("", "none", "aw")):
        raise ValueError(f"Unknown conv {conv!r}. Valid: None or 'aw' (AWConv2d)")
    conv = "aw" if conv == "aw" else None
    if conv_kwargs and conv != "aw":  # checked before anything is changed
        raise ValueError("attach: conv_kwargs configure AW-convolution; pass conv='aw' too")
    for name, val in (("attn_kwargs", attn_kwargs), ("conv_kwargs", conv_kwargs)):
        if val is not None and not isinstance(val, dict):
            raise ValueError(f"attach: {name} must be a dict of options, got {val!r}")
    if gct_placement not in ("every_conv", "per_block"):
        raise ValueError(f"attach: gct_placement must be 'every_conv' or 'per_block', got {gct_placement!r}")
    aw_convs = {"3x3": "kxk"}.get(aw_convs, aw_convs)
    if aw_convs not in ("kxk", "all"):
        raise ValueError(f"attach: aw_convs must be 'kxk' (alias '3x3') or 'all', got {aw_convs!r}")
    if isinstance(where, float) or isinstance(where, bool):
        raise ValueError(f"attach where must be None, 'all', a rule name, {{stage: [blocks]}}, a list of stages or a "
                         f"callable(name, module) -> bool; got {where!r}")
    out_parts, pre_parts = split_parts(attn)
    attn_kwargs = dict(attn_kwargs or {})
    if not (out_parts or pre_parts or conv):
        if attn_kwargs:
            raise ValueError("attach: attn_kwargs given without an attention (attn=...)")
        model.convattn_report = AttachReport(identity=identity)
        return model
    if isinstance(where, str) and where != "all":
        resolve_placement(where)  # unknown rule names fail before the dry pass

    p, blocks, counts, notes = network_pass(model, dry_run_size)
    num_stages = len(counts)
    finest = min((b.reduction for b in blocks), default=1)
    report = AttachReport(blocks_per_stage=counts, identity=identity, dry_run_size=p.size, notes=notes,
                          block_kinds={k: sum(1 for b in blocks if b.kind == k) for k in dict.fromkeys(b.kind for b in blocks)})
    dd = dict(device=_device(model), dtype=_dtype(model))
    plan: list[tuple[str, Any, nn.Module, dict[str, Any]]] = []  # (kind, target or conv name, module, row)
    check_where(where, counts)

    def part(what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ValueError, TypeError) as e:  # a bad option is a TypeError (unexpected keyword): kept as such
            raise type(e)(f"attach: {what} cannot be inserted ({e}); the model was left unchanged") from e

    if out_parts:
        name = "+".join(out_parts)
        spec = get_attn_spec(out_parts[0])
        rule = spec.placement if len(out_parts) == 1 else "all"
        for b in select_blocks(blocks, counts, where, rule):
            if has_attn(b.target):
                raise ValueError(f"attach: {b.target_name} already has an attention attached (or a child named "
                                 "'attn'); attach each kind once")
            site = Site("output", b.channels, b.reduction, b.stage, b.index, tuple(counts), finest)
            kw = per_stage(attn_kwargs, b.stage, num_stages, name)
            for prt in out_parts:
                kw = configured(prt, site, kw)
            if len(out_parts) == 1 and spec.inplace_ok and not identity and b.consumers == 1 and b.kind != "stage":
                kw.setdefault("inplace", True)  # the branch output is a temporary: gate it in place in inference

            def build(kw=kw, b=b) -> nn.Module:
                m = create_attn(name, b.channels, **kw).to(**dd)
                return ResidualScale(m).to(**dd) if identity else m
            m = part(f"{name} at {b.target_name}", build)
            plan.append(("output", b.target, m, dict(kind="output", module=name, where=f"{b.target_name}.attn",
                                                     channels=b.channels, stage=b.stage, block=b.index,
                                                     params=param_count(m))))
    chosen_blocks = None
    if isinstance(where, (dict, list, tuple)):
        chosen_blocks = {id(b) for b in select_blocks(blocks, counts, where, "all")}

    def conv_selected(s: ConvSite) -> bool:
        if callable(where) and not isinstance(where, str) and not where(s.name, s.conv):
            return False
        return chosen_blocks is None or (s.block is not None and id(s.block) in chosen_blocks)

    sites = conv_sites(p, blocks)
    if pre_parts:
        kw_all = attn_kwargs if not out_parts else {}
        for s in sites:
            if not conv_selected(s) or (gct_placement == "per_block" and not s.first_in_block):
                continue
            if has_attn(s.conv):
                raise ValueError(f"attach: {s.name} already has an attention attached; attach each kind once")
            stage = s.block.stage if s.block is not None else -1
            site = Site("pre_conv", s.conv.in_channels, p.reduction((1, 1, *s.in_hw)), stage,
                        s.block.index if s.block is not None else -1, tuple(counts), finest)
            kw = configured(pre_parts[0], site, per_stage(kw_all, max(stage, 0), num_stages, pre_parts[0]))
            m = part(f"{pre_parts[0]} before {s.name}",
                     lambda kw=kw, s=s: create_attn(pre_parts[0], s.conv.in_channels, **kw).to(**dd))
            plan.append(("pre_conv", s.conv, m, dict(kind="pre_conv", module=pre_parts[0], where=f"{s.name}.attn",
                                                     channels=s.conv.in_channels, stage=-1, block=-1,
                                                     params=param_count(m))))
    if conv == "aw":
        if any(isinstance(m, AWConv2d) for m in model.modules()):
            raise ValueError(f"attach: {type(model).__name__} already has AW-convolutions; attach conv='aw' once")
        has_blocks = any(b.kind != "stage" for b in blocks)
        first_conv = sites[0].conv if sites else None
        ckw = dict(conv_kwargs or {})
        for s in sites:
            kmin = 1 if aw_convs == "all" else 2
            if max(s.conv.kernel_size) < kmin or not conv_selected(s):
                continue
            if has_blocks and not s.in_block or (not has_blocks and s.conv is first_conv):
                continue  # the stem (and layers outside blocks) stay plain
            if has_attn(s.conv):
                raise ValueError(f"attach: {s.name} already has a pre-convolution attention from an earlier attach; "
                                 "attach conv='aw' before it, or both in one call (attn='gct', conv='aw')")
            site = Site("conv", s.conv.out_channels, p.reduction((1, 1, *s.in_hw)), -1, -1, tuple(counts), finest)
            kw = configured("aw", site, ckw)
            modes = (kw.pop("mode"),) if "mode" in kw else default_aw_modes(finest)
            aw = part(f"aw at {s.name}", lambda kw=kw, s=s, modes=modes: equivalent_aw(s, kw, modes))
            plan.append(("conv", s.name, aw, dict(kind="conv", module="aw", where=s.name, channels=s.conv.out_channels,
                                                  stage=-1, block=-1, params=param_count(aw, [aw.weight] + (
                                                      [aw.bias] if aw.bias is not None else [])))))
    if not plan:
        raise ValueError(f"attach: nothing was inserted into {type(model).__name__} (where={where!r} selected no "
                         f"block or convolution; stages have {counts} blocks)")
    frozen = [t for k, t, _, _ in plan if k == "conv" and not model.get_submodule(t).weight.requires_grad]
    if frozen:
        report.notes.append(f"{len(frozen)} replaced convolution(s) had frozen weights (e.g. {frozen[0]}): their "
                            "weights stay frozen; the AW generators added to them are trainable")
    _apply(model, plan)
    report.rows = [row for *_, row in plan]
    model.convattn_report = report
    # what was asked, for a rebuild (AttachPlan.recorded: checkpoints and shared folders record it)
    model.convattn_attach_calls = [*getattr(model, "convattn_attach_calls", []), dict(
        attn="+".join(out_parts + pre_parts), conv=conv, where=where, identity=identity,
        attn_kwargs=dict(attn_kwargs), conv_kwargs=dict(conv_kwargs or {}), gct_placement=gct_placement,
        aw_convs=aw_convs, dry_run_size=p.size)]
    for hook in AFTER_ATTACH:
        hook(model)
    return model


def _apply(model: nn.Module, plan: list[tuple[str, Any, nn.Module, dict[str, Any]]]) -> None:
    """Change the network (nothing here can fail for a plan that was built)."""
    gct_of: dict[int, nn.Module] = {}
    for kind, target, m, _ in plan:
        if kind == "pre_conv":
            gct_of[id(target)] = m
    for kind, target, m, row in plan:
        host = model.get_submodule(target) if kind == "conv" else target
        m.train(host.training)  # an inserted module takes its host's mode (a network in eval stays in eval)
        if kind == "output":
            attach_child(target, m, ThenAttn)
        elif kind == "conv":
            old = host
            for name in ("weight", "bias"):  # a frozen convolution stays frozen (its new generator trains)
                p_old, p_new = getattr(old, name, None), getattr(m, name, None)
                if isinstance(p_old, nn.Parameter) and isinstance(p_new, nn.Parameter):
                    p_new.requires_grad_(p_old.requires_grad)
            pre = gct_of.pop(id(old), None)
            if pre is not None:  # GCT in front of a convolution that AW replaces: it stays in front
                attach_child(m, pre, AttnThen)
            parent_name, _, leaf = target.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, leaf, m)
    for kind, target, m, _ in plan:
        if kind == "pre_conv" and id(target) in gct_of:
            attach_child(target, m, AttnThen)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    p = next((p for p in model.parameters() if p.is_floating_point()), None)
    return p.dtype if p is not None else torch.float32
