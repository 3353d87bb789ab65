"""ResNets (ImageNet and CIFAR stems) that take attention modules and AW-convolutions by name.

ImageNet layout and state-dict keys follow torchvision's ``resnet.py`` (V1.5: the stride sits on the 3x3
conv of the bottleneck), so torchvision ResNet weights load into the plain model exactly and into
attention variants non-strictly (``convattn.models.load_pretrained`` reports the new keys). The CIFAR
ResNets follow He et al. 2016, section 4.2: a 3x3 stem with 16 channels, three stages of 16/32/64 channels
with n basic blocks each (depth 6n + 2) and parameter-free "option A" shortcuts (zero-padded identity).

Placement (the registry's ``kind`` of each module, see ``convattn.layers.contract``): block-output attention (SE, CBAM, ECA, STEAM) sits after the last BN of the
residual branch, before the shortcut addition, stored as ``block.attn``; GCT sits in front of every
convolution (stem, block convs, downsample conv), stored as ``gct_stem``/``block.gct1..3``/``block.gct_ds``
so torchvision keys stay unchanged; ``conv="aw"`` replaces the 3x3 convs of the residual blocks by
AWConv2d (``aw_convs="all"`` also the bottleneck 1x1 convs), whose static kernel keeps the conv's key.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import AWConv2d, create_attn
from ..layers.contract import resolve_placement
from ..layers.create_attn import get_attn_spec, split_attn_name

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "PadShortcut", "STEAM_DEFAULT_BLOCKS"]

# STEAM's paper-like default, the registry's "stage_ends" rule spelled out for these layouts: last block of every
# stage, plus the second-to-last of the third stage (5 units in a 4-stage ResNet). The 3-stage CIFAR nets use one
# unit per stage plus the second-to-last block of the middle stage (4 units).
STEAM_DEFAULT_BLOCKS = {4: {1: [-1], 2: [-1], 3: [-1, -2], 4: [-1]}, 3: {1: [-1], 2: [-1, -2], 3: [-1]}}

ConvFactory = Callable[..., nn.Module]


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


def _plain_conv(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                groups: int = 1, dilation: int = 1) -> nn.Module:
    return nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False)


def _identity_or(m: nn.Module | None) -> nn.Module:
    return nn.Identity() if m is None else m


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU, conv3x3-BN, attn, + shortcut, ReLU (torchvision keys)."""

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
            attn_layer: Callable[[int], nn.Module | None] | None = None,
            gct_layer: Callable[[int], nn.Module] | None = None,
            conv3x3: ConvFactory = _plain_conv,
            conv1x1: ConvFactory = _plain_conv,
    ) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.gct1 = _identity_or(gct_layer(inplanes) if gct_layer else None)
        self.conv1 = conv3x3(inplanes, planes, 3, stride, 1)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.gct2 = _identity_or(gct_layer(planes) if gct_layer else None)
        self.conv2 = conv3x3(planes, planes, 3, 1, 1)
        self.bn2 = norm_layer(planes)
        self.attn = _identity_or(attn_layer(planes) if attn_layer else None)
        has_ds_conv = isinstance(downsample, nn.Sequential)
        self.gct_ds = _identity_or(gct_layer(inplanes) if (gct_layer and has_ds_conv) else None)
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        if getattr(self.bn2, "weight", None) is not None:
            nn.init.zeros_(self.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(self.gct1(x))))
        out = self.bn2(self.conv2(self.gct2(out)))
        out = self.attn(out)
        if self.downsample is not None:
            shortcut = self.downsample(self.gct_ds(x))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """conv1x1-BN-ReLU, conv3x3(stride)-BN-ReLU, conv1x1-BN, attn, + shortcut, ReLU (torchvision V1.5 keys)."""

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
            attn_layer: Callable[[int], nn.Module | None] | None = None,
            gct_layer: Callable[[int], nn.Module] | None = None,
            conv3x3: ConvFactory = _plain_conv,
            conv1x1: ConvFactory = _plain_conv,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        outplanes = planes * self.expansion
        self.gct1 = _identity_or(gct_layer(inplanes) if gct_layer else None)
        self.conv1 = conv1x1(inplanes, width, 1)
        self.bn1 = norm_layer(width)
        self.gct2 = _identity_or(gct_layer(width) if gct_layer else None)
        self.conv2 = conv3x3(width, width, 3, stride, 1, groups)
        self.bn2 = norm_layer(width)
        self.gct3 = _identity_or(gct_layer(width) if gct_layer else None)
        self.conv3 = conv1x1(width, outplanes, 1)
        self.bn3 = norm_layer(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.attn = _identity_or(attn_layer(outplanes) if attn_layer else None)
        has_ds_conv = isinstance(downsample, nn.Sequential)
        self.gct_ds = _identity_or(gct_layer(inplanes) if (gct_layer and has_ds_conv) else None)
        self.downsample = downsample
        self.stride = stride

    def zero_init_last(self) -> None:
        if getattr(self.bn3, "weight", None) is not None:
            nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        out = self.relu(self.bn1(self.conv1(self.gct1(x))))
        out = self.relu(self.bn2(self.conv2(self.gct2(out))))
        out = self.bn3(self.conv3(self.gct3(out)))
        out = self.attn(out)
        if self.downsample is not None:
            shortcut = self.downsample(self.gct_ds(x))
        return self.relu(out + shortcut)


def _resolve_blocks(spec: Any, layers: Sequence[int]) -> set[tuple[int, int]]:
    """Attention placement -> set of (stage, block) pairs, both 0-based."""
    if spec is None or spec == "all":
        return {(s, b) for s, n in enumerate(layers) for b in range(n)}
    if isinstance(spec, dict):
        items = spec.items()
    elif isinstance(spec, (list, tuple)) and len(spec) == len(layers):
        items = ((s + 1, v) for s, v in enumerate(spec))
    else:
        raise ValueError(f"attn_blocks must be 'all', a dict {{stage: [block indices]}} (stages from 1) or a list "
                         f"of {len(layers)} per-stage index lists; got {spec!r}")
    out = set()
    for stage, idxs in items:
        if not 1 <= int(stage) <= len(layers):
            raise ValueError(f"attn_blocks names stage {stage}, but this model has stages 1..{len(layers)}")
        n = layers[int(stage) - 1]
        for i in ([idxs] if isinstance(idxs, int) else idxs):
            if not -n <= i < n:
                raise ValueError(f"attn_blocks: stage {stage} has {n} blocks, index {i} is out of range")
            out.add((int(stage) - 1, i % n))
    return out


def _stage_kwargs(kwargs: dict[str, Any], stage: int, num_stages: int) -> dict[str, Any]:
    """A list value in attention kwargs is taken per stage (e.g. ECA kernel_size=[3, 5, 5, 7])."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, list):
            if len(v) != num_stages:
                raise ValueError(f"per-stage attention option {k}={v} needs {num_stages} values (one per stage)")
            v = v[stage]
        out[k] = v
    return out


class ResNet(nn.Module):
    """ResNet with pluggable attention.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: Blocks per stage (4 stages for ImageNet stems, 3 for CIFAR).
        num_classes: Classifier outputs (0 = no classifier, features only).
        in_chans: Input image channels.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool) or ``"cifar"`` (3x3/1 conv).
        widths: Stage widths (``planes``).
        attn: Attention name(s) for ``create_attn`` (``"se"``, ``"cbam"``, ``"eca"``, ``"gct"``, ``"steam"``,
            ``"se+eca"``...), or None.
        attn_kwargs: Options of the attention modules; a list value is taken per stage.
        attn_blocks: Which blocks get block-output attention: ``"all"``, ``{stage: [indices]}`` or per-stage
            lists. Default: all blocks, except STEAM, whose default is ``STEAM_DEFAULT_BLOCKS``.
        gct_placement: ``"every_conv"`` (official, before every conv) or ``"per_block"`` (before conv1 only).
        conv: None or ``"aw"`` (AWConv2d for the 3x3 convs of the residual blocks).
        conv_kwargs: AWConv2d options (mode, reduction, min_hidden, ...).
        aw_convs: ``"3x3"`` or ``"all"`` (also the bottleneck's 1x1 convs).
        shortcut: ``"B"`` (1x1 conv + BN projection) or ``"A"`` (parameter-free zero padding).
        norm_layer: Normalisation layer (``FrozenBatchNorm2d`` for detection).
        zero_init_last: Zero the last BN gamma of every block.
        drop_rate: Dropout before the classifier.
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
            attn: str | Callable[..., nn.Module] | None = None,
            attn_kwargs: dict[str, Any] | None = None,
            attn_blocks: Any = None,
            gct_placement: str = "every_conv",
            conv: str | None = None,
            conv_kwargs: dict[str, Any] | None = None,
            aw_convs: str = "3x3",
            shortcut: str = "B",
            norm_layer: Callable[[int], nn.Module] | None = None,
            zero_init_last: bool = False,
            drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if len(layers) != len(widths) or len(layers) not in (3, 4):
            raise ValueError(f"layers {tuple(layers)} and widths {tuple(widths)} must both have 3 or 4 stages")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if gct_placement not in ("every_conv", "per_block"):
            raise ValueError(f"gct_placement must be 'every_conv' or 'per_block', got {gct_placement!r}")
        if conv not in (None, "", "none", "aw"):
            raise ValueError(f"Unknown conv {conv!r}. Valid: None (plain nn.Conv2d) or 'aw' (AWConv2d)")
        if aw_convs not in ("3x3", "all"):
            raise ValueError(f"aw_convs must be '3x3' or 'all', got {aw_convs!r}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
            raise ValueError(f"num_classes must be an int >= 0 (0: no classifier, features only), got {num_classes!r}")
        norm_layer = norm_layer or nn.BatchNorm2d
        attn_kwargs = dict(attn_kwargs or {})
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.stem = stem
        self.attn_name = attn if isinstance(attn, str) or attn is None else getattr(attn, "__name__", str(attn))
        self.conv_name = "aw" if conv == "aw" else None
        self.groups, self.base_width = groups, width_per_group

        # split pre-convolution modules (GCT) from block-output attention, by their registered kind
        parts = split_attn_name(attn) if isinstance(attn, str) and attn.strip().lower() not in ("", "none") else []
        pre_parts = [p for p in parts if get_attn_spec(p).kind == "pre_conv"]
        if len(pre_parts) > 1:
            raise ValueError(f"at most one pre-convolution attention per model, got {'+'.join(pre_parts)}")
        out_parts = [p for p in parts if p not in pre_parts]
        out_attn: Any = "+".join(out_parts) if isinstance(attn, str) or attn is None else attn
        if not isinstance(attn, str) and attn is not None:
            out_parts = ["custom"]
        num_stages = len(layers)
        out_spec = get_attn_spec(out_parts[0]) if len(out_parts) == 1 and out_parts != ["custom"] else None
        if attn_blocks is None and out_spec is not None:
            placed = resolve_placement(out_spec.placement)(list(layers))
        else:
            placed = _resolve_blocks(attn_blocks, layers)
        self.attn_blocks = sorted(placed)

        aw_kwargs = dict(conv_kwargs or {})
        aw_kwargs.setdefault("mode", "full" if stem == "cifar" else "full_g")

        def aw_conv(in_ch, out_ch, k, stride=1, padding=0, groups=1, dilation=1):
            return AWConv2d(in_ch, out_ch, k, stride, padding, dilation, groups, False, **aw_kwargs)

        conv3x3 = aw_conv if conv == "aw" else _plain_conv
        conv1x1 = aw_conv if (conv == "aw" and aw_convs == "all") else _plain_conv

        gct_kwargs = attn_kwargs if not out_parts else {}  # with other modules, GCT keeps its defaults

        def gct_factory(stage: int) -> Callable[[int], nn.Module] | None:
            if not pre_parts:
                return None
            kw = _stage_kwargs(gct_kwargs, stage, num_stages)
            return lambda c: create_attn(pre_parts[0], c, **kw)

        stem_width = widths[0]
        self.inplanes = stem_width
        stem_gct = gct_factory(0) if gct_placement == "every_conv" else None
        self.gct_stem = stem_gct(in_chans) if stem_gct else nn.Identity()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = norm_layer(stem_width)
        self.relu = nn.ReLU(inplace=True)

        feature_stride = 4 if stem == "imagenet" else 1
        self.feature_info: list[dict[str, Any]] = []
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
            kw = _stage_kwargs(attn_kwargs, s, num_stages) if out_parts else {}
            if kw.get("ogp_size") == "input/32":  # STEAM's OGP grid from the input size
                kw["feature_stride"] = feature_stride
            if out_spec is not None and out_spec.inplace_ok:
                kw.setdefault("inplace", True)  # the block's bn output is a temporary: gate it in place in inference
            gct = gct_factory(s)
            blocks = []
            for b in range(n):
                attn_layer = None
                if out_parts and (s, b) in placed:
                    attn_layer = lambda c, _kw=kw: create_attn(out_attn, c, **_kw)  # noqa: E731
                gct_layer = gct if (gct_placement == "every_conv" or gct is None) else None
                blk = block(self.inplanes, planes, stride if b == 0 else 1, downsample if b == 0 else None,
                            groups, width_per_group, norm_layer, attn_layer, gct_layer, conv3x3, conv1x1)
                if gct is not None and gct_placement == "per_block":
                    blk.gct1 = gct(self.inplanes)
                blocks.append(blk)
                self.inplanes = outplanes
            self.add_module(f"layer{s + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=outplanes, reduction=feature_stride, module=f"layer{s + 1}"))
        if num_stages == 3:
            self.layer4 = nn.Sequential()  # keeps forward uniform; holds no parameters

        self.num_features = self.inplanes
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.drop_rate = drop_rate
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self._init_weights(zero_init_last)

    def _init_weights(self, zero_init_last: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # attention modules restore their own init (AW's zero PW2, GCT's identity)
            if hasattr(m, "reset_attention_parameters"):
                m.reset_attention_parameters()
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    m.zero_init_last()

    def no_weight_decay(self) -> set[str]:
        """Full names of parameters that their modules exclude from weight decay (e.g. GCT's beta)."""
        names = set()
        for prefix, m in self.named_modules():
            if m is not self and hasattr(m, "no_weight_decay"):
                names |= {f"{prefix}.{n}" if prefix else n for n in m.no_weight_decay()}
        return names

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_scripting() or torch.jit.is_tracing()):
            if x.ndim != 4 or x.shape[1] != self.in_chans:
                raise ValueError(f"{type(self).__name__} expects input (N, {self.in_chans}, H, W), got shape "
                                 f"{tuple(x.shape)}; build the model with in_chans={x.shape[1] if x.ndim == 4 else '?'} "
                                 "or convert the images")
        x = self.relu(self.bn1(self.conv1(self.gct_stem(x))))
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
