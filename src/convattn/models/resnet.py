"""ResNets (ImageNet and CIFAR stems): the plain networks. Attention goes in through ``convattn.attach``.

ImageNet layout and state-dict keys follow torchvision's ``resnet.py`` (V1.5: the stride sits on the 3x3
conv of the bottleneck), so torchvision ResNet weights load into the plain model exactly. The CIFAR ResNets follow
He et al. 2016, section 4.2: a 3x3 stem with 16 channels, three stages of 16/32/64 channels with n basic blocks
each (depth 6n + 2) and parameter-free "option A" shortcuts (zero-padded identity).

This file holds no attention code: ``create_model("resnet50", attn=..., conv=...)`` builds the plain network
and calls :func:`convattn.attach`, which reads the blocks off the computation like any other CNN's (block-output
attention after the branch's last BN, ``bn2``/``bn3``; GCT before every convolution; AW for the 3x3 convolutions
of the blocks). Run folders written before attention moved out of this class (keys ``layerX.Y.attn``,
``gct_stem``, ``layerX.Y.gctN``, ``gct_ds``) load through :func:`upgrade_state_dict`, applied on load.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath

from ..layers.helpers import is_exporting, refuse_torchscript
from ..layers.contract import declared_no_weight_decay

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "PadShortcut", "upgrade_state_dict"]


class PadShortcut(nn.Module):
    """CIFAR "option A" shortcut: stride-2 subsampling and zero channels padded on both sides."""

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes or (out_planes - in_planes) % 2:
            raise ValueError(f"option-A shortcut needs an even channel increase, got {in_planes} -> {out_planes}")
        self.stride = stride
        self.pad = (out_planes - in_planes) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::self.stride, ::self.stride]  # (N, C, H/s, W/s)
        return F.pad(x, (0, 0, 0, 0, self.pad, self.pad))  # (N, C + 2 pad, H/s, W/s)


def _conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, + shortcut, ReLU (torchvision keys)."""

    expansion = 1

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: nn.Module | None = None,
            groups: int = 1,
            base_width: int = 64,
            norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
            drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = _conv(inplanes, planes, 3, stride, 1)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv(planes, planes, 3, 1, 1)
        self.bn2 = norm_layer(planes)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth of the branch
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        if getattr(self.bn2, "weight", None) is not None:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.drop_path(self.bn2(self.conv2(out)))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut  # in place, as torchvision: the branch output is a temporary no backward needs
        return self.relu(out)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1-BN, + shortcut, ReLU (torchvision V1.5 keys)."""

    expansion = 4

    def __init__(
            self,
            inplanes: int,
            planes: int,
            stride: int = 1,
            downsample: nn.Module | None = None,
            groups: int = 1,
            base_width: int = 64,
            norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
            drop_path: float = 0.0,
            stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        outplanes = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)  # ResNet v1 (stride on conv1) or v1.5 (on conv2)
        self.conv1 = _conv(inplanes, width, 1, s1)
        self.bn1 = norm_layer(width)
        self.conv2 = _conv(width, width, 3, s3, 1, groups)
        self.bn2 = norm_layer(width)
        self.conv3 = _conv(width, outplanes, 1)
        self.bn3 = norm_layer(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth of the branch
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.drop_path(self.bn3(self.conv3(out)))
        if self.downsample is not None:
            shortcut = self.downsample(x)
        out += shortcut  # in place, as torchvision: the branch output is a temporary no backward needs
        return self.relu(out)


# Keys of ResNets built before attention moved out of this class -> keys of plain ResNet + attach
_LEGACY_KEYS = (
    (re.compile(r"^gct_stem\."), "conv1.attn."),
    (re.compile(r"^(layer\d+\.\d+)\.gct_ds\."), r"\1.downsample.0.attn."),
    (re.compile(r"^(layer\d+\.\d+)\.gct(\d)\."), r"\1.conv\2.attn."),
)


def upgrade_state_dict(state_dict: Mapping[str, Any], block: type[nn.Module]) -> dict[str, Any]:
    """Rename the keys of a state dict written by convattn's ResNets before they were built as plain network +
    ``attach``: block attention ``layerX.Y.attn.*`` -> ``layerX.Y.bn2.attn.*`` (``bn3`` in bottlenecks), GCT
    ``gct_stem`` -> ``conv1.attn``, ``layerX.Y.gctN`` -> ``layerX.Y.convN.attn``, ``gct_ds`` ->
    ``downsample.0.attn``. Current keys pass unchanged."""
    last_bn = "bn3" if block is Bottleneck else "bn2"
    out = {}
    for k, v in state_dict.items():
        for pat, rep in _LEGACY_KEYS:
            k = pat.sub(rep, k)
        k = re.sub(r"^(layer\d+\.\d+)\.attn\.", rf"\1.{last_bn}.attn.", k)
        out[k] = v
    return out


def _check_image_batch(x: torch.Tensor, in_chans: int, name: str) -> None:
    """A ValueError for input that is not (N, in_chans, H, W); skipped while a graph is traced or exported (the
    timm way: no Python branching on traced shapes)."""
    if torch.jit.is_scripting() or is_exporting() or isinstance(x, torch.fx.Proxy):
        return
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name} expects input (N, {in_chans}, H, W), got shape {tuple(x.shape)}; build the model "
                         f"with in_chans={x.shape[1] if x.ndim == 4 else '?'} or convert the images")


def _drop_path_rates(rate: float, n: int) -> list[float]:
    """Stochastic-depth rate of each of ``n`` blocks: linear from 0 to ``rate`` (timm's rule)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}")
    return [rate * i / max(n - 1, 1) for i in range(n)]


class ResNet(nn.Module):
    """A plain ResNet (attention goes in through ``convattn.attach``; ``create_model`` does both).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: Blocks per stage (4 stages for ImageNet stems, 3 for CIFAR).
        num_classes: Classifier outputs (0 = no classifier, pooled features).
        in_chans: Input image channels.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool) or ``"cifar"`` (3x3/1 conv).
        widths: Stage widths (``planes``).
        shortcut: ``"B"`` (1x1 conv + BN projection) or ``"A"`` (parameter-free zero padding).
        norm_layer: Normalisation layer (``FrozenBatchNorm2d`` for detection).
        zero_init_last: Zero the last BN gamma of every block.
        drop_rate: Dropout before the classifier.
        drop_path_rate: Stochastic depth: the residual branch of block i (of n) is dropped with probability
            ``drop_path_rate * i / (n - 1)`` in training (timm's linear rule).
        global_pool: Pooling before the classifier (``"avg"``, ``"max"``, ``"avgmax"``, ``"catavgmax"``, or
            ``""`` for none), as timm's ``SelectAdaptivePool2d``.
        stride_in_1x1: Bottleneck stride on the first 1x1 conv (ResNet v1, the layout of the official GCT and
            original ResNets) instead of the 3x3 conv (v1.5, torchvision's; the default). Same parameters.
    """

    def __init__(
            self,
            block: type[BasicBlock] | type[Bottleneck],
            layers: Sequence[int],
            num_classes: int = 1000,
            in_chans: int = 3,
            stem: str = "imagenet",
            widths: Sequence[int] = (64, 128, 256, 512),
            groups: int = 1,
            width_per_group: int = 64,
            shortcut: str = "B",
            norm_layer: Callable[[int], nn.Module] | None = None,
            zero_init_last: bool = False,
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        if stride_in_1x1 and block is not Bottleneck:
            raise ValueError("stride_in_1x1 applies to Bottleneck ResNets (50 and deeper); BasicBlock has no 1x1 conv")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if len(layers) != len(widths) or len(layers) not in (3, 4):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} must both have 3 or 4 stages")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier, pooled features), got {num_classes!r}")
        norm_layer = norm_layer or nn.BatchNorm2d
        self.block = block
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stem = stem
        self.groups, self.base_width = groups, width_per_group
        self.zero_init_last = zero_init_last

        stem_width = widths[0]
        self.inplanes = stem_width
        # registered in the order forward runs them (timm's FeatureListNet replays the children in order)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()

        feature_stride = 4 if stem == "imagenet" else 1
        # timm's feature points: the stem's activation, then each stage's output
        self.feature_info: list[dict[str, Any]] = [dict(num_chs=stem_width, reduction=feature_stride // 2 or 1,
                                                        module="relu")]
        block_rates = iter(_drop_path_rates(drop_path_rate, sum(layers)))
        num_stages = len(layers)
        for s, (planes, n) in enumerate(zip(widths, layers)):
            stride = 1 if s == 0 else 2
            feature_stride *= stride
            downsample = None
            outplanes = planes * block.expansion
            if stride != 1 or self.inplanes != outplanes:
                if shortcut == "A":
                    downsample = PadShortcut(self.inplanes, outplanes, stride)
                else:
                    downsample = nn.Sequential(
                        nn.Conv2d(self.inplanes, outplanes, 1, stride, bias=False), norm_layer(outplanes))
            blocks = []
            for b in range(n):
                extra = dict(stride_in_1x1=True) if stride_in_1x1 else {}
                blocks.append(block(self.inplanes, planes, stride if b == 0 else 1, downsample if b == 0 else None,
                                    groups, width_per_group, norm_layer, next(block_rates), **extra))
                self.inplanes = outplanes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=outplanes, reduction=feature_stride, module=f"layer{s + 1}"))
        if num_stages == 3:
            self.layer4 = nn.Sequential()  # keeps forward uniform; holds no parameters

        self.num_features = self.head_hidden_size = self.inplanes
        self.num_stages = num_stages
        self.grad_checkpointing = False
        self.drop_rate = drop_rate
        self.global_pool, self.fc = self._head(num_classes, global_pool)
        self.init_weights()
        self._register_load_state_dict_pre_hook(self._upgrade_keys)

    def _upgrade_keys(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Load-time key map for run folders written before attention moved out of this class."""
        mine = {k[len(prefix):]: k for k in state_dict if k.startswith(prefix)}
        new = upgrade_state_dict({k: None for k in mine}, self.block)
        for (old_rel, full), new_rel in zip(mine.items(), new):
            if new_rel != old_rel:
                state_dict[prefix + new_rel] = state_dict.pop(full)

    def _head(self, num_classes: int, global_pool: str) -> tuple[nn.Module, nn.Module]:
        from timm.layers import SelectAdaptivePool2d
        pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))  # no pooling: keep (N, C, H, W)
        feats = self.num_features * pool.feat_mult()
        return pool, (nn.Linear(feats, num_classes) if num_classes > 0 else nn.Identity())

    def init_weights(self) -> None:
        """He (fan-out) init of every convolution, unit/zero norms, then each attention module's own init (AW's
        zero PW2, GCT's identity): ``create_model`` calls it again after attaching, so attached modules are
        initialised as the network's own layers are (as timm's SE/ECA ResNets do)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # attention modules restore their own init (AW's zero PW2, GCT's identity)
            if hasattr(m, "reset_attention_parameters"):
                m.reset_attention_parameters()
        if self.zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    @property
    def default_input_size(self) -> int:
        """The input side the network was designed for: 32 with the CIFAR stem, else 224 (ImageNet)."""
        return 32 if self.stem == "cifar" else 224

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters that their modules exclude from weight decay (e.g. GCT's beta)."""
        return declared_no_weight_decay(self)

    def __prepare_scriptable__(self) -> "ResNet":
        """Called by ``torch.jit.script``: refused with the reason and the routes that work."""
        refuse_torchscript()

    # --- timm model API ---

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise decay: the stem, then each stage (``coarse``) or each block."""
        return dict(stem=r"^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new (re-initialised) classifier for ``num_classes`` (0: none, features only) and optionally pooling."""
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        ref = self.conv1.weight  # the new head lives where the model lives (device, dtype, train/eval)
        self.global_pool, self.fc = self._head(num_classes, pool)
        self.global_pool.train(self.training)
        self.fc.to(device=ref.device, dtype=ref.dtype).train(self.training)

    def _stages(self) -> list[nn.Module]:
        return [self.layer1, self.layer2, self.layer3, self.layer4][:self.num_stages]

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting() and len(stage) > 0:
            from timm.models import checkpoint_seq
            return checkpoint_seq(stage, x)
        return stage(x)

    def forward_intermediates(self, x: torch.Tensor, indices: int | list[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The final features and the feature maps at ``feature_info``'s points (stem, then every stage).

        Args:
            indices: The last n points if an int, all if None, else the listed ones.
            norm: Unused (no final norm in a ResNet); kept for timm's signature.
            stop_early: Skip the stages after the last requested point.
            intermediates_only: Return only the list.
        """
        from timm.models._features import feature_take_indices
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW', got {output_fmt!r}")
        take, last = feature_take_indices(len(self.feature_info), indices)
        feats = []
        _check_image_batch(x, self.in_chans, type(self).__name__)
        x = self.relu(self.bn1(self.conv1(x)))
        if 0 in take:
            feats.append(x)
        x = self.maxpool(x)
        for i, stage in enumerate(self._stages(), start=1):
            if stop_early and i > last:
                break
            x = self._run_stage(stage, x)
            if i in take:
                feats.append(x)
        return feats if intermediates_only else (x, feats)

    def prune_intermediate_layers(self, indices: int | list[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """Drop the stages after the last point in ``indices`` (and the head); returns the kept indices."""
        from timm.models._features import feature_take_indices
        take, last = feature_take_indices(len(self.feature_info), indices)
        for i in range(last + 1, self.num_stages + 1):
            setattr(self, f"layer{i}", nn.Sequential())
        if prune_head:
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        _check_image_batch(x, self.in_chans, type(self).__name__)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        for stage in self._stages():
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
