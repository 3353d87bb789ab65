"""Loading weights into convattn models, with a report of what matched.

A load is *complete* when every tensor of the plain network is loaded; the only tensors allowed to stay at their
initialisation are those ``attach`` added (:func:`added_keys`: attention modules and AW's generator) and a
classifier head whose class count differs from the file's (:func:`classifier_names`). Anything less is another
network's weights (a ResNet-50 file shares 97 of 122 names with a ResNet-18) and is refused unless the caller
asks for a partial load (``allow_partial=True``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import torch
from torch import nn

__all__ = ["LoadReport", "load_pretrained", "added_keys", "classifier_names", "upgrade_keys"]


@dataclass
class LoadReport:
    """What a non-strict load did: keys loaded, keys the model has that the file lacks, and the reverse."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    zeroed_head: list[str] = field(default_factory=list)  # head tensors zeroed after the load (fine-tuning)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; {len(self.missing)} new in the model (kept at init); "
                 f"{len(self.unexpected)} in the file but not in the model; {len(self.shape_mismatch)} shape mismatches"]
        for title, keys in (("new", self.missing), ("unused", self.unexpected), ("shape mismatch", self.shape_mismatch)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")
                lines.append(f"  {title}: {shown}")
        return "\n".join(lines)


def upgrade_keys(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with the keys of older convattn versions renamed to ``model``'s (documented key maps: see
    ``convattn.models.resnet.upgrade_state_dict``); every other key unchanged."""
    from .resnet import ResNet, upgrade_state_dict
    out = dict(state_dict)
    for prefix, m in model.named_modules():
        if isinstance(m, ResNet):
            pre = f"{prefix}." if prefix else ""
            mine = {k[len(pre):]: v for k, v in out.items() if k.startswith(pre)}
            if mine:
                out = {**{k: v for k, v in out.items() if not k.startswith(pre)},
                       **{pre + k: v for k, v in upgrade_state_dict(mine, m.block).items()}}
    return out


def added_keys(model: nn.Module) -> set[str]:
    """The state-dict keys of ``model`` that convattn added, i.e. that the plain network does not have: every
    tensor under the ``attn`` child that ``attach`` gave a module (its attached classes, so a network's own ``attn``
    submodules, e.g. a ViT's, are not counted) or of a convattn attention module (``AttentionModule``: SE, CBAM,
    ECA, GCT, STEAM, ...), and every tensor of an AW-convolution but the ``weight`` and ``bias`` of the convolution
    it replaced (its generator ``pw1``/``pw2``). Read off the modules, so it also holds for a submodule of an
    attached network (e.g. a detector's backbone body)."""
    from ..layers import AttentionModule, AWConv2d
    from .attach import AttnThen, ThenAttn
    prefixes, kept = [], set()
    for name, m in model.named_modules():
        pre = f"{name}." if name else ""
        if isinstance(m, (ThenAttn, AttnThen)):
            prefixes.append(f"{pre}attn.")
        if isinstance(m, AttentionModule):  # AWConv2d is one too: its own weight and bias are the plain conv's
            prefixes.append(pre)
            if isinstance(m, AWConv2d):
                kept |= {f"{pre}weight", f"{pre}bias"}
    return {k for k in model.state_dict() if k not in kept and any(k.startswith(p) for p in prefixes)}


def classifier_names(model: nn.Module) -> list[str]:
    """Module names of ``model``'s classifier head (an ``nn.Identity`` when built with ``num_classes=0``): the
    names ``create_backbone`` recorded for torchvision networks (``convattn_classifier``), else timm's
    ``pretrained_cfg["classifier"]``, else the module ``get_classifier()`` returns, else the last ``nn.Linear``
    outside attached modules; [] when the model has none of these (e.g. a feature extractor)."""
    modules = dict(model.named_modules())
    declared = getattr(model, "convattn_classifier", None)
    if declared is None:
        cfg = getattr(model, "pretrained_cfg", None)
        declared = cfg.get("classifier") if isinstance(cfg, dict) else None
    if declared:
        names = [declared] if isinstance(declared, str) else list(declared)
        names = [n for n in names if n in modules]
        if names:
            return names
    if callable(getattr(model, "get_classifier", None)):
        try:
            head = model.get_classifier()
        except Exception:  # noqa: BLE001 - a get_classifier of another convention: fall back to the last Linear
            head = None
        name = next((n for n, m in modules.items() if n and m is head), None)
        if name:
            return [name]
    inside = {k.rsplit(".", 1)[0] for k in added_keys(model)}  # modules holding added tensors (an SE's Linear)
    linears = [n for n, m in modules.items() if n and isinstance(m, nn.Linear) and n not in inside]
    return linears[-1:]


def _shown(keys: Iterable[str], n: int = 4) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")


def _attention_of(model: nn.Module, modules: dict[str, nn.Module], key: str) -> bool:
    """``key`` of a file is a tensor convattn would have added to a module ``model`` has (an attention ``attn``
    under a module whose ``attn`` is absent, an ``nn.Identity`` or convattn's, or AW's generator of a convolution):
    a file of an attached network loaded into the plain one, or into one with another attention."""
    from ..layers import AttentionModule
    from .attach import AttnThen, ThenAttn
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        owner = modules.get(".".join(parts[:i]))
        if owner is None:
            return False
        if part == "attn" and (isinstance(owner, (ThenAttn, AttnThen))
                               or isinstance(getattr(owner, "attn", None), (type(None), nn.Identity, AttentionModule))):
            return True
        if part in ("pw1", "pw2") and isinstance(owner, nn.Conv2d):
            return True
    return False


def _partial(model: nn.Module, own: Mapping[str, torch.Tensor], state_dict: Mapping[str, torch.Tensor],
             loaded: set[str]) -> tuple[list[str], list[str]]:
    """(tensors of the plain network that would not be loaded, tensors of the file that would not be used), each
    without what a complete load may leave out: tensors ``attach`` added, the head when its class count differs
    (or the model has none: ``num_classes=0``), and BatchNorm's ``num_batches_tracked`` counters."""
    added = added_keys(model)
    heads = tuple(f"{n}." for n in classifier_names(model))
    modules = dict(model.named_modules())

    def counter(k: str) -> bool:
        return k.rsplit(".", 1)[-1] == "num_batches_tracked"

    def in_head(k: str) -> bool:
        return bool(heads) and k.startswith(heads)

    not_loaded = [k for k in own if k not in loaded and k not in added and not counter(k)
                  and not (in_head(k) and k in state_dict)]  # a head of another shape; a head absent is partial
    unused = [k for k in state_dict if k not in loaded and k not in added and not counter(k) and not in_head(k)
              and not _attention_of(model, modules, k)]
    return not_loaded, unused


def _check_values(state_dict: Any, source: str) -> None:
    """``state_dict`` maps names (str) to tensors, or a one-line ValueError names the first key that does not."""
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"{source} must be a mapping of tensor names to tensors, got a {type(state_dict).__name__} "
                         "(e.g. model.state_dict() or safetensors.torch.load_file(path))")
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise ValueError(f"{source}: keys must be tensor names (str), got {k!r} ({type(k).__name__})")
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{source}: {k} is a {type(v).__name__}, not a tensor; a state dict maps names to "
                             "tensors (e.g. model.state_dict() or safetensors.torch.load_file(path))")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_loaded(to_load: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse, naming the first tensor and counting the others: integer (or bool) values for a floating-point tensor
    of the model (quantized weights without their scales would be cast to float unscaled), and NaN/inf values (a
    damaged file, or weights of a run that diverged), which would only show as a loss of nan after training starts."""
    order = [k for k in own if k in to_load]  # the model's order: the first layer first
    ints = [k for k in order if own[k].is_floating_point() and not to_load[k].is_floating_point()
            and not to_load[k].is_complex()]
    if ints:
        k = ints[0]
        more = f" (and {len(ints) - 1} more integer tensors)" if len(ints) > 1 else ""
        raise ValueError(f"{source}: {k} is {_dtype_name(to_load[k].dtype)}{more} where the model's tensor is "
                         f"{_dtype_name(own[k].dtype)}: integer weights without their scales (quantized?) would be "
                         "cast to float unscaled; give floating-point weights (dequantize them first)")
    bad = []
    for k in order:
        v = to_load[k]
        if v.is_floating_point() and not v.is_meta:
            n = int((~torch.isfinite(v)).sum())
            if n:
                bad.append((k, n, v.numel()))
    if bad:
        k, n, total = bad[0]
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise ValueError(f"{source}: {k} holds {n} non-finite value{'s' if n > 1 else ''} (NaN or inf) of {total}"
                         f"{more}; the file is damaged or the run that wrote it diverged: give weights with finite "
                         "values")


def load_pretrained(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = False, *,
                    allow_partial: bool = False, source: str = "the state dict",
                    partial_option: str = "allow_partial=True") -> LoadReport:
    """Load ``state_dict`` (e.g. a torchvision ResNet's) into ``model`` and report what matched.

    The load must be complete for the plain network (see the module docstring): tensors ``attach`` added stay at
    their initialisation, and a classifier head whose shape differs (another class count) is skipped; any other
    tensor of the network the file does not provide, or any tensor of the file the network does not use, raises a
    ValueError with the report, unless ``allow_partial=True`` (then whatever matches is loaded and reported).
    ``strict=True`` raises for any missing, unexpected or mismatched key. Nothing is loaded when it raises.
    ``source`` names the weights and ``partial_option`` the option that allows a partial load, in messages.
    ``state_dict`` may also be the path of a shared model folder (``convattn.save_pretrained``, timm's
    ``save_for_hf``): its weights are loaded.
    """
    if isinstance(state_dict, str) or hasattr(state_dict, "__fspath__"):  # a shared folder (convattn.models.hub)
        from .hub import folder_state_dict
        source = f"the shared folder {state_dict}" if source == "the state dict" else source
        state_dict = folder_state_dict(state_dict)
    _check_values(state_dict, source)
    state_dict = upgrade_keys(model, state_dict)  # keys of older convattn versions
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for k, v in state_dict.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape != v.shape:
            report.shape_mismatch.append(f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})")
        else:
            to_load[k] = v
            report.loaded.append(k)
    report.missing = [k for k in own if k not in state_dict]
    if strict and (report.missing or report.unexpected or report.shape_mismatch):
        raise ValueError("state dict does not match the model:\n" + report.summary())
    _check_loaded(to_load, own, source)
    if not to_load and state_dict and own:
        raise ValueError(f"no tensor of {source} matches the model's names and shapes; is it a state dict of this "
                         f"network?\n{report.summary()}")
    if not allow_partial:
        not_loaded, unused = _partial(model, own, state_dict, set(to_load))
        if not_loaded or unused:
            what = "; ".join(
                ([f"{len(not_loaded)} tensors of the network would stay at their initialisation ({_shown(not_loaded, 2)})"]
                 if not_loaded else [])
                + ([f"{len(unused)} tensors of the file would be left unused ({_shown(unused, 2)})"] if unused else []))
            raise ValueError(
                f"{source} holds another network's weights, or only part of them: {what}. Only new attention "
                f"parameters and a classifier head of another class count may be left out; to load just the matching "
                f"tensors, pass {partial_option}.\n{report.summary()}")
    model.load_state_dict(to_load, strict=False)
    return report
