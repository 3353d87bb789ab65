"""Any convattn ResNet (any variant) or a timm/torchvision CNN with convattn modules attached (``"timm:<name>"``,
``"torchvision:<name>"``) as a torchvision FPN backbone, through one builder (:func:`fpn_backbone`).

The FPN takes the output of the last block of each of the last four stages (output strides 4, 8, 16, 32 in the
usual CNNs; a ResNet's layer1-4), found from the blocks ``attach`` reads off one dry forward pass, so channel
counts are never written down; forward hooks on those blocks collect them and stop the network after the last
(no tracing, so any module attach can insert works). Batch norm is frozen by default (as torchvision and
mmdetection do for detection), before the modules are attached; norms inside attention modules (CBAM's
spatial-gate BN) are frozen too, unless ``attn_norm_trainable=True`` keeps them trainable; attention parameters
train whenever their stage is trainable. AWConv2d works per sample, so any batch and image size is fine.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ...layers import AttentionModule
from ...models import IMAGENET_MODELS
from ...models.attach import stage_blocks
from ...models.backbones import is_backbone_name
from ...models.build import build_model, split_plan_options
from ...models.weights import LoadReport
from ...models.plan import AttachPlan
from ...models.resnet import ResNet

__all__ = ["fpn_backbone", "resnet_fpn_backbone", "cnn_fpn_backbone", "CNNWithFPN", "StageFeatures",
           "freeze_attention_norms", "load_backbone_weights", "DETECTION_BACKBONES"]

DETECTION_BACKBONES = IMAGENET_MODELS  # convattn's own networks that serve as detection backbones


def _frozen(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    f = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    f.weight.copy_(bn.weight.detach())
    f.bias.copy_(bn.bias.detach())
    f.running_mean.copy_(bn.running_mean)
    f.running_var.copy_(bn.running_var)
    return f


def freeze_attention_norms(model: nn.Module) -> int:
    """Replace the BatchNorm2d layers that attention modules declare (``attention_norms()``) by FrozenBatchNorm2d;
    returns how many were replaced."""
    count = 0
    for m in list(model.modules()):
        if isinstance(m, AttentionModule):
            for name, child in list(m.attention_norms()):
                if type(child) is nn.BatchNorm2d:
                    parent = m.get_submodule(name.rpartition(".")[0]) if "." in name else m
                    setattr(parent, name.rpartition(".")[2], _frozen(child))
                    count += 1
    return count


def _check_fpn_args(trainable_layers: int, returned_layers: list[int] | None) -> list[int]:
    """The returned stages (default 1-4) after checking both arguments' ranges (as torchvision)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
    returned_layers = returned_layers or [1, 2, 3, 4]
    if min(returned_layers) < 1 or max(returned_layers) > 4:
        raise ValueError(f"returned_layers must be within [1, 4], got {returned_layers}")
    return returned_layers


def fpn_backbone(
        name: str,
        variant: "str | AttachPlan | None" = None,
        trainable_layers: int = 3,
        returned_layers: list[int] | None = None,
        extra_blocks: ExtraFPNBlock | None = None,
        frozen_bn: bool = True,
        attn_norm_trainable: bool = False,
        out_channels: int = 256,
        **model_kwargs: Any,
) -> "CNNWithFPN":
    """The one detection backbone builder: a convattn ResNet or a timm/torchvision CNN with the variant's modules
    and an FPN over its last four stages (see the module docstring).

    Args:
        name: A convattn ImageNet-layout ResNet (``DETECTION_BACKBONES``) or ``"timm:<name>"`` / ``"torchvision:<name>"``.
        variant: Variant string or :class:`AttachPlan` (or ``attn=``/``conv=``/... in ``model_kwargs``).
        trainable_layers: Trainable stages counted from the deepest (0-5, as torchvision; 5 also trains the stem).
        returned_layers: Stages fed to the FPN (default [1, 2, 3, 4]).
        extra_blocks: FPN extra block (default ``LastLevelMaxPool``).
        frozen_bn: Frozen BatchNorm in the backbone (default) or trainable BatchNorm2d.
        attn_norm_trainable: Keep BatchNorm2d inside attention modules trainable when ``frozen_bn``.
        **model_kwargs: The network's own options, and plan options (``attn_kwargs``, ``identity``, ...).
    """
    returned_layers = _check_fpn_args(trainable_layers, returned_layers)
    plan, model_kwargs = split_plan_options(model_kwargs, variant)
    model_kwargs.setdefault("num_classes", 0)
    if is_backbone_name(name):
        body = build_model(name, **model_kwargs)
        if frozen_bn:
            from timm.layers import freeze_batch_norm_2d
            body = freeze_batch_norm_2d(body)
    elif name in DETECTION_BACKBONES:
        body = build_model(name, norm_layer=FrozenBatchNorm2d if frozen_bn else None, **model_kwargs)
    else:
        raise ValueError(f"detection backbones are the ImageNet-layout ResNets ({', '.join(DETECTION_BACKBONES)}) "
                         f"or a timm/torchvision CNN as 'timm:<name>' / 'torchvision:<name>'; got {name!r}")
    blocks, counts = stage_blocks(body)  # read off the plain network
    if len(counts) < 4:
        raise ValueError(f"{name}: the FPN needs 4 stages of blocks, found {len(counts)} ({counts} blocks)")
    first = len(counts) - 4  # the last four stages feed the FPN
    ends = {b.stage - first + 1: b for b in blocks if b.stage >= first and b.index == counts[b.stage] - 1}
    if not plan.is_plain:
        build_model(body, plan)  # attach
        if isinstance(body, ResNet) and not plan.identity:
            body.init_weights()  # attached modules initialised as the network's own layers
        if frozen_bn and not attn_norm_trainable:
            freeze_attention_norms(body)
    trainable = {s for s in range(1, 5) if s > 4 - trainable_layers}
    stage_of = {b.name: b.stage - first + 1 for b in blocks}
    for pname, p in body.named_parameters():
        block = next((n for n in stage_of if pname.startswith(n + ".")), None)
        keep = stage_of[block] in trainable if block is not None and stage_of[block] >= 1 else trainable_layers == 5
        p.requires_grad_(keep)
    return CNNWithFPN(body, [ends[s].name for s in returned_layers], [ends[s].channels for s in returned_layers],
                      out_channels, extra_blocks or LastLevelMaxPool())


def resnet_fpn_backbone(name: str = "resnet50", variant: "str | AttachPlan | None" = None, *args: Any,
                        **kwargs: Any) -> "CNNWithFPN":
    """:func:`fpn_backbone` for convattn's ImageNet-layout ResNets only."""
    if name not in DETECTION_BACKBONES:
        raise ValueError(f"detection backbones are the ImageNet-layout ResNets ({', '.join(DETECTION_BACKBONES)}) "
                         f"or a timm/torchvision CNN as 'timm:<name>' / 'torchvision:<name>'; got {name!r}")
    return fpn_backbone(name, variant, *args, **kwargs)


def cnn_fpn_backbone(name: str, *args: Any, **kwargs: Any) -> "CNNWithFPN":
    """:func:`fpn_backbone` for ``"timm:<name>"`` / ``"torchvision:<name>"`` CNNs only."""
    if not is_backbone_name(name):
        raise ValueError(f"cnn_fpn_backbone takes 'timm:<name>' / 'torchvision:<name>', got {name!r}")
    return fpn_backbone(name, *args, **kwargs)


def load_backbone_weights(backbone: "CNNWithFPN", state_dict: dict) -> LoadReport:
    """Load a convattn classification state dict (``convattn train``) into the detector's backbone network."""
    from ...models.weights import load_pretrained
    sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    return load_pretrained(backbone.body, sd)


class _Stop(Exception):
    """Raised by the last stage hook: the rest of the network (head) is not needed for features."""


class StageFeatures(nn.Module):
    """The outputs of named blocks of ``body`` (an ``OrderedDict`` as torchvision's ``IntermediateLayerGetter``),
    computed by running ``body`` and stopping after the last of them."""

    def __init__(self, body: nn.Module, block_names: list[str]) -> None:
        super().__init__()
        self.body = body
        self.block_names = list(block_names)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.run(self.body, self.block_names, x)

    @staticmethod
    def run(body: nn.Module, block_names: list[str], x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """The outputs of ``block_names`` when ``body`` runs on ``x`` (it stops after the last of them)."""
        store: dict[str, torch.Tensor] = {}
        last = len(block_names) - 1

        def hook(i: int):
            def fn(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
                store[str(i)] = out
                if i == last:
                    raise _Stop
            return fn

        handles = [body.get_submodule(n).register_forward_hook(hook(i)) for i, n in enumerate(block_names)]
        try:
            body(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return OrderedDict((str(i), store[str(i)]) for i in range(len(block_names)))


class CNNWithFPN(nn.Module):
    """A network and a ``FeaturePyramidNetwork`` over the outputs of named blocks of it (torchvision's
    ``BackboneWithFPN`` contract: ``out_channels``, an ``OrderedDict`` of maps). The network is ``body`` with its
    own keys, so a convattn ResNet's are those torchvision's ``IntermediateLayerGetter`` gave (``body.layer1...``)
    and checkpoints of both earlier builders load (see :meth:`_upgrade_keys`)."""

    def __init__(self, body: nn.Module, block_names: list[str], in_channels_list: list[int], out_channels: int,
                 extra_blocks: ExtraFPNBlock) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork
        self.body = body
        self.block_names = list(block_names)
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels
        self._register_load_state_dict_pre_hook(self._upgrade_keys)

    @staticmethod
    def _upgrade_keys(state_dict: dict, prefix: str, *args: Any) -> None:
        """The earlier timm/torchvision builder held the network one level deeper (``body.body.<keys>``):
        renamed on load."""
        old = prefix + "body.body."
        for k in [k for k in state_dict if k.startswith(old)]:
            state_dict[prefix + "body." + k[len(old):]] = state_dict.pop(k)

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(StageFeatures.run(self.body, self.block_names, x))
