"""Any convattn ResNet (any ``attn``/``conv`` variant), or a timm/torchvision CNN with convattn modules attached
(``"timm:<name>"``, ``"torchvision:<name>"``), as a torchvision FPN backbone.

The route is torchvision's ``BackboneWithFPN``: ``IntermediateLayerGetter`` over ``layer1..layer4`` plus a
``FeaturePyramidNetwork``. Batch norm is frozen by default (``FrozenBatchNorm2d``, as torchvision and
mmdetection do for detection). Norms inside attention modules (CBAM's spatial-gate BN) follow the backbone
and are frozen too, unless ``attn_norm_trainable=True`` keeps them as trainable ``BatchNorm2d``; attention
parameters themselves train whenever their stage is trainable. AWConv2d works per sample, so any batch size and
image size the detector's transform produces is fine.

Other CNNs (:func:`cnn_fpn_backbone`): the FPN takes the output of the last block of each of the last four stages
(output strides 4, 8, 16, 32 in the usual CNNs), found from the blocks ``attach`` reads off one dry forward
pass, so channel counts are never written down. The body's BatchNorms are frozen before the modules are attached.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ...layers import AttentionModule
from ...models import IMAGENET_MODELS, create_model, parse_variant
from ...models.attach import attach, stage_blocks
from ...models.backbones import create_backbone, is_backbone_name
from ...models.helpers import LoadReport

__all__ = ["resnet_fpn_backbone", "cnn_fpn_backbone", "fpn_backbone", "freeze_attention_norms", "DETECTION_BACKBONES"]

DETECTION_BACKBONES = IMAGENET_MODELS  # convattn ResNets with an FPN builder of their own
_STAGES = ["layer4", "layer3", "layer2", "layer1", "conv1"]


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


def resnet_fpn_backbone(
        name: str = "resnet50",
        variant: str | None = None,
        trainable_layers: int = 3,
        returned_layers: list[int] | None = None,
        extra_blocks: ExtraFPNBlock | None = None,
        frozen_bn: bool = True,
        attn_norm_trainable: bool = False,
        out_channels: int = 256,
        **model_kwargs: Any,
) -> BackboneWithFPN:
    """Build ``create_model(name, ...)`` as an FPN backbone.

    Args:
        name: An ImageNet-layout ResNet (``DETECTION_BACKBONES``).
        variant: Variant string (``"steam"``, ``"se+aw"``); or pass ``attn=``/``conv=`` in ``model_kwargs``.
        trainable_layers: Trainable stages counted from layer4 (0-5, as torchvision; 5 also trains the stem).
        returned_layers: Stages fed to the FPN (default [1, 2, 3, 4]).
        extra_blocks: FPN extra block (default ``LastLevelMaxPool``).
        frozen_bn: FrozenBatchNorm2d in the backbone (default) or trainable BatchNorm2d.
        attn_norm_trainable: Keep BatchNorm2d inside attention modules trainable when ``frozen_bn``.
    """
    if name not in DETECTION_BACKBONES:
        raise ValueError(f"detection backbones are the ImageNet-layout ResNets ({', '.join(DETECTION_BACKBONES)}) "
                         f"or a timm/torchvision CNN as 'timm:<name>' / 'torchvision:<name>'; got {name!r}")
    returned_layers = _check_fpn_args(trainable_layers, returned_layers)
    if variant is not None:
        model_kwargs.update(parse_variant(variant))
    model_kwargs.setdefault("num_classes", 0)
    body = create_model(name, norm_layer=FrozenBatchNorm2d if frozen_bn else None, **model_kwargs)
    if frozen_bn and not attn_norm_trainable:
        freeze_attention_norms(body)
    train_prefixes = _STAGES[:trainable_layers] + (["bn1"] if trainable_layers == 5 else [])
    for pname, p in body.named_parameters():
        if not any(pname.startswith(layer) for layer in train_prefixes):
            p.requires_grad_(False)
    in_stage2 = body.inplanes // 8
    in_channels_list = [in_stage2 * 2 ** (i - 1) for i in returned_layers]
    return_layers = {f"layer{k}": str(v) for v, k in enumerate(returned_layers)}
    return BackboneWithFPN(body, return_layers, in_channels_list, out_channels,
                           extra_blocks=extra_blocks or LastLevelMaxPool())


def load_backbone_weights(backbone: BackboneWithFPN, state_dict: dict) -> LoadReport:
    """Load a convattn classification state dict (``convattn train``) into the detector's backbone body."""
    from ...models.helpers import load_pretrained
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
        store: dict[str, torch.Tensor] = {}
        last = len(self.block_names) - 1

        def hook(i: int):
            def fn(mod: nn.Module, inp: Any, out: torch.Tensor) -> None:
                store[str(i)] = out
                if i == last:
                    raise _Stop
            return fn

        handles = [self.body.get_submodule(n).register_forward_hook(hook(i)) for i, n in enumerate(self.block_names)]
        try:
            self.body(x)
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        return OrderedDict((str(i), store[str(i)]) for i in range(len(self.block_names)))


class _CNNWithFPN(nn.Module):
    def __init__(self, features: StageFeatures, in_channels_list: list[int], out_channels: int,
                 extra_blocks: ExtraFPNBlock) -> None:
        super().__init__()
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork
        self.body = features
        self.fpn = FeaturePyramidNetwork(in_channels_list, out_channels, extra_blocks=extra_blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        return self.fpn(self.body(x))


def cnn_fpn_backbone(
        name: str,
        variant: str | None = None,
        trainable_layers: int = 3,
        returned_layers: list[int] | None = None,
        extra_blocks: ExtraFPNBlock | None = None,
        frozen_bn: bool = True,
        attn_norm_trainable: bool = False,
        out_channels: int = 256,
        **model_kwargs: Any,
) -> nn.Module:
    """A ``"timm:<name>"`` / ``"torchvision:<name>"`` CNN with the variant's modules attached, as an FPN backbone.

    Stages are those of ``attach`` (blocks grouped by output stride); the FPN reads the last four
    (``returned_layers`` picks among them, 1-4 as for ResNets). ``trainable_layers`` counts those stages from the
    deepest; 5 also trains everything before them (stem, earlier stages).
    """
    returned_layers = _check_fpn_args(trainable_layers, returned_layers)
    parsed = parse_variant(variant) if variant is not None else {"attn": model_kwargs.pop("attn", None),
                                                                   "conv": model_kwargs.pop("conv", None)}
    attn_kwargs, conv_kwargs = model_kwargs.pop("attn_kwargs", None), model_kwargs.pop("conv_kwargs", None)
    model_kwargs.setdefault("num_classes", 0)
    body = create_backbone(name, **model_kwargs)  # plain: norms are frozen before attention is attached
    if frozen_bn:
        from timm.layers import freeze_batch_norm_2d
        body = freeze_batch_norm_2d(body)
    blocks, counts = stage_blocks(body)
    if len(counts) < 4:
        raise ValueError(f"{name}: the FPN needs 4 stages of blocks, found {len(counts)} ({counts} blocks)")
    first = len(counts) - 4  # the last four stages feed the FPN
    ends = {b.stage - first + 1: b for b in blocks if b.stage >= first and b.index == counts[b.stage] - 1}
    trainable = {s for s in range(1, 5) if s > 4 - trainable_layers}
    if parsed.get("attn") or parsed.get("conv"):
        attach(body, parsed["attn"], parsed.get("conv"), where=parsed.get("attn_blocks"), attn_kwargs=attn_kwargs,
               conv_kwargs=conv_kwargs)
        if frozen_bn and not attn_norm_trainable:
            freeze_attention_norms(body)
    stage_of = {b.name: b.stage - first + 1 for b in blocks}
    for pname, p in body.named_parameters():
        block = next((n for n in stage_of if pname.startswith(n + ".")), None)
        keep = stage_of[block] in trainable if block is not None and stage_of[block] >= 1 else trainable_layers == 5
        p.requires_grad_(keep)
    features = StageFeatures(body, [ends[s].name for s in returned_layers])
    return _CNNWithFPN(features, [ends[s].channels for s in returned_layers], out_channels,
                       extra_blocks or LastLevelMaxPool())


def fpn_backbone(name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """:func:`resnet_fpn_backbone` for convattn's ResNets, :func:`cnn_fpn_backbone` for timm/torchvision names."""
    return (cnn_fpn_backbone if is_backbone_name(name) else resnet_fpn_backbone)(name, *args, **kwargs)
