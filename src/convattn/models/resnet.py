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

from timm.layers import DropPath

from ..layers import AWConv2d, create_attn
from ..layers.helpers import is_exporting, refuse_torchscript
from ..layers.contract import declared_no_weight_decay, resolve_placement
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
            drop_path: float = 0.0,
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
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth of the branch
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
        out = self.drop_path(self.attn(out))
        if self.downsample is not None:
            shortcut = self.downsample(self.gct_ds(x))
        out += shortcut  # in place, as torchvision: the branch output is a temporary no backward needs
        return self.relu(out)


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
            drop_path: float = 0.0,
            stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        outplanes = planes * self.expansion
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)  # ResNet v1 (stride on conv1) or v1.5 (on conv2)
        self.gct1 = _identity_or(gct_layer(inplanes) if gct_layer else None)
        self.conv1 = conv1x1(inplanes, width, 1, s1)
        self.bn1 = norm_layer(width)
        self.gct2 = _identity_or(gct_layer(width) if gct_layer else None)
        self.conv2 = conv3x3(width, width, 3, s3, 1, groups)
        self.bn2 = norm_layer(width)
        self.gct3 = _identity_or(gct_layer(width) if gct_layer else None)
        self.conv3 = conv1x1(width, outplanes, 1)
        self.bn3 = norm_layer(outplanes)
        self.relu = nn.ReLU(inplace=True)
        self.attn = _identity_or(attn_layer(outplanes) if attn_layer else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()  # stochastic depth of the branch
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
        out = self.drop_path(self.attn(out))
        if self.downsample is not None:
            shortcut = self.downsample(self.gct_ds(x))
        out += shortcut  # in place, as torchvision: the branch output is a temporary no backward needs
        return self.relu(out)


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


# ECA kernel sizes per stage of the released ECA-Net50 / ECA-Net101 (BangguWu/ECANet, k_size=[3, 5, 5, 7])
ECA_RELEASED_KERNELS = (3, 5, 5, 7)


def _eca_kernels(rule: str | Sequence[int], num_stages: int) -> list[int] | None:
    """Per-stage ECA kernel sizes: ``"adaptive"`` (None: each module's formula from its channels), ``"released"``
    (the released ECA-Net50/101's 3, 5, 5, 7) or an explicit list."""
    if rule == "adaptive":
        return None
    ks = ECA_RELEASED_KERNELS if rule == "released" else rule
    if isinstance(ks, str) or len(ks) != num_stages:
        raise ValueError(f"eca_kernels must be 'adaptive', 'released' (3, 5, 5, 7; 4-stage ResNets) or {num_stages} "
                         f"odd sizes, one per stage; got {rule!r}")
    return [int(k) for k in ks]


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
        drop_path_rate: Stochastic depth: the residual branch of block i (of n) is dropped with probability
            ``drop_path_rate * i / (n - 1)`` in training (timm's linear rule).
        global_pool: Pooling before the classifier (``"avg"``, ``"max"``, ``"avgmax"``, ``"catavgmax"``, or
            ``""`` for none), as timm's ``SelectAdaptivePool2d``.
        stride_in_1x1: Bottleneck stride on the first 1x1 conv (ResNet v1, the layout of the official GCT and
            original ResNets) instead of the 3x3 conv (v1.5, torchvision's; the default). Same parameters.
        eca_kernels: Per-stage ECA kernel sizes when ECA is the attention and ``attn_kwargs`` sets no
            ``kernel_size``: ``"adaptive"`` (the paper's formula from the channels), ``"released"`` (3, 5, 5, 7 of
            the released ECA-Net50/101; the default of convattn's ResNet-50/101) or a list.
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
            drop_path_rate: float = 0.0,
            global_pool: str = "avg",
            stride_in_1x1: bool = False,
            eca_kernels: str | Sequence[int] = "adaptive",
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
        eca_sizes = _eca_kernels(eca_kernels, num_stages)
        if out_parts == ["eca"] and "kernel_size" not in attn_kwargs and eca_sizes is not None:
            attn_kwargs["kernel_size"] = eca_sizes
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
                extra = dict(stride_in_1x1=True) if stride_in_1x1 else {}
                blk = block(self.inplanes, planes, stride if b == 0 else 1, downsample if b == 0 else None,
                            groups, width_per_group, norm_layer, attn_layer, gct_layer, conv3x3, conv1x1,
                            next(block_rates), **extra)
                if gct is not None and gct_placement == "per_block":
                    blk.gct1 = gct(self.inplanes)
                blocks.append(blk)
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
        self._init_weights(zero_init_last)

    def _head(self, num_classes: int, global_pool: str) -> tuple[nn.Module, nn.Module]:
        from timm.layers import SelectAdaptivePool2d
        pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))  # no pooling: keep (N, C, H, W)
        feats = self.num_features * pool.feat_mult()
        return pool, (nn.Linear(feats, num_classes) if num_classes > 0 else nn.Identity())

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
        return declared_no_weight_decay(self)

    def __prepare_scriptable__(self) -> "ResNet":
        """Called by ``torch.jit.script``: refused with the reason and the routes that work."""
        refuse_torchscript()

    # --- timm model API ---

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise decay: the stem, then each stage (``coarse``) or each block."""
        return dict(stem=r"^gct_stem|^conv1|^bn1", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

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
        x = self.relu(self.bn1(self.conv1(self.gct_stem(x))))
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
        x = self.relu(self.bn1(self.conv1(self.gct_stem(x))))
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
