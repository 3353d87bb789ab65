"""Shared folders in timm's / Hugging Face's format: the recipe a network records, and reading a folder back.

A shared folder holds ``config.json`` (timm's: ``architecture``, ``num_classes``, ``model_args``,
``pretrained_cfg``), ``model.safetensors`` and a model card (``README.md``). For a network convattn built or
attached to, ``architecture`` is ``convattn_attached`` and ``model_args`` holds its *recipe*:

* ``base``: the plain network: a convattn name (``"resnet50"``), ``"timm:<name>"``, ``"torchvision:<name>"`` or
  ``"module:<import.path>:<ClassName>"`` (a user's ``nn.Module`` subclass);
* ``base_args``: the keyword arguments it is built with;
* ``attach``: the attach specs (:meth:`AttachPlan.to_dict`), applied in order;

and timm adds the network's current ``num_classes``, ``in_chans`` and ``global_pool`` beside them.

:func:`record_recipe` runs after every ``attach`` and at the end of ``build_model``: it keeps a network's
``pretrained_cfg`` (architecture ``convattn_attached``) and ``_model_args`` (what timm's ``save_for_hf`` writes
as ``model_args``) in step with what was attached, so timm's own ``save_for_hf`` / ``push_to_hf_hub`` write a
folder that rebuilds. The ``convattn_attached`` entrypoint (:mod:`convattn.models.timm_models`) reads it back;
``convattn.sharing.save_pretrained`` writes the same folder for networks without a timm config.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .plan import AttachPlan

__all__ = ["ATTACHED", "RECIPE_KEYS", "CURRENT_KEYS", "WEIGHT_FILES", "check_base", "resolve_module_base",
           "module_base_name", "recipe_of", "record_recipe", "parse_recipe", "read_config", "weights_file",
           "check_weights_file", "folder_state_dict", "is_shared_folder", "NotRecordable", "WeightsMismatch"]

#: timm architecture of a network convattn built or attached to (registered by convattn.models.timm_models)
ATTACHED = "convattn_attached"
#: the recipe's keys in ``model_args``
RECIPE_KEYS = ("base", "base_args", "attach")
#: ``model_args`` timm writes itself from the network as it is (``timm.models._input.get_model_args``)
CURRENT_KEYS = ("num_classes", "in_chans", "global_pool")
#: weight files of a folder, in timm's order of preference (``load_state_dict_from_path``)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")

# arguments timm's factory records that are not the network's (sources, runtime placement)
_NOT_BASE_ARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "pretrained_model_args", "cache_dir", "device", "dtype",
                  "checkpoint_path", "features_only", "out_indices", "feature_cls", "feature_cfg")


class WeightsMismatch(ValueError):
    """A folder's weights are not those of the network its config.json describes; ``detail`` says how."""

    def __init__(self, where: str, detail: str) -> None:
        super().__init__(f"{where}: the weights do not match the network its config.json describes: {detail}; were "
                         "model.safetensors and config.json written together?")
        self.detail = detail


class NotRecordable:
    """Stands in ``_model_args["attach"]`` for a plan a saved spec cannot hold (``where=`` a Python callable):
    timm's ``save_for_hf`` then refuses to write the folder instead of writing one that rebuilds another network."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"NotRecordable({self.reason!r})"


# --- the base network ---

def _convattn_networks() -> tuple[str, ...]:
    from .networks import CONVATTN_NETWORKS
    return CONVATTN_NETWORKS


def check_base(base: Any, source: str = "recipe") -> str:
    """``base`` if it names a network in one of the four forms (see the module docstring), else a one-line
    ValueError; whether it is installed is checked when it is built."""
    if isinstance(base, str):
        lib, sep, rest = base.partition(":")
        if base in _convattn_networks() or (sep and lib in ("timm", "torchvision") and rest):
            return base
        if sep and lib == "module" and rest.count(":") == 1 and all(rest.split(":")):
            return base
    raise ValueError(f"{source}: base {base!r} names no network; a base is a convattn model name "
                     f"({', '.join(_convattn_networks()[:3])}, ...), 'timm:<name>', 'torchvision:<name>' or "
                     "'module:<import.path>:<ClassName>'")


def module_base_name(model: nn.Module) -> str:
    """``"module:<import.path>:<ClassName>"`` of ``model``'s class, or a one-line ValueError saying why a rebuild
    could not import it."""
    cls = type(model)
    mod, qual = cls.__module__, cls.__qualname__
    what = f"{cls.__name__} (module {mod})"
    if mod == "__main__" or "<locals>" in qual:
        where = "in a script run as __main__" if mod == "__main__" else "inside a function"
        raise ValueError(f"{what} is defined {where}, so a shared folder cannot name it for a rebuild; define the "
                         "class in an importable module (a file of your package) and build the network from there")
    if mod.split(".")[0] in ("torchvision", "timm"):
        lib = mod.split(".")[0]
        raise ValueError(f"{what} was built by {lib} directly, which records no builder name or arguments; pass "
                         f"base='{lib}:<name>' (and base_args=...) to save_pretrained, or build it with "
                         f"convattn.build_model('{lib}:<name>', ...)")
    return f"module:{mod}:{qual}"


def resolve_module_base(base: str, source: str = "recipe") -> type:
    """The class named by ``"module:<import.path>:<ClassName>"``. A folder never imports a module by itself: the
    module must have been imported (as ``convattn`` must be for timm); a missing or unimported module, a missing
    name or a class that is no ``nn.Module`` is a one-line ValueError."""
    _, path, qual = base.split(":")
    if path not in sys.modules:
        top = path.split(".")[0]
        installed = top in sys.modules or importlib.util.find_spec(top) is not None
        raise ValueError(f"{source}: base {base} needs the module {path}, which "
                         + (f"is not imported; import {path} before loading (a shared folder never imports a module "
                            "by itself)" if installed else f"is not installed (no package {top!r}); install the "
                            "package that defines the network, then import it"))
    obj: Any = sys.modules[path]
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"{source}: base {base}: module {path} has no {qual}; is the installed version the one "
                             "that saved the folder?")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"{source}: base {base} is not an nn.Module class ({type(obj).__name__}); a module base "
                         "names the network's class")
    return obj


def _timm_base(model: nn.Module) -> dict[str, Any] | None:
    """The recipe base of a network timm built (its ``pretrained_cfg`` architecture and the factory's recorded
    arguments), None for any other network."""
    cfg = getattr(model, "pretrained_cfg", None)
    arch = cfg.get("architecture") if isinstance(cfg, Mapping) else None
    if not isinstance(arch, str) or arch == ATTACHED or arch.startswith("convattn_"):
        return None
    import timm
    if not timm.is_model(arch):
        return None
    args = {k: v for k, v in dict(getattr(model, "_model_args", {}) or {}).items() if k not in _NOT_BASE_ARGS}
    return {"base": f"timm:{arch}", "base_args": args}


def recipe_of(model: nn.Module, base: str | None = None, base_args: Mapping[str, Any] | None = None
              ) -> dict[str, Any]:
    """``model``'s recipe (``base``, ``base_args``, ``attach``; see the module docstring): the base as given, as
    ``build_model`` or timm recorded it, or ``model``'s own importable class; a plan a spec cannot hold is a
    one-line ValueError."""
    recorded = getattr(model, "convattn_base", None) or _timm_base(model)
    if base is None:
        if recorded is not None:
            base, rec_args = recorded["base"], recorded["base_args"]
            base_args = rec_args if base_args is None else base_args
        else:
            base = module_base_name(model)
    check_base(base, "save")
    if base_args is None:
        base_args = {}
    if not isinstance(base_args, Mapping):
        raise ValueError(f"base_args must be a dict of the base network's keyword arguments, got {base_args!r}")
    specs = []
    for i, plan in enumerate(AttachPlan.recorded(model)):
        try:
            specs.append(plan.to_dict())
        except ValueError as e:
            raise ValueError(f"attach call {i + 1} ({plan.name}): {e}") from None
    base_args = dict(base_args)
    try:
        json.dumps(base_args)
    except (TypeError, ValueError):
        bad = sorted(k for k, v in base_args.items() if not _jsonable(v))
        raise ValueError(f"base_args {', '.join(bad)} of {base} cannot be written to config.json (not JSON: "
                         f"{', '.join(type(base_args[k]).__name__ for k in bad)}); pass JSON values (names, numbers, "
                         "lists) as base_args") from None
    return {"base": base, "base_args": base_args, "attach": specs}


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def record_recipe(model: nn.Module) -> None:
    """Keep a timm-configured network's ``pretrained_cfg`` and ``_model_args`` in step with what was attached (so
    timm's ``save_for_hf`` writes the ``convattn_attached`` recipe); a convattn ResNet gets its timm config here.
    Networks without a recorded base (torchvision, a user's class) are left alone: ``save_pretrained`` names them.
    Never raises: a plan that cannot be recorded makes timm's writer refuse later, not ``attach`` now."""
    base = getattr(model, "convattn_base", None)
    if base is None:
        base = _timm_base(model)
        if base is None:
            return
        model.convattn_base = base
    calls = getattr(model, "convattn_attach_calls", [])
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping):
        cfg = _own_cfg(model, base["base"])
        if cfg is None:
            return
    elif not calls and not base["base"] in _convattn_networks():
        return  # a plain timm network keeps timm's own config
    try:
        specs: Any = [p.to_dict() for p in AttachPlan.recorded(model)]
    except ValueError as e:
        specs = NotRecordable(str(e))
    model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": ATTACHED}
    model._model_args = {"base": base["base"], "base_args": dict(base["base_args"]), "attach": specs}


def _own_cfg(model: nn.Module, base: str) -> dict[str, Any] | None:
    """A timm ``pretrained_cfg`` for a network convattn built that has none: a convattn ResNet's registered one;
    for a torchvision network, ImageNet's preprocessing, its first convolution and classifier (and
    ``num_features``, which timm's writer reads); None for other networks."""
    if base in _convattn_networks():
        from timm.models import get_pretrained_cfg
        default = get_pretrained_cfg(f"convattn_{base}")
        return default.to_dict() if default is not None else None
    if not base.startswith("torchvision:"):
        return None
    from ..data import IMAGENET_DATA_CFG
    heads = list(getattr(model, "convattn_classifier", None) or [])
    modules = dict(model.named_modules())
    last = modules.get(heads[-1]) if heads else None
    if not hasattr(model, "num_features") and isinstance(last, nn.Linear):
        model.num_features = last.in_features
    if not hasattr(model, "num_features"):
        return None
    first = next((n for n, m in modules.items() if isinstance(m, nn.Conv2d)), None)
    data = dict(IMAGENET_DATA_CFG)
    return dict(data, input_size=(getattr(model, "in_chans", 3), *data["input_size"][1:]), crop_mode="center",
                num_classes=getattr(model, "num_classes", 0), first_conv=first,
                classifier=(heads[0] if len(heads) == 1 else heads) if heads else None, license="bsd-3-clause",
                fixed_input_size=False)


def parse_recipe(model_args: Mapping[str, Any], source: str = "model_args"
                 ) -> tuple[str, dict[str, Any], list[AttachPlan]]:
    """(base, base_args, plans) of a recipe, each part checked first: one line naming ``source`` for a missing or
    malformed part, a newer spec version or an unknown module kind."""
    if not isinstance(model_args, Mapping) or "base" not in model_args:
        raise ValueError(f"{source}: no recipe (model_args needs 'base', 'base_args' and 'attach'); {ATTACHED} "
                         "rebuilds only folders written by convattn (save_pretrained or timm's save_for_hf on a "
                         "network convattn built or attached to)")
    base = check_base(model_args["base"], source)
    base_args = model_args.get("base_args") or {}
    if not isinstance(base_args, Mapping):
        raise ValueError(f"{source}: base_args must be a mapping of keyword arguments, got {type(base_args).__name__}")
    specs = model_args.get("attach") or []
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"{source}: attach must be a list of attach specs, got {type(specs).__name__}")
    plans = [AttachPlan.from_dict(d, source=f"{source} attach[{i}]") for i, d in enumerate(specs)]
    return base, dict(base_args), plans


# --- reading a folder ---

def is_shared_folder(path: str | os.PathLike) -> bool:
    """True for a folder with a ``config.json`` (a timm / Hugging Face model folder)."""
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """``config.json`` of a shared folder; a missing, unreadable or malformed one is a one-line ValueError."""
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise ValueError(f"{folder} is not a folder; a shared model is a folder with config.json and model.safetensors")
    if not path.is_file():
        raise ValueError(f"{folder} has no config.json: not a shared model folder (save one with "
                         "convattn.save_pretrained or timm.models.save_for_hf)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path} cannot be read as JSON ({type(e).__name__}: {' '.join(str(e).split())})") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("architecture"), str):
        raise ValueError(f"{path} is not a timm model config (an object with an 'architecture' name)")
    if cfg["architecture"] == ATTACHED:
        parse_recipe(cfg.get("model_args") or {}, str(path))  # newer spec, unknown module kind: one line, now
    return cfg


def weights_file(folder: str | os.PathLike) -> Path:
    """The weights file of a shared folder (timm's order of preference); none is a one-line ValueError."""
    for name in WEIGHT_FILES:
        p = Path(folder) / name
        if p.is_file():
            return p
    raise ValueError(f"{folder} has no weights file ({', '.join(WEIGHT_FILES)}); was the folder copied whole?")


def check_weights_file(folder: str | os.PathLike) -> Path:
    """The weights file of a shared folder, its safetensors header read (a missing or truncated file is a
    one-line ValueError before anything is built)."""
    path = weights_file(folder)
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                f.keys()
        except Exception as e:  # noqa: BLE001 - SafetensorError and the like: one line
            raise ValueError(f"cannot read the weights {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                             "is the file complete?") from None
    return path


def folder_state_dict(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict of a shared folder (its config checked first, see :func:`read_config`); an unreadable
    weights file is a one-line ValueError naming it."""
    read_config(folder)
    path = weights_file(folder)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: the same one line
        raise ValueError(f"cannot read the weights {path} ({type(e).__name__}: {' '.join(str(e).split())[:200]}); "
                         "is the file complete?") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return sd
