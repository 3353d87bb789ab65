"""The one builder: a network by name (or a module you made) + an :class:`AttachPlan` + local weights.

``build_model(network, plan, weights=...)`` serves convattn's ResNets, ``"timm:<name>"`` / ``"torchvision:<name>"``
CNNs, a module the caller built, and detection backbones, in one order (as timm's ``build_model_with_cfg`` is the
one way its models are made):

1. the plain network: convattn's ResNet, timm's or torchvision's network (random init; nothing is downloaded), or
   the given module;
2. the plan's modules attached (:func:`convattn.models.attach`), with the network's own defaults (ECA's released
   kernels for convattn's ResNet-50/101); a convattn ResNet then initialises attached modules as its own layers
   (unless ``identity``: they already start as the identity);
3. the weights loaded last (:func:`convattn.models.load_pretrained`): ``attach`` never renames a tensor of the
   plain network, so a plain file loads into the attached network and its report names the added tensors as new;
   the load must be complete for the plain network unless ``allow_partial``.
"""
from __future__ import annotations

import os
from typing import Any

from torch import nn

from .backbones import VERIFIED_BACKBONES, build_plain_backbone, is_backbone_name, load_weights_file
from .hub import record_recipe
from .networks import CONVATTN_NETWORKS, plain_network
from .plan import AttachPlan

__all__ = ["build_model", "create_backbone", "PLAN_OPTIONS", "split_plan_options"]

#: keyword arguments of the model builders that belong to the plan (everything else builds the network);
#: ``attn_blocks`` is the older name of ``where``
PLAN_OPTIONS = ("attn", "conv", "attn_kwargs", "conv_kwargs", "attn_blocks", "where", "identity", "gct_placement",
                "aw_convs", "eca_kernels")


def split_plan_options(kwargs: dict[str, Any], variant: "str | AttachPlan | None" = None
                       ) -> tuple[AttachPlan, dict[str, Any]]:
    """(the plan, the network's own keyword arguments) from a builder's keyword arguments and an optional variant
    (string or plan); a module given both ways differently is a one-line error."""
    opts = {k: kwargs[k] for k in PLAN_OPTIONS if k in kwargs}
    rest = {k: v for k, v in kwargs.items() if k not in PLAN_OPTIONS}
    if "attn_blocks" in opts:
        if opts.get("where") not in (None, opts["attn_blocks"]):
            raise ValueError("give where= or attn_blocks= (its older name), not both")
        opts["where"] = opts.pop("attn_blocks")
    if variant is not None:
        plan = AttachPlan.parse(variant)
        for key, val in (("attn", plan.attn), ("conv", plan.conv)):
            given = opts.get(key)
            if given is not None and getattr(AttachPlan(**{key: given}), key) != val:
                raise ValueError(f"variant {plan.name!r} sets {key}={val!r} but {key}={given!r} was also given")
        opts.update(attn=plan.attn, conv=plan.conv)
        if plan.where is not None:
            opts["where"] = plan.where
    return AttachPlan(**{k: v for k, v in opts.items() if v is not None}), rest


def _eca_kwargs(plan: AttachPlan, rule: Any, num_stages: int) -> AttachPlan:
    """ECA's per-stage kernel sizes from the rule (``"adaptive"``: each module's formula; ``"released"``: the
    released ECA-Net50/101's 3, 5, 5, 7; or a list), for a plan whose only attention is ECA."""
    from .networks import ECA_RELEASED_KERNELS
    if plan.attn != "eca" or rule in (None, "adaptive") or "kernel_size" in plan.attn_kwargs:
        return plan
    ks = ECA_RELEASED_KERNELS if rule == "released" else rule
    if len(ks) != num_stages:
        raise ValueError(f"eca_kernels must be 'adaptive', 'released' (3, 5, 5, 7; 4-stage ResNets) or {num_stages} "
                         f"odd sizes, one per stage; got {rule!r}")
    return AttachPlan.parse(plan, attn_kwargs={**plan.attn_kwargs, "kernel_size": [int(k) for k in ks]})


def build_model(network: "str | nn.Module", plan: "str | AttachPlan | None" = None, *,
                weights: str | os.PathLike | None = None, allow_partial: bool = False,
                dry_run_size: int | None = None, **network_kwargs: Any) -> nn.Module:
    """Build ``network`` with ``plan``'s modules and load ``weights`` (see the module docstring for the order).

    Args:
        network: A convattn model name (``"resnet50"``), ``"timm:<name>"`` / ``"torchvision:<name>"``, or a module.
        plan: An :class:`AttachPlan` or a variant string (``"se+aw"``); None: the plain network.
        weights: A local state dict file (``.safetensors`` or ``torch.save``); an RGB stem is adapted to the
            network's input channels as timm does.
        allow_partial: Load only the tensors that match (otherwise the file must hold all of the plain network).
        dry_run_size: Input side of attach's dry pass (default: the network's).
        **network_kwargs: The network's own options (``num_classes``, ``in_chans``, ``drop_rate``, ...).
    """
    plan = AttachPlan.parse(plan)
    if allow_partial and not weights:
        raise ValueError("allow_partial (pretrained_allow_partial, --pretrained-partial) allows a partial load of a "
                         "weights file, but no weights file is given")
    eca_rule, own_resnet = None, False
    if isinstance(network, nn.Module):
        if network_kwargs:
            raise ValueError(f"network options {sorted(network_kwargs)} are for building a network by name; the "
                             "module given is already built")
        model = network
    elif not isinstance(network, str):
        raise ValueError(f"network must be a model name or an nn.Module, got {type(network).__name__}")
    elif is_backbone_name(network):
        model = build_plain_backbone(network, **network_kwargs)
        if not plan.is_plain:
            _check_cnn(model, network)
    elif network in CONVATTN_NETWORKS:
        model, eca_rule = plain_network(network, **network_kwargs)
        own_resnet = True
        dry_run_size = dry_run_size or min(model.default_input_size, 64)  # small: a fast dry pass
    else:
        raise ValueError(f"Unknown model '{network}'. Valid names: {', '.join(CONVATTN_NETWORKS)}, or a timm/torchvision CNN as "
                         f"'timm:<name>' / 'torchvision:<name>' (verified: {', '.join(VERIFIED_BACKBONES)})")
    if isinstance(network, str):  # the recipe a shared folder records (convattn.models.hub)
        model.convattn_base = {"base": network, "base_args": dict(network_kwargs)}
    if not plan.is_plain:
        if own_resnet:
            plan = _eca_kwargs(plan, plan.eca_kernels or eca_rule, model.num_stages)
        elif plan.eca_kernels not in (None, "adaptive"):
            plan = _eca_kwargs(plan, plan.eca_kernels, _stage_count(model, dry_run_size))
        try:
            plan.apply(model, dry_run_size=dry_run_size)
        except ValueError as e:
            if isinstance(network, str) and isinstance(getattr(model, "patch_embed", None), nn.Module):
                raise ValueError(f"{network} is not a CNN convattn can attach to (a transformer-like network with a "
                                 f"patch embedding): {e}") from e
            raise
        if own_resnet and not plan.identity:
            model.init_weights()  # attached modules initialised as the network's own layers (timm's SE-ResNets do so)
    model.convattn_plan = plan
    record_recipe(model)  # timm's save_for_hf writes what rebuilds it
    report = load_weights_file(model, weights, allow_partial=allow_partial) if weights else None
    model.pretrained_report = report
    return model


def _stage_count(model: nn.Module, dry_run_size: int | None) -> int:
    from .attach import stage_blocks
    return len(stage_blocks(model, dry_run_size)[1])


def _check_cnn(model: nn.Module, name: str) -> None:
    """Refuse a network that is no CNN attach can work on (a vision transformer or MLP network: at most one
    convolution, the patch embedding), with the reason."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if len(convs) > 1:
        return
    if not convs:
        why = "it has no convolution"
    else:
        n, c = convs[0]
        k, s = "x".join(map(str, c.kernel_size)), "x".join(map(str, c.stride))
        what = "the patch embedding" if c.kernel_size == c.stride and max(c.stride) > 1 else "a single layer"
        why = (f"it has no residual convolutional blocks; its only convolution is {what} {n} ({k} kernel, stride "
               f"{s}), as in a vision transformer or MLP network")
    raise ValueError(f"{name} is not a CNN convattn can attach to: {why}; attention modules and AW-convolution go "
                     "into CNNs (e.g. " + ", ".join(VERIFIED_BACKBONES[:3]) + ")")


def create_backbone(name: str, attn: str | None = None, conv: str | None = None, *, num_classes: int = 1000,
                    in_chans: int = 3, pretrained_path: str | os.PathLike | None = None,
                    pretrained_allow_partial: bool = False, **kwargs: Any) -> nn.Module:
    """``"timm:<arch>"`` / ``"torchvision:<arch>"`` with convattn modules: :func:`build_model` with the plan's
    options given as keywords (``attn_kwargs``, ``conv_kwargs``, ``attn_blocks``/``where``, ``identity``, ...).

    ``num_classes=0``: no classifier, the model returns pooled features (timm's convention, also for torchvision).
    Other keyword arguments go to the library's constructor (e.g. ``drop_rate``).
    """
    if not is_backbone_name(name):
        raise ValueError(f"backbone names are 'timm:<name>' or 'torchvision:<name>', got {name!r}")
    plan, rest = split_plan_options(dict(kwargs, attn=attn, conv=conv))
    return build_model(name, plan, weights=pretrained_path, allow_partial=pretrained_allow_partial,
                       num_classes=num_classes, in_chans=in_chans, **rest)
