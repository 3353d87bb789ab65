"""Freezing the pretrained part of a network while its new parameters train (``--freeze-epochs``).

The *new* parameters are what fine-tuning adds to a pretrained network: every parameter of attention (what
:func:`~convattn.engine.optim.attention_parameter_names` gives: the attention modules, AW-convolution's generator,
the identity form's scales), the classifier head, and any other parameter the pretrained file did not provide
(e.g. a head re-initialised because the class count differs). Everything else is the *pretrained part*.

While the pretrained part is frozen its parameters have ``requires_grad=False`` (no gradient, so SGD moves
neither the weight nor its momentum nor its weight decay) and its BatchNorm layers run in eval mode, so their
running statistics stay the pretrained ones and every batch is normalised with them, as in evaluation. Afterwards
everything trains, BatchNorm included. Whether an epoch is frozen is a function of the epoch alone, so a resumed
run freezes exactly the epochs an uninterrupted one does.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from .optim import attention_parameter_names

__all__ = ["head_parameter_names", "new_parameter_names", "zero_new_head", "Freeze"]


def _param_names(prefix: str, module: nn.Module) -> set[str]:
    return {f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters()}


def head_parameter_names(model: nn.Module) -> set[str]:
    """The classifier head's parameters (the modules :func:`convattn.models.weights.classifier_names` names: the
    one a weights file may leave out when its class count differs)."""
    from ..models.weights import classifier_names
    modules = dict(model.named_modules())
    return set().union(*(_param_names(n, modules[n]) for n in classifier_names(model)))


def new_parameter_names(model: nn.Module, loaded: Iterable[str] | None = None) -> set[str]:
    """Names of the parameters that train while the pretrained part is frozen: attention, the classifier head,
    and, when ``loaded`` (the state-dict keys the pretrained file filled) is given, every parameter not in it."""
    names = attention_parameter_names(model) | head_parameter_names(model)
    if loaded is not None:
        got = set(loaded)
        names |= {n for n, _ in model.named_parameters() if n not in got}
    return names


def zero_new_head(model: nn.Module) -> list[str]:
    """Zero the classifier head's tensors that the pretrained weights file did not provide (a head for another
    class count); returns their names. A new head then starts at uniform predictions (loss ln(classes)), and the
    first gradients reaching the pretrained part and the new attention modules are zero instead of the gradients
    of randomly scaled logits (timm's EfficientNet head init gives a start loss of about 16 on 10 classes), as in
    BiT's fine-tuning recipe (Kolesnikov et al. 2020: zero-initialised head). Models without a pretrained load
    report (``pretrained_report``) are left alone."""
    report = getattr(model, "pretrained_report", None)
    if report is None:
        return []
    loaded = set(report.loaded)
    params = dict(model.named_parameters())
    names = sorted(n for n in head_parameter_names(model) if n not in loaded)
    with torch.no_grad():
        for n in names:
            params[n].zero_()
    report.zeroed_head = names
    return names


class Freeze:
    """Freeze the pretrained part of ``model`` for ``epochs`` epochs (``-1``: the whole run; ``0``: never).

    Args:
        model: The bare model (not a DDP/compiled wrapper).
        trainable: Names of the parameters that train while frozen (:func:`new_parameter_names`).
        epochs: Frozen epochs, counted from 1.
        loaded: State-dict keys the pretrained file filled; a BatchNorm is held in eval mode only when its running
            statistics came from it (None: every BatchNorm of the frozen part).
        bn_eval: Hold those BatchNorm layers in eval mode in every epoch, also after the freeze (their affine
            parameters train once unfrozen; the running statistics stay the pretrained ones: mmdetection's
            ``norm_eval``).
    """

    def __init__(self, model: nn.Module, trainable: set[str], epochs: int,
                 loaded: Iterable[str] | None = None, bn_eval: bool = False) -> None:
        self.model, self.epochs, self.bn_eval = model, int(epochs), bool(bn_eval)
        params = dict(model.named_parameters())
        self.trainable = {n for n in trainable if n in params}
        self.frozen_names = [n for n in params if n not in self.trainable]
        got = set(loaded) if loaded is not None else None
        self.bn: list[nn.Module] = []
        for prefix, m in model.named_modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.track_running_stats:
                continue
            own = {f"{prefix}.{n}" if prefix else n for n, _ in m.named_parameters(recurse=False)}
            stats = f"{prefix}.running_mean" if prefix else "running_mean"
            if own & self.trainable or (got is not None and stats not in got):
                continue
            self.bn.append(m)
        self._state: bool | None = None

    def frozen(self, epoch: int) -> bool:
        """Whether the pretrained part is frozen in ``epoch`` (1-based)."""
        return self.epochs < 0 or epoch <= self.epochs

    def counts(self) -> tuple[int, int]:
        """(parameters that train while frozen, parameters frozen), as element counts."""
        params = dict(self.model.named_parameters())
        return (sum(params[n].numel() for n in self.trainable), sum(params[n].numel() for n in self.frozen_names))

    def apply(self, epoch: int) -> bool:
        """Set ``requires_grad`` for ``epoch`` and put the pretrained BatchNorm layers in eval mode when frozen or
        with ``bn_eval`` (call after ``model.train()``). Returns True when the set of trainable parameters changed."""
        frozen = self.frozen(epoch)
        changed = self._state is not None and self._state != frozen
        if self._state != frozen:
            params = dict(self.model.named_parameters())
            for n in self.frozen_names:
                params[n].requires_grad_(not frozen)
            self._state = frozen
        if frozen or self.bn_eval:
            for m in self.bn:
                m.eval()
        return changed
