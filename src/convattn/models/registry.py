"""Model registry: ``create_model(name, attn=..., conv=...)``, ``list_models()``, variant strings, timm hookup."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..layers.create_attn import get_attn_spec, split_attn_name
from .attach import attach
from .backbones import VERIFIED_BACKBONES, create_backbone, is_backbone_name
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = ["create_model", "default_data_cfg", "list_models", "register_model", "model_entrypoint", "parse_variant",
           "Variant", "DEFAULT_VARIANTS", "COMPARE_VARIANTS", "CIFAR_MODELS", "IMAGENET_MODELS", "IMAGENET_RESNETS"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

# The variants the papers compare (the profile default; the evidence study trains all of them).
DEFAULT_VARIANTS = ("none", "se", "cbam", "eca", "gct", "steam", "aw", "se+aw", "cbam+aw")
# The compare default: the two reconstructions (STEAM, AW) and the baselines both papers report (SE, CBAM) plus
# ECA, the cheapest. GCT and the stacked arms cost 41 % of the nine arms' training time per image; without them the
# 15-minute default study trains each arm on about twice the images (reports/default_study).
COMPARE_VARIANTS = ("none", "se", "cbam", "eca", "steam", "aw")


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is already registered")
        _MODELS[name] = fn
        return fn
    return deco


def list_models(backbones: bool = False) -> list[str]:
    """Registered model names; with ``backbones=True`` also the verified timm/torchvision backbones (any other
    ``"timm:<name>"`` / ``"torchvision:<name>"`` CNN works too: attach reads its blocks off its computation)."""
    own = sorted(_MODELS, key=lambda n: (n.rstrip("0123456789"), int("0" + n[len(n.rstrip("0123456789")):])))
    return own + list(VERIFIED_BACKBONES) if backbones else own


@dataclass(frozen=True)
class Variant:
    """A parsed variant string: what ``"se+aw"`` or ``"steam@all"`` asks for, validated once.

    Attributes:
        attn: Activation-attention names joined with ``+`` (block-output and pre-convolution kinds), or None.
        conv: ``"aw"`` or None.
        attn_blocks: ``"all"`` when a part carries ``@all`` (every block), else None (each module's default).
    """

    attn: str | None = None
    conv: str | None = None
    attn_blocks: str | None = None

    @classmethod
    def parse(cls, variant: "str | Variant | None") -> "Variant":
        """Parts are joined with ``+``; ``"aw"`` selects AW-convolution, any other part an attention module, and a
        part suffixed ``@all`` places that module in every block. ``"none"`` or None is the plain model."""
        if isinstance(variant, Variant):
            return variant
        if variant is None or variant.strip().lower() in ("", "none", "baseline", "plain"):
            return cls()
        attn_parts, conv, blocks = [], None, None
        for part in (p.strip().lower() for p in variant.split("+")):
            name, _, placement = part.partition("@")
            if placement and placement != "all":
                raise ValueError(f"variant part {part!r}: the only placement suffix is '@all'")
            if get_attn_spec(name).kind == "conv":
                conv = name
                continue
            split_attn_name(name)  # validates, listing the valid names
            attn_parts.append(name)
            if placement:
                blocks = "all"
        return cls("+".join(attn_parts) or None, conv, blocks)

    @property
    def name(self) -> str:
        """The canonical string (``parse(v.name) == v``)."""
        parts = [f"{p}@all" if self.attn_blocks else p for p in (self.attn or "").split("+") if p]
        return "+".join(parts + ([self.conv] if self.conv else [])) or "none"

    def kwargs(self) -> dict[str, Any]:
        """Model keyword arguments (``attn``, ``conv`` and, for ``@all``, ``attn_blocks``)."""
        out: dict[str, Any] = {"attn": self.attn, "conv": self.conv}
        if self.attn_blocks:
            out["attn_blocks"] = self.attn_blocks
        return out


def parse_variant(variant: "str | Variant | None") -> dict[str, Any]:
    """Variant string -> model kwargs: ``"se+aw"`` -> ``{"attn": "se", "conv": "aw"}`` (see :class:`Variant`)."""
    return Variant.parse(variant).kwargs()


def create_model(name: str, variant: str | None = None, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: Model name from ``list_models()`` (e.g. ``"resnet50"``, ``"resnet20"``), or a timm/torchvision CNN
            as ``"timm:<name>"`` / ``"torchvision:<name>"`` with the modules attached by ``convattn.attach``.
        variant: Optional variant string (``"se+aw"``, ``"steam@all"``), merged into kwargs.
        pretrained: Must be False: convattn never downloads weights. Load a local state dict with
            ``convattn.models.load_pretrained`` instead.
        **kwargs: Model options (``attn``, ``conv``, ``num_classes``, ``in_chans``, ``attn_kwargs``,
            ``conv_kwargs``, ``pretrained_path`` (a local state dict of the plain network, which must hold all of
            it: ``pretrained_allow_partial=True`` loads just what matches), ...).
    """
    if pretrained:
        raise ValueError("convattn does not download weights; build with pretrained=False and pass a local state "
                         "dict: create_model(..., pretrained_path='weights.pth') (or convattn.models.load_pretrained)")
    if not is_backbone_name(name) and name not in _MODELS:
        raise ValueError(f"Unknown model '{name}'. Valid names: {', '.join(list_models())}, or a timm/torchvision "
                         f"CNN as 'timm:<name>' / 'torchvision:<name>' (verified: {', '.join(VERIFIED_BACKBONES)})")
    if variant is not None:
        for k, v in parse_variant(variant).items():
            if k in kwargs and kwargs[k] not in (None, v):
                raise ValueError(f"variant {variant!r} sets {k}={v!r} but {k}={kwargs[k]!r} was also given")
            kwargs[k] = v
    if is_backbone_name(name):
        return create_backbone(name, **kwargs)
    path = kwargs.pop("pretrained_path", None)
    partial = kwargs.pop("pretrained_allow_partial", False)
    if partial and not path:
        raise ValueError("pretrained_allow_partial allows a partial load of pretrained_path, but no pretrained_path "
                         "is given")
    model = _MODELS[name](**kwargs)
    if path:
        from .backbones import load_weights_file  # complete for the plain network unless a partial load is allowed
        model.pretrained_report = load_weights_file(model, path, allow_partial=partial)
    return model


# ECA kernel sizes per stage of the released ECA-Net50 / ECA-Net101 (BangguWu/ECANet, k_size=[3, 5, 5, 7])
ECA_RELEASED_KERNELS = (3, 5, 5, 7)

# create_model options that say which modules go in (everything else builds the network)
_ATTACH_OPTIONS = ("attn", "conv", "attn_kwargs", "conv_kwargs", "attn_blocks", "identity", "gct_placement",
                   "aw_convs", "eca_kernels")


def _eca_kernels(rule: Any, num_stages: int) -> list[int] | None:
    """Per-stage ECA kernel sizes: ``"adaptive"`` (None: each module's formula from its channels), ``"released"``
    (the released ECA-Net50/101's 3, 5, 5, 7) or an explicit list."""
    if rule == "adaptive":
        return None
    ks = ECA_RELEASED_KERNELS if rule == "released" else rule
    if isinstance(ks, str) or not isinstance(ks, (list, tuple)) or len(ks) != num_stages:
        raise ValueError(f"eca_kernels must be 'adaptive', 'released' (3, 5, 5, 7; 4-stage ResNets) or {num_stages} "
                         f"odd sizes, one per stage; got {rule!r}")
    return [int(k) for k in ks]


def _with_attention(model: ResNet, opts: dict[str, Any], eca_default: str) -> nn.Module:
    """The plain ResNet + ``attach`` (the one way attention goes into any network), initialised as one network."""
    attn, conv = opts.get("attn"), opts.get("conv")
    attn_kwargs = dict(opts.get("attn_kwargs") or {})
    eca = _eca_kernels(opts.get("eca_kernels", eca_default), model.num_stages)
    if isinstance(attn, str) and attn.strip().lower() == "eca" and eca is not None and "kernel_size" not in attn_kwargs:
        attn_kwargs["kernel_size"] = eca
    if not (attn and str(attn).strip().lower() != "none") and not (conv and conv != "none"):
        if attn_kwargs or opts.get("conv_kwargs"):
            raise ValueError("attn_kwargs/conv_kwargs given without a module (attn=... / conv='aw')")
        return model
    attach(model, attn, conv, where=opts.get("attn_blocks"), identity=bool(opts.get("identity", False)),
           attn_kwargs=attn_kwargs or None, conv_kwargs=opts.get("conv_kwargs"),
           gct_placement=opts.get("gct_placement", "every_conv"), aw_convs=opts.get("aw_convs", "kxk"),
           dry_run_size=32 if model.stem == "cifar" else 64)
    if not opts.get("identity"):
        model.init_weights()  # attached modules initialised as the network's own layers (timm's SE-ResNets do so)
    return model


def _resnet_builder(block: type[nn.Module], layers: tuple[int, ...], eca_default: str = "adaptive",
                    **defaults: Any) -> Callable[..., nn.Module]:
    def build(**kwargs: Any) -> nn.Module:
        opts = {k: kwargs.pop(k) for k in _ATTACH_OPTIONS if k in kwargs}
        return _with_attention(ResNet(block, layers, **{**defaults, **kwargs}), opts, eca_default)
    return build


# convattn's own models, the one list of them: the ImageNet ResNets (torchvision layout; ECA-Net50/101 were
# released with k = 3, 5, 5, 7 per stage) and the CIFAR ResNets (He et al. 2016, section 4.2)
IMAGENET_RESNETS: dict[str, tuple[type[nn.Module], tuple[int, ...], str]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2), "adaptive"), "resnet34": (BasicBlock, (3, 4, 6, 3), "adaptive"),
    "resnet50": (Bottleneck, (3, 4, 6, 3), "released"), "resnet101": (Bottleneck, (3, 4, 23, 3), "released"),
    "resnet152": (Bottleneck, (3, 8, 36, 3), "adaptive")}
CIFAR_MODELS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")
IMAGENET_MODELS = tuple(IMAGENET_RESNETS)

for _name, (_block, _layers, _eca) in IMAGENET_RESNETS.items():
    register_model(_name)(_resnet_builder(_block, _layers, _eca))
for _name in CIFAR_MODELS:
    _depth = int(_name[len("resnet"):])
    register_model(_name)(_resnet_builder(
        BasicBlock, ((_depth - 2) // 6,) * 3, num_classes=10, stem="cifar", widths=(16, 32, 64), shortcut="A"))


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name`` (a KeyError naming the registered models otherwise)."""
    if name not in _MODELS:
        raise KeyError(f"no convattn model {name!r}; registered: {', '.join(list_models())}")
    return _MODELS[name]


def default_data_cfg(name: str) -> dict[str, Any]:
    """The data cfg a model was designed for (timm ``pretrained_cfg`` keys ``input_size``, ``crop_pct``,
    ``interpolation``, ``mean``, ``std``): convattn's own cfgs, timm's for ``timm:`` names, ImageNet's
    (224, 0.875, bilinear) for ``torchvision:`` names."""
    from timm.models import get_pretrained_cfg

    from ..data import IMAGENET_DATA_CFG
    keys = tuple(IMAGENET_DATA_CFG)
    lib, _, arch = name.partition(":") if is_backbone_name(name) else ("convattn", "", name)
    if lib == "torchvision":
        return dict(IMAGENET_DATA_CFG)
    if lib == "convattn":
        if name not in _MODELS:
            raise ValueError(f"Unknown model '{name}'. Valid names: {', '.join(list_models())}")
        arch = f"convattn_{name}"  # registered with timm when convattn.models is imported
    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return dict(IMAGENET_DATA_CFG)
    d = cfg.to_dict()
    return {k: (d.get(k) if d.get(k) is not None else IMAGENET_DATA_CFG[k]) for k in keys}
