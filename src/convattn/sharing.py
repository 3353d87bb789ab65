"""Share a trained network the ecosystem's way: a timm / Hugging Face folder that timm's own loader rebuilds.

``save_pretrained(model, dir)`` writes ``config.json`` (timm's format; architecture ``convattn_attached`` with the
network's recipe in ``model_args``: the base network, its arguments and the attach specs, see
:mod:`convattn.models.hub`), ``model.safetensors`` and a model card (``README.md``: the base network and its
licence, the modules and where they sit, added parameters and MACs, the run's recipe and accuracy when saved from
a run folder, the reconstruction note for AW-convolution and STEAM, citations). It serves every network convattn
built or attached to, also those timm's own ``save_for_hf`` cannot write (torchvision bases, a user's class
importable by path). Before a file is in place the folder is reloaded the way a user will reload it,
``timm.create_model("local-dir:DIR", pretrained=True)``, and must give the same state-dict keys and the same
outputs; otherwise nothing is written and the error says why.

``load_folder(dir)`` is that reload with one-line errors; ``export_run(run, out)`` writes the folder of a run
(``convattn export --run R --formats hf``). Nothing here contacts the Hugging Face Hub: ``timm.models.push_to_hf_hub``
uploads a network timm's ``save_for_hf`` can write (docs/sharing.md).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .cards import CITATIONS, base_licence, model_card, plain_of, read_run
from .models.hub import ATTACHED, WeightsMismatch, check_weights_file, read_config, recipe_of

__all__ = ["save_pretrained", "load_folder", "export_run", "SavedFolder", "model_card", "CITATIONS", "MAX_REL_DIFF"]

#: largest relative output difference (``|y - y'| / |y|``) a reloaded folder may show
MAX_REL_DIFF = 1e-6


@dataclass
class SavedFolder:
    """What :func:`save_pretrained` wrote: the folder and how exactly timm's loader rebuilt it."""

    path: Path
    max_abs_diff: float  # largest |output - reloaded output| on the check input
    rel_diff: float  # |output - reloaded output| / |output|
    check_input: tuple[int, ...]  # shape of the check input

    def summary(self) -> str:
        return (f"{self.path} (reloaded by timm.create_model('local-dir:...', pretrained=True): same keys, max "
                f"|diff| {self.max_abs_diff:.2e}, relative {self.rel_diff:.2e} on {'x'.join(map(str, self.check_input))})")


# --- saving ---

def save_pretrained(model: nn.Module, save_directory: str | os.PathLike, *, base: str | None = None,
                    base_args: Mapping[str, Any] | None = None, data_config: Mapping[str, Any] | None = None,
                    label_names: list[str] | None = None, run: str | os.PathLike | None = None,
                    card: Mapping[str, Any] | None = None, check_size: int | None = None) -> SavedFolder:
    """Write ``model`` as a timm / Hugging Face folder that ``timm.create_model("local-dir:DIR", pretrained=True)``
    rebuilds exactly (after ``import convattn``); see the module docstring.

    Args:
        model: A network convattn built (``create_model``, ``build_model``, timm's ``convattn_*``) or attached to.
        save_directory: The folder (created; files of the same names in it are replaced).
        base / base_args: The plain network and its keyword arguments, for a network whose builder convattn did
            not record (a torchvision network built by torchvision: ``base="torchvision:resnet18"``; a user's
            class: ``"module:<import.path>:<ClassName>"``, the default for an importable class). A wrong recipe
            fails the reload check.
        data_config: Preprocessing (timm keys ``input_size``, ``mean``, ``std``, ``crop_pct``, ``interpolation``);
            default: the network's timm config, the run's data (``run``), else ImageNet's.
        label_names: Class names, in classifier order (default: the run's classes).
        run: The ``convattn train`` run folder the weights come from: its recipe and validation accuracy go into
            the card, its data statistics into the preprocessing.
        card: Extra card fields: ``description``, ``license`` (of the weights you share), ``tags``.
        check_size: Input side of the reload check and of the MAC count (default: the network's input size, at
            most 224).
    """
    model = _unwrap(model)
    run_info = read_run(run) if run is not None else None
    return _save(model, Path(save_directory), recipe_of(model, base, base_args), data_config, label_names, run_info,
                 card, check_size)


def _save(model: nn.Module, save_directory: Path, recipe: dict[str, Any], data_config: Mapping[str, Any] | None,
          label_names: list[str] | None, run_info: dict[str, Any] | None, card: Mapping[str, Any] | None,
          check_size: int | None) -> SavedFolder:
    if save_directory.exists() and not save_directory.is_dir():
        raise ValueError(f"{save_directory} exists and is not a folder; give a folder to write the model into")
    if run_info is not None:
        data_config = {**run_info["data_config"], **dict(data_config or {})}
        label_names = label_names if label_names is not None else run_info["classes"]
    config = _config(model, recipe, data_config, label_names)
    size = check_size or min(int(config["pretrained_cfg"]["input_size"][-1]), 224)
    in_chans = int(config["pretrained_cfg"]["input_size"][0])
    parent = save_directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{save_directory.name}.", dir=parent))
    try:
        state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        from safetensors.torch import save_file
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
        reloaded, max_abs, rel = _check_reload(model, tmp, state, (2, in_chans, size, size))
        text = model_card(model, recipe, config, plain=plain_of(recipe, config), size=size, in_chans=in_chans,
                          run=run_info, card=card)
        (tmp / "README.md").write_text(text, encoding="utf-8")
        save_directory.mkdir(parents=True, exist_ok=True)
        for f in ("model.safetensors", "config.json", "README.md"):
            os.replace(tmp / f, save_directory / f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return SavedFolder(save_directory, max_abs, rel, (2, in_chans, size, size))


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside ``torch.compile``'s and (Distributed)DataParallel's wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _config(model: nn.Module, recipe: dict[str, Any], data_config: Mapping[str, Any] | None,
            label_names: list[str] | None) -> dict[str, Any]:
    """config.json in timm's format: timm's own writer for a network with a timm config, the same keys otherwise."""
    cfg = getattr(model, "pretrained_cfg", None)
    extra: dict[str, Any] = {}
    if label_names:
        extra["label_names"] = list(label_names)
    if isinstance(cfg, Mapping) and hasattr(model, "num_features"):
        from timm.models import save_for_hf
        saved = {k: model.__dict__[k] for k in ("_model_args", "pretrained_cfg", "default_cfg") if k in model.__dict__}
        try:  # timm's writer reads the network's current arguments; the recipe replaces the factory's record
            model._model_args = {}
            model.pretrained_cfg = model.default_cfg = {**cfg, "architecture": ATTACHED}
            with tempfile.TemporaryDirectory() as d:  # timm's public writer (its weights file is not used)
                save_for_hf(model, d, model_config=extra, model_args=recipe, safe_serialization=True,
                            **({"data_config": dict(data_config)} if data_config else {}))
                return json.loads((Path(d) / "config.json").read_text())
        finally:
            for k in ("_model_args", "pretrained_cfg", "default_cfg"):
                model.__dict__.pop(k, None)
            model.__dict__.update(saved)
    from .data import IMAGENET_DATA_CFG
    from .models.weights import classifier_names
    data = {**IMAGENET_DATA_CFG, **dict(data_config or {})}
    in_chans = getattr(model, "in_chans", None) or _first_conv(model).in_channels
    data["input_size"] = (in_chans, *tuple(data["input_size"])[-2:])
    heads = classifier_names(model)
    modules = dict(model.named_modules())
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None:
        head = modules.get(heads[-1]) if heads else None
        num_classes = getattr(head, "out_features", 0) if head is not None else 0
    model_args: dict[str, Any] = dict(recipe)
    lib = recipe["base"].partition(":")[0]
    if lib != "module":  # builders by name take these; a user's class gets them from pretrained_cfg if it does
        model_args.update(num_classes=num_classes, in_chans=in_chans)
    pcfg = dict(input_size=list(data["input_size"]), fixed_input_size=False, interpolation=data["interpolation"],
                crop_pct=data["crop_pct"], crop_mode=data.get("crop_mode", "center"), mean=list(data["mean"]),
                std=list(data["std"]), num_classes=num_classes, first_conv=_first_conv_name(model),
                classifier=(heads[0] if len(heads) == 1 else heads) if heads else None,
                license=base_licence(recipe["base"], None))
    out = {"architecture": ATTACHED, "num_classes": num_classes}
    last = modules.get(heads[-1]) if heads else None
    if isinstance(last, nn.Linear):
        out["num_features"] = last.in_features
    out.update(extra)
    out["model_args"] = model_args
    out["pretrained_cfg"] = pcfg
    return out


def _first_conv(model: nn.Module) -> nn.Conv2d:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m
    raise ValueError(f"{type(model).__name__} has no nn.Conv2d: not a CNN convattn shares")


def _first_conv_name(model: nn.Module) -> str | None:
    return next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)


def _flat(out: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_flatten
    return [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]


def _check_reload(model: nn.Module, folder: Path, state: dict[str, torch.Tensor], shape: tuple[int, ...]
                  ) -> tuple[nn.Module, float, float]:
    """Reload ``folder`` as a user will and compare keys and outputs with ``model``; a difference is a one-line
    ValueError saying what the recipe got wrong."""
    recipe = json.loads((folder / "config.json").read_text())["model_args"]
    what = f"the recorded recipe (base {recipe['base']} with base_args {json.dumps(recipe['base_args'])})"
    try:
        reloaded = load_folder(folder)
    except WeightsMismatch as e:  # tensors named as the file's rebuilt with other shapes, or others
        raise ValueError(f"{what} rebuilds another network ({e.detail}); pass base=/base_args= with the network's "
                         "builder and the arguments it was built with; nothing was written") from None
    except (ValueError, RuntimeError, TypeError) as e:
        raise ValueError(f"{what} does not rebuild this network ({' '.join(str(e).split())}); nothing was "
                         "written") from None
    got = reloaded.state_dict()
    if list(got) != list(state) or any(got[k].shape != state[k].shape for k in state):
        raise ValueError(f"{what} rebuilds another network (its state-dict keys or shapes differ); pass base=/"
                         "base_args= with the network's builder and its arguments; nothing was written")
    p0 = next(iter(model.parameters()), None)
    dev, dt = (p0.device, p0.dtype) if p0 is not None else (torch.device("cpu"), torch.float32)
    was = model.training
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)).to(dev, dt)
    try:
        model.eval()
        with torch.no_grad():
            a = _flat(model(x))
            b = _flat(reloaded.eval().to(dev, dt)(x))
    finally:
        model.train(was)
    if len(a) != len(b) or any(u.shape != v.shape for u, v in zip(a, b)):
        raise ValueError("the reloaded network returns outputs of other shapes; nothing was written")
    max_abs = max(float((u.float() - v.float()).abs().max()) for u, v in zip(a, b))
    num = sum(float((u.float() - v.float()).norm() ** 2) for u, v in zip(a, b)) ** 0.5
    den = sum(float(u.float().norm() ** 2) for u in a) ** 0.5
    rel = num / den if den else num
    # on an accelerator two instances may run other kernels (cuDNN's autotuner): a looser bound there
    if rel > (MAX_REL_DIFF if dev.type == "cpu" and dt == torch.float32 else 1e-3 if dt != torch.float32 else 1e-5):
        raise ValueError(f"the reloaded network computes something else (relative output difference {rel:.2e}); "
                         "its constructor took options the recipe does not record: pass them as base_args; nothing "
                         "was written")
    return reloaded, max_abs, rel


# --- loading ---

def load_folder(folder: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """The network of a shared folder with its weights: ``timm.create_model("local-dir:DIR", pretrained=True,
    **kwargs)``, its config and weights file checked first (one line for each problem)."""
    import timm
    folder = Path(folder)
    cfg = read_config(folder)
    check_weights_file(folder)
    if not timm.is_model(cfg["architecture"]):
        raise ValueError(f"{folder}/config.json: architecture {cfg['architecture']!r} is not a model of the "
                         f"installed timm {timm.__version__}" + ("; import convattn first" if
                                                                 cfg["architecture"].startswith("convattn") else ""))
    try:
        return timm.create_model(f"local-dir:{folder}", pretrained=True, **kwargs)
    except (RuntimeError, OSError) as e:  # timm's own failures (an unreadable file, a load it refuses): one line
        raise ValueError(f"{folder}: {' '.join(str(e).split())[:300]}") from None


# --- the model card ---

def export_run(run: str | os.PathLike, out: str | os.PathLike, use_ema: bool = False,
               checkpoint: str | os.PathLike | None = None) -> SavedFolder:
    """The folder of a ``convattn train`` run's weights (latest checkpoint, or ``checkpoint``), with its recipe,
    data statistics, classes and validation accuracy in the card."""
    from .tasks.classification.run import load_run
    _, info, model = load_run(run, checkpoint, use_ema)
    run_info = {**read_run(run), "ema": use_ema}
    if checkpoint is not None:
        run_info["final"] = {}  # the card's accuracy is the final weights'; another checkpoint's is not recorded
    size = int(info["image_size"])
    run_info["data_config"] = dict(input_size=(int(info["in_chans"]), size, size), mean=tuple(info["mean"]),
                                   std=tuple(info["std"]), crop_pct=1.0, interpolation="bilinear")
    run_info["classes"] = info.get("classes")
    return _save(model, Path(out), recipe_of(model), None, None, run_info, None, size)
