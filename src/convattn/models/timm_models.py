"""convattn's ResNets as first-class timm models: ``timm.create_model("convattn_resnet50", attn="cbam")``.

Each model is built through timm's ``build_model_with_cfg`` with a ``pretrained_cfg`` of its own (input size,
interpolation, crop, mean/std, first conv, classifier), so timm's machinery applies as to timm's own models:
``timm.data.resolve_data_config`` (32 x 32 for the CIFAR ResNets), ``features_only=True`` / ``out_indices``,
``reset_classifier``, ``drop_path_rate``, ``set_grad_checkpointing``, ``group_matcher`` (layer decay), and local
weights through ``pretrained`` set with ``pretrained_cfg_overlay=dict(file="weights.pth")``. Nothing is
downloaded: these configs name no URL or hub id, and ``pretrained`` without a file is refused.

``convattn_attached`` rebuilds any network convattn built or attached to from its recipe (the base network, its
arguments and the attach specs: :mod:`convattn.models.hub`), so that ``timm.create_model("local-dir:DIR",
pretrained=True)`` (or ``"hf-hub:ID"``) loads a folder written by timm's ``save_for_hf`` or by
``convattn.save_pretrained``; a folder's weights must be exactly its network's (strict, one-line error).
"""
from __future__ import annotations

import contextlib
import inspect
import sys
from typing import Any, Callable

import torch

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, is_model
from timm.models import register_model as timm_register_model
from torch import nn

from .attach import AFTER_ATTACH
from .build import build_model
from .hub import (ATTACHED, CURRENT_KEYS, RECIPE_KEYS, WeightsMismatch, check_base, check_weights_file, parse_recipe,
                  record_recipe, resolve_module_base)
from .plan import AttachPlan
from .registry import CIFAR_MODELS as _CIFAR, IMAGENET_MODELS as _IMAGENET, model_entrypoint, parse_variant

__all__ = ["default_cfgs", "register_all", "timm_name", "NAMED_VARIANTS", "CIFAR_MEAN", "CIFAR_STD", "build_base",
           "rebuild", "convattn_attached"]

# CIFAR-10 training-set channel statistics (the usual values for the CIFAR ResNets)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)



def _cfg(cifar: bool) -> dict[str, Any]:
    if cifar:
        return dict(url="", num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                    interpolation="bilinear", mean=CIFAR_MEAN, std=CIFAR_STD, first_conv="conv1", classifier="fc",
                    license="apache-2.0")
    return dict(url="", num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
                interpolation="bilinear", mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD, first_conv="conv1",
                classifier="fc", license="apache-2.0")


# Named variants registered as models of their own (``convattn_resnet50_cbam_aw``), as timm names
# ``seresnet50`` / ``ecaresnet50d``: the variants the papers compare, plus Coordinate Attention.
NAMED_VARIANTS = ("se", "cbam", "eca", "gct", "steam", "coord", "aw", "se+aw", "cbam+aw")


def timm_name(name: str, variant: str | None = None) -> str:
    """timm model name of a convattn ResNet and variant: ``("resnet50", "se+aw")`` -> ``"convattn_resnet50_se_aw"``."""
    name_ = AttachPlan.parse(variant).name
    suffix = "" if name_ == "none" else "_" + name_.replace("+", "_").replace("@", "_")
    return f"convattn_{name}{suffix}"


def _entries() -> list[tuple[str, str, str | None]]:
    """(timm name, convattn model name, variant) of every registered entry."""
    return [(timm_name(n, v), n, v) for n in _IMAGENET + _CIFAR for v in (None, *NAMED_VARIANTS)]


default_cfgs = generate_default_cfgs({entry: _cfg(n in _CIFAR) for entry, n, _ in _entries()})


def _weights_source(entry: str, pretrained: bool, kwargs: dict[str, Any]) -> str | None:
    """Where ``pretrained`` weights come from: ``"folder"`` (a shared folder, ``timm.create_model("local-dir:DIR")``
    or ``"hf-hub:ID"``, whose config.json describes this very network), ``"file"`` (``pretrained_cfg_overlay=
    dict(file=...)``, e.g. a plain network's weights) or None (no weights); ``pretrained`` without a source is
    refused (convattn's own configs name no URL or hub id)."""
    if not pretrained:
        return None
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg if isinstance(cfg, dict) else {}
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    if cfg.get("source") in ("local-dir", "hf-hub") and not overlay.get("file"):
        if cfg.get("source") == "local-dir" and cfg.get("file"):
            check_weights_file(cfg["file"])  # a missing or truncated file: one line, before anything is built
        return "folder"
    if overlay.get("file") or cfg.get("file"):
        return "file"
    raise ValueError(f"{entry} has no downloadable weights (convattn never downloads): pass "
                     "pretrained_cfg_overlay=dict(file='weights.pth') together with pretrained, load a shared folder "
                     "(timm.create_model('local-dir:DIR', pretrained=True)), or leave pretrained off")


def _folder_weights_check(kwargs: dict[str, Any]) -> Callable[[dict[str, torch.Tensor], nn.Module],
                                                               dict[str, torch.Tensor]]:
    """timm's ``pretrained_filter_fn`` for a shared folder: the weights must be exactly the network's (a head of
    another class count, or a first convolution of other input channels, is adapted by timm); otherwise one line,
    and nothing is returned half-built."""
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg or {})
    where = cfg.get("file") or cfg.get("hf_hub_id") or "the shared folder"

    def check(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        own = model.state_dict()
        heads = cfg.get("classifier") or ()
        heads = (heads,) if isinstance(heads, str) else tuple(heads)
        excused = set()
        if getattr(model, "num_classes", cfg.get("num_classes")) != cfg.get("num_classes"):
            excused |= {f"{h}.{t}" for h in heads for t in ("weight", "bias")}
        first = cfg.get("first_conv")
        for f in ((first,) if isinstance(first, str) else tuple(first or ())):
            excused.add(f"{f}.weight")  # adapted to other input channels by timm
        missing = [k for k in own if k not in state_dict and k not in excused]
        unexpected = [k for k in state_dict if k not in own]
        shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state_dict and k not in excused and state_dict[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            parts = [f"{len(v)} {what} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})" for what, v in
                     (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)) if v]
            raise WeightsMismatch(str(where), "; ".join(parts))
        return state_dict
    return check


def _build(name: str, pretrained: bool, fixed: str | None = None, **kwargs: Any) -> nn.Module:
    entry = timm_name(name, fixed)
    source = _weights_source(entry, pretrained, kwargs)
    if source == "folder":  # a whole network saved with its config: every tensor, strictly
        kwargs.setdefault("pretrained_filter_fn", _folder_weights_check(kwargs))
    else:
        kwargs.pop("cache_dir", None)
    variant = kwargs.pop("variant", None)
    if fixed is not None:
        given = {k: kwargs[k] for k in ("attn", "conv") if kwargs.get(k) is not None}
        if given or variant is not None:
            raise ValueError(f"{entry} is the {fixed!r} variant; to choose attention yourself, build "
                             f"convattn_{name} with attn=/conv=/variant= instead")
        variant = fixed
    if variant is not None:
        kwargs.update(parse_variant(variant))
    n_stages = 3 if name in _CIFAR else 4
    plain = not (kwargs.get("attn") or kwargs.get("conv"))  # a plain file into an attention variant: new keys
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)  # timm's factory arguments
    # the caller's feature_cfg (timm's tests pass feature_cls="fx") over ours: the stem and every stage by default
    feature_cfg = {"out_indices": tuple(range(n_stages + 1)), **(kwargs.pop("feature_cfg", None) or {})}
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(model_entrypoint(name), entry, pretrained,
                                     pretrained_strict=plain or source == "folder", feature_cfg=feature_cfg, **kwargs)
    # timm's factory records this entry's own arguments (config.json model_args) next: drop the recipe build_model
    # recorded for the convattn_attached entry, so the two do not mix
    model.__dict__.pop("_model_args", None)
    return model.to(dtype=dtype) if dtype is not None else model


# --- networks convattn built or attached to, rebuilt from their recipe (config.json model_args) ---

default_cfgs.update(generate_default_cfgs({ATTACHED: dict(_cfg(False), first_conv=None, classifier=None,
                                                          license=None, pool_size=None)}))


def build_base(base: str, base_args: dict[str, Any], plan: AttachPlan | None = None, source: str = "recipe",
               **current: Any) -> nn.Module:
    """The base network of a recipe (:mod:`convattn.models.hub`) built with ``base_args`` and ``current`` (the
    network's current ``num_classes``/``in_chans``/``global_pool`` and the caller's options, which take
    precedence), with ``plan`` attached; a base that is not installed is a one-line ValueError."""
    check_base(base, source)
    lib, _, rest = base.partition(":")
    if lib == "module":
        cls = resolve_module_base(base, source)
        params = inspect.signature(cls.__init__).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        args = dict(base_args)
        for k, v in current.items():
            if k in params or takes_any:
                args[k] = v
            elif k not in CURRENT_KEYS:
                raise ValueError(f"{source}: base {base} takes no option {k!r}")
        try:
            model = cls(**args)
        except TypeError as e:
            raise ValueError(f"{source}: base {base} cannot be built with {args}: {e}") from None
        for k in ("num_classes", "in_chans"):
            have = getattr(model, k, None)
            if k in current and k not in args and have is not None and have != current[k]:
                raise ValueError(f"{source}: base {base} was built with {k}={have}, but {current[k]} was asked; "
                                 f"its constructor takes no {k}")
        model.convattn_base = {"base": base, "base_args": dict(base_args)}
        return build_model(model, plan)
    args = {**base_args, **current}
    if lib == "torchvision":
        args.pop("global_pool", None)  # timm's, recorded by timm's writer; torchvision networks pool on average
        import torchvision
        if rest not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"{source}: base {base} is not a model of the installed torchvision "
                             f"{torchvision.__version__}; install the torchvision release that has it")
    elif lib == "timm":
        import timm
        if not timm.is_model(rest):
            raise ValueError(f"{source}: base {base} is not a model of the installed timm {timm.__version__}; "
                             "install the timm release that has it")
    model = build_model(base, plan, **args)
    # build_model recorded the arguments given now; the recipe keeps the base's own (current ones are timm's)
    model.convattn_base = {"base": base, "base_args": dict(base_args)}
    return model


def rebuild(base: str, base_args: dict[str, Any], plans: list[AttachPlan], source: str = "recipe",
            **current: Any) -> nn.Module:
    """The network of a recipe: the base (:func:`build_base`), then each plan attached in order."""
    model = build_base(base, base_args, plans[0] if plans else None, source, **current)
    for plan in plans[1:]:
        plan.apply(model)
    record_recipe(model)
    return model


def _build_attached(pretrained: bool, **kwargs: Any) -> nn.Module:
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg if isinstance(cfg, dict) else {}
    where = str(cfg.get("file") or cfg.get("hf_hub_id") or ATTACHED)
    source = _weights_source(ATTACHED, pretrained, kwargs)
    recipe = {k: kwargs.pop(k) for k in RECIPE_KEYS if k in kwargs}
    base, base_args, plans = parse_recipe(recipe, f"{where} (config.json model_args)")
    if source == "folder":
        kwargs.setdefault("pretrained_filter_fn", _folder_weights_check(kwargs))
    else:
        kwargs.pop("cache_dir", None)
    device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)

    def make(**current: Any) -> nn.Module:
        return rebuild(base, base_args, plans, f"{where} (config.json model_args)", **current)

    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = build_model_with_cfg(make, ATTACHED, pretrained, pretrained_strict=True, **kwargs)
    model.__dict__.pop("_model_args", None)  # timm's factory records the recipe it was given next
    return model.to(dtype=dtype) if dtype is not None else model


def convattn_attached(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """A network convattn built or attached to, rebuilt from its recipe: ``base`` (a convattn name,
    ``"timm:<name>"``, ``"torchvision:<name>"`` or ``"module:<path>:<Class>"``), ``base_args`` and ``attach`` (the
    attach specs, in order). What ``timm.create_model("local-dir:DIR", pretrained=True)`` calls for a folder
    written by ``convattn.save_pretrained`` or by timm's ``save_for_hf`` on such a network."""
    return _build_attached(pretrained, **kwargs)


def register_all() -> list[str]:
    """Register ``convattn_<name>`` for every convattn ResNet, and ``convattn_<name>_<variant>`` for each of
    ``NAMED_VARIANTS`` (idempotent)."""
    mod = sys.modules[__name__]
    names = []
    for entry, name, variant in _entries():
        if not hasattr(mod, entry):
            def fn(pretrained: bool = False, _name: str = name, _variant: str | None = variant,
                   **kwargs: Any) -> nn.Module:
                return _build(_name, pretrained, _variant, **kwargs)

            fn.__name__ = fn.__qualname__ = entry
            fn.__module__ = __name__
            fn.__doc__ = (f"convattn {name} with {variant!r}." if variant else
                          f"convattn {name} (any attention variant: attn=..., conv=..., variant=...).")
            setattr(mod, entry, timm_register_model(fn))
        names.append(entry)
    if not is_model(ATTACHED):
        timm_register_model(convattn_attached)
    if record_recipe not in AFTER_ATTACH:  # every attach keeps timm's config of the network in step
        AFTER_ATTACH.append(record_recipe)
    return names + [ATTACHED]
