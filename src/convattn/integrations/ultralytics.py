"""Attention in Ultralytics YOLO models, kept by ultralytics' own workflow: ``attach_yolo(model, "cbam")``.

``attach_yolo`` puts convattn modules into the network of a ``ultralytics.YOLO`` object (``model.model``: the
DetectionModel, SegmentationModel, ClassificationModel, PoseModel or OBBModel) with :func:`convattn.attach`, and
records the resolved attach spec (:class:`convattn.AttachPlan`, one per call) in the network. ultralytics' trainer
builds a fresh network from the model's yaml, which would drop every attached module; so ``attach_yolo`` also makes
the YOLO object's trainer one whose ``get_model`` rebuilds, re-attaches the recorded plans and then loads the
weights (ultralytics' documented extension point: a trainer subclass overriding ``get_model``). Hence:

* ``model.train(...)`` trains with the modules (also with ``trainer=YourTrainer``: it is extended the same way);
* ``best.pt`` / ``last.pt`` hold the modules and the spec (ultralytics pickles the whole network; attach's classes
  unpickle by reference to importable names); ``YOLO("best.pt")`` has them for val, predict and export, and
  :func:`load_yolo` (or ``attach_yolo(YOLO("best.pt"))``) also trains or resumes (``resume=True``) with them;
* multi-GPU DDP: ultralytics pickles the trainer's class and the attached network for its worker processes; the
  trainer class carries the spec, so a worker that builds the network itself re-attaches it too;
* ``model.val()``, ``model.predict()``, ``model.export(format="onnx")`` run the modules (fusing Conv+BN keeps them).

Pretrained weights: every tensor of a plain YOLO checkpoint keeps its name in the attached network, so a plain
``best.pt`` loads into it completely; with ``identity=True`` the attached network computes exactly what the plain
one did, so its validation mAP at the start equals the plain model's.

``where=`` takes ultralytics layer indices (an int or a list of ints: the ``model.N`` of the yaml), ``"backbone"``
or ``"neck"`` (the yaml's backbone layers; the head's layers before the final Detect/Segment/Classify layer), or any
form :func:`convattn.attach` takes except a list (which here means layer indices) and a callable (not recordable).
Layer choices are resolved to attach's ``{stage: [blocks]}`` form, which the spec records; the report
(``model.convattn_report``) names the layers used.

ultralytics is AGPL-3.0 (extra ``[yolo]``); this module uses its public API and documented extension points and
copies nothing from it. Only ultralytics' ``YOLO`` class is served: RT-DETR, YOLO-World, YOLOE, SAM and NAS models are
refused with the reason.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from torch import nn

from ..models.attach import AttachReport, attach, find_blocks
from ..models.plan import AttachPlan
from ..optional import require

_FEATURE = "convattn.integrations.ultralytics (attention in Ultralytics YOLO)"
require("ultralytics", "yolo", _FEATURE)

from ultralytics import YOLO  # noqa: E402  (after the one-line check of the extra)
from ultralytics.engine.model import Model  # noqa: E402

__all__ = ["attach_yolo", "load_yolo", "AttachedYOLO", "YoloAttachReport", "attaching_trainer", "yolo_plans",
           "yolo_parts", "SUPPORTED_TASKS"]

#: Tasks of ``ultralytics.YOLO`` that attach_yolo serves (their trainers build the network in ``get_model``).
SUPPORTED_TASKS = ("detect", "segment", "classify", "pose", "obb")
#: ``where`` values that name a part of the network.
PARTS = ("backbone", "neck")


@dataclass
class YoloAttachReport(AttachReport):
    """attach's report (:class:`convattn.models.attach.AttachReport`) plus the ultralytics layers that received
    modules, per part (``{"backbone": [2, 4], "neck": [12]}``) and the layer types."""

    layers: dict[str, list[int]] = field(default_factory=dict)
    layer_types: dict[int, str] = field(default_factory=dict)

    @property
    def layer_indices(self) -> list[int]:
        return sorted(i for part in self.layers.values() for i in part)

    def summary(self) -> str:
        def named(idx: list[int]) -> str:
            return ", ".join(f"{i} ({self.layer_types.get(i, '?')})" for i in idx)
        parts = "; ".join(f"{p} {named(idx)}" for p, idx in self.layers.items() if idx)
        return f"{super().summary()}; ultralytics layers: {parts or 'none'}"


# --- the network's layers ---

def _net(model: Any) -> nn.Module:
    """The ultralytics network (``model.model``) of a YOLO object, checked."""
    if not isinstance(model, Model):
        what = "an nn.Module: use convattn.attach(net, ...) for a bare network" if isinstance(model, nn.Module) \
            else type(model).__name__
        raise ValueError(f"attach_yolo takes an ultralytics YOLO object (e.g. YOLO('yolov8n.yaml')), got {what}")
    if not isinstance(model, YOLO):
        raise ValueError(f"attach_yolo serves ultralytics YOLO models (YOLOv8/YOLO11 and alike, tasks "
                         f"{', '.join(SUPPORTED_TASKS)}); {type(model).__name__} is not supported (its network and "
                         "trainer differ); convattn.attach(model.model, ...) attaches for inference only")
    net = getattr(model, "model", None)
    if not isinstance(net, nn.Module) or not isinstance(getattr(net, "model", None), nn.Sequential):
        raise ValueError("attach_yolo needs a PyTorch YOLO model (built from a .yaml or loaded from a .pt), not an "
                         f"exported one ({getattr(model, 'model', None)!r}); attach before exporting")
    head = type(net.model[-1]).__name__
    if "RTDETR" in head or "World" in head or "YOLOE" in head:
        raise ValueError(f"attach_yolo does not serve models with a {head} head (RT-DETR, YOLO-World, YOLOE): their "
                         "trainers build the network differently; use a YOLO detect/segment/classify/pose/obb model")
    if model.task not in SUPPORTED_TASKS:
        raise ValueError(f"attach_yolo serves the tasks {', '.join(SUPPORTED_TASKS)}; this model's task is "
                         f"{model.task!r}")
    return net


def yolo_parts(net: nn.Module) -> dict[str, list[int]]:
    """The layer indices of the network's parts: ``backbone`` (the yaml's backbone), ``neck`` (the head's layers
    before the final output layer) and ``head`` (the output layer)."""
    n = len(net.model)
    yaml = getattr(net, "yaml", None) or {}
    nb = len(yaml.get("backbone", [])) if isinstance(yaml, dict) else 0
    nb = nb if 0 < nb < n else n - 1
    return {"backbone": list(range(nb)), "neck": list(range(nb, n - 1)), "head": [n - 1]}


def _layer_of(name: str) -> int | None:
    m = re.match(r"model\.(\d+)(\.|$)", name or "")
    return int(m.group(1)) if m else None


def _layer_types(net: nn.Module) -> dict[int, str]:
    return {i: type(layer).__name__ for i, layer in enumerate(net.model)}


def _describe_layers(net: nn.Module, layers: Iterable[int]) -> str:
    types = _layer_types(net)
    return ", ".join(f"{i} ({types[i]})" for i in sorted(layers))


def _where_layers(net: nn.Module, where: Any) -> list[int] | None:
    """Layer indices named by ``where`` (ints, ``"backbone"``/``"neck"``, or a list of those); None when
    ``where`` is one of attach's own forms."""
    items = where if isinstance(where, (list, tuple)) else [where]
    if isinstance(where, (list, tuple)) and not where:
        raise ValueError("attach_yolo where: an empty list selects nothing; give layer indices, 'backbone' or 'neck'")
    if not all((isinstance(w, int) and not isinstance(w, bool)) or w in PARTS for w in items):
        if isinstance(where, (list, tuple)):
            raise ValueError(f"attach_yolo where: a list holds ultralytics layer indices (ints) or 'backbone'/'neck', "
                             f"got {where!r}; attach's stages are {{stage: 'all'}} here")
        return None
    parts, n = yolo_parts(net), len(net.model)
    layers: list[int] = []  # (a part's layers without blocks are skipped; an index given must hold one)
    for w in items:
        if isinstance(w, str):
            if not parts[w]:
                raise ValueError(f"attach_yolo where={w!r}: this network has no {w} layers (backbone "
                                 f"{_span(parts['backbone'])}, neck {_span(parts['neck'])}, head {n - 1})")
            layers += [-1 - i for i in parts[w]]  # marked: part of a part
        elif not -n <= w < n:
            raise ValueError(f"attach_yolo where: layer {w} is out of range; this network has layers 0..{n - 1} "
                             f"(backbone {_span(parts['backbone'])}, neck {_span(parts['neck'])}, head {n - 1})")
        else:
            layers.append(w % n)
    return sorted(set(layers), key=lambda i: -1 - i if i < 0 else i)


def _span(idx: list[int]) -> str:
    return f"{idx[0]}-{idx[-1]}" if idx else "none"


def resolve_where(net: nn.Module, where: Any, dry_run_size: int | None = None) -> tuple[Any, list[int] | None]:
    """``where`` in attach's terms (layer choices become ``{stage: [blocks]}``) and the layers it names."""
    if callable(where) and not isinstance(where, str):
        raise ValueError("attach_yolo where: a callable cannot be recorded in the model, so training could not "
                         "re-attach it; use layer indices, 'backbone'/'neck' or {stage: [blocks]}")
    layers = _where_layers(net, where)
    if layers is None:
        return where, None
    blocks = find_blocks(net, dry_run_size)
    served = sorted({_layer_of(b.name or b.target_name) for b in blocks} - {None})
    empty = [i for i in layers if i >= 0 and i not in served]
    if empty:
        raise ValueError(f"attach_yolo where: layer(s) {_describe_layers(net, empty)} hold no block attach can serve; "
                         f"layers with blocks: {_describe_layers(net, served)}")
    wanted = {i if i >= 0 else -1 - i for i in layers}
    chosen: dict[int, list[int]] = {}
    for b in blocks:
        if _layer_of(b.name or b.target_name) in wanted:
            chosen.setdefault(b.stage + 1, []).append(b.index)
    if not chosen:
        raise ValueError(f"attach_yolo where={where!r}: no block in layers {_span(sorted(wanted))}; layers with "
                         f"blocks: {_describe_layers(net, served)}")
    return chosen, sorted(wanted)


# --- the spec the network records, and the trainer that re-attaches it ---

def yolo_plans(net: nn.Module) -> list[AttachPlan]:
    """The plans attached to an ultralytics network, in order ([] for a plain one)."""
    return AttachPlan.recorded(net) if isinstance(net, nn.Module) else []


def _spec(plans: list[AttachPlan]) -> str:
    return json.dumps([p.to_dict() for p in plans], sort_keys=True)


class _AttachingTrainer:
    """Mixin for an ultralytics trainer: ``get_model`` builds the plain network as the trainer does, attaches the
    recorded plans (those of ``weights`` when it has any, else the class's ``convattn_spec``), then loads
    ``weights`` (every tensor of an attached or a plain network with this architecture)."""

    convattn_spec: str = "[]"

    def get_model(self, cfg: Any = None, weights: Any = None, verbose: bool = True) -> nn.Module:
        plans = yolo_plans(weights) or [AttachPlan.from_dict(d, source="attach spec of the trainer")
                                        for d in json.loads(self.convattn_spec)]
        model = super().get_model(cfg=cfg, weights=None, verbose=verbose)
        for plan in plans:
            plan.apply(model)
        if plans:
            _yolo_report(model)
        if weights:
            model.load(weights)  # ultralytics' own transfer: by name and shape, with its "Transferred" count
        return model


@functools.lru_cache(maxsize=None)
def _trainer_class(base: type, spec: str) -> type:
    return type(f"Attaching{base.__name__}", (_AttachingTrainer, base), {"convattn_spec": spec,
                                                                          "__module__": __name__})


def attaching_trainer(trainer: type, plans: "list[AttachPlan] | nn.Module") -> type:
    """``trainer`` (an ultralytics trainer class) extended so that the network it builds gets ``plans`` (or the
    plans recorded in a network). The class carries the spec, so DDP workers (which unpickle it) re-attach too."""
    if isinstance(plans, nn.Module):
        plans = yolo_plans(plans)
    if not plans:
        return trainer
    if not isinstance(trainer, type) or not callable(getattr(trainer, "get_model", None)):
        raise ValueError(f"trainer must be an ultralytics trainer class with get_model(), got {trainer!r}")
    if issubclass(trainer, _AttachingTrainer):  # one class per (trainer, spec)
        trainer = next(b for b in trainer.__mro__[1:] if not issubclass(b, _AttachingTrainer))
    return _trainer_class(trainer, _spec(plans))


class AttachedYOLO(YOLO):
    """A ``YOLO`` whose trainer re-attaches the modules recorded in its network (``attach_yolo`` makes a YOLO object
    one; ``AttachedYOLO("best.pt")`` loads a checkpoint as one)."""

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        maps = super().task_map
        net = self.__dict__.get("_modules", {}).get("model")
        if not yolo_plans(net):
            return maps
        return {task: {**m, "trainer": attaching_trainer(m["trainer"], net)} if "trainer" in m else m
                for task, m in maps.items()}

    def train(self, trainer: Any = None, **kwargs: Any) -> Any:
        net = self.__dict__.get("_modules", {}).get("model")
        if trainer is not None:
            trainer = attaching_trainer(trainer, net)
        return super().train(trainer=trainer, **kwargs)


@functools.lru_cache(maxsize=None)
def _attached_yolo_class(cls: type) -> type:
    """:class:`AttachedYOLO` for a subclass of ``YOLO`` (the subclass's own task map and methods kept)."""
    return type(f"Attached{cls.__name__}", (AttachedYOLO, cls), {"__module__": cls.__module__})


def _yolo_report(net: nn.Module) -> YoloAttachReport:
    """attach's last report on ``net`` with the ultralytics layers it used (stored as ``net.convattn_report``)."""
    base = getattr(net, "convattn_report", None) or AttachReport()
    used = sorted({i for r in base.rows if (i := _layer_of(r["where"])) is not None})
    parts = yolo_parts(net)
    layers = {p: [i for i in used if i in idx] for p, idx in parts.items()}
    report = YoloAttachReport(**{k: getattr(base, k) for k in AttachReport.__dataclass_fields__},
                              layers=layers, layer_types={i: t for i, t in _layer_types(net).items() if i in used})
    net.convattn_report = report
    return report


# --- the one call ---

def attach_yolo(model: Any, attn: str | None = None, conv: str | None = None, *, where: Any = None,
                identity: bool = False, attn_kwargs: dict[str, Any] | None = None,
                conv_kwargs: dict[str, Any] | None = None, dry_run_size: int | None = None,
                gct_placement: str = "every_conv", aw_convs: str = "kxk") -> Any:
    """Attach convattn modules to a ``ultralytics.YOLO`` model in place and return it; ultralytics' ``train``,
    checkpoints, ``resume``, ``val``, ``predict`` and ``export`` keep them (see the module docstring).

    Args:
        model: A ``YOLO`` object (``YOLO("yolov8n.yaml")``, ``YOLO("my_weights.pt")``).
        attn / conv / identity / attn_kwargs / conv_kwargs / gct_placement / aw_convs / dry_run_size: as for
            :func:`convattn.attach`.
        where: None (each module's default placement), ultralytics layer indices (an int or a list of ints),
            ``"backbone"``, ``"neck"`` (or a list mixing them with indices), ``"all"``, a placement rule name or
            ``{stage: [blocks]}``.

    With no module given (``attach_yolo(YOLO("best.pt"))``) the modules already recorded in the network are kept
    by training from it (as :func:`load_yolo`). ``model.convattn_report.summary()`` says what went where, with the
    ultralytics layers used.
    """
    net = _net(model)
    if attn is not None or conv is not None:
        attach_where, _ = resolve_where(net, where, dry_run_size)
        # the plan is checked (and made recordable) before the network is changed
        AttachPlan(attn=attn, conv=conv, where=attach_where, identity=identity, attn_kwargs=attn_kwargs,
                   conv_kwargs=conv_kwargs, gct_placement=gct_placement, aw_convs=aw_convs,
                   dry_run_size=dry_run_size).to_dict()
        attach(net, attn, conv, where=attach_where, identity=identity, attn_kwargs=attn_kwargs,
               conv_kwargs=conv_kwargs, dry_run_size=dry_run_size, gct_placement=gct_placement, aw_convs=aw_convs)
        _yolo_report(net)
    elif any(v is not None for v in (where, attn_kwargs, conv_kwargs)) or identity:
        raise ValueError("attach_yolo: where/identity/attn_kwargs/conv_kwargs given without a module; pass attn= "
                         "and/or conv='aw'")
    if not isinstance(model, AttachedYOLO):  # its trainer re-attaches the recorded plans (as YOLO switches class)
        model.__class__ = AttachedYOLO if type(model) is YOLO else _attached_yolo_class(type(model))
    model.predictor = None  # a cached predictor wraps the network as it was
    return model


def load_yolo(weights: Any, task: str | None = None, verbose: bool = False) -> AttachedYOLO:
    """``YOLO(weights)`` whose training (and ``resume=True``) keeps the attention modules recorded in the
    checkpoint; for a plain checkpoint, the same as ``YOLO(weights)``."""
    model = YOLO(weights, task=task, verbose=verbose)
    return attach_yolo(model) if isinstance(model, YOLO) else model
