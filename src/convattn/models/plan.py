"""``AttachPlan``: what goes into a network, resolved once at the edge and then passed on as it is.

A variant string (``"se+aw"``, ``"steam@all"``, ``"baseline"``) or Python arguments become one frozen plan: the
attention modules, the convolution replacement, their options, the placement (``where``, GCT's placement, AW's
convolutions) and the identity start, each validated once with a one-line error. Everything downstream takes the
plan: the builder (:func:`convattn.models.build.build_model`), configs and run folders (by its canonical
:attr:`AttachPlan.name`), report rows, timm names, and the attach spec that checkpoints and shared folders record
(:meth:`AttachPlan.to_dict` / :meth:`AttachPlan.from_dict`, versioned by :data:`SPEC_VERSION`).

Canonical names: the plain network is ``"none"`` (``""``, ``"baseline"``, ``"plain"`` and ``None`` mean it too);
names are lower case; block-output modules keep the order given (``"se+eca"`` applies SE, then ECA), the
pre-convolution module (GCT) follows them and the convolution replacement (``aw``) comes last, so
``"aw+se"`` and ``"SE + AW"`` are both ``"se+aw"``.

Decided per network, not here: ECA's kernel sizes (``eca_kernels=None`` takes the network's rule: the released
3, 5, 5, 7 for convattn's ResNet-50/101, each module's formula elsewhere) and AW's generator mode
(:func:`convattn.layers.aw_conv.default_aw_mode`).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from ..layers.contract import resolve_placement
from ..layers.create_attn import get_attn_spec, list_attn

__all__ = ["AttachPlan", "SPEC_VERSION", "PLAIN_NAMES", "canonical_variants", "resolve_plan"]

#: Version of the attach spec that :meth:`AttachPlan.to_dict` writes (checkpoints, shared folders, YOLO weights).
SPEC_VERSION = 1
#: Strings that name the plain network.
PLAIN_NAMES = ("", "none", "baseline", "plain")

_GCT_PLACEMENTS = ("every_conv", "per_block")
_AW_CONVS = {"kxk": "kxk", "3x3": "kxk", "all": "all"}
_ECA_RULES = ("adaptive", "released")


def _kind(name: str) -> str:
    return get_attn_spec(name).kind


def _check_where(where: Any) -> Any:
    """``where`` as attach takes it; lists/tuples normalised to lists and dict keys to ints (JSON round trip)."""
    if where is None or callable(where):
        return where
    if isinstance(where, bool) or isinstance(where, float):
        raise ValueError(f"where must be None, 'all', a placement rule name, {{stage: [blocks]}}, a list of stages or "
                         f"a callable(name, module) -> bool; got {where!r}")
    if isinstance(where, str):
        if where != "all":
            resolve_placement(where)  # unknown rule names: one line listing the valid ones
        return where
    if isinstance(where, dict):
        out = {}
        for k, v in where.items():
            try:
                stage = int(k)
            except (TypeError, ValueError):
                raise ValueError(f"where: stage keys are integers from 1, got {k!r}") from None
            out[stage] = v if isinstance(v, str) else [int(b) for b in v]
        return out
    if isinstance(where, (list, tuple)):
        return list(where)
    raise ValueError(f"where must be None, 'all', a placement rule name, {{stage: [blocks]}}, a list of stages or a "
                     f"callable(name, module) -> bool; got {where!r} ({type(where).__name__})")


@dataclass(frozen=True)
class AttachPlan:
    """What goes into a network (see the module docstring). Build it with :meth:`parse` or the constructor.

    Attributes:
        attn: Activation-attention names joined with ``+`` in canonical order, or None.
        conv: ``"aw"`` (AW-convolution replaces the k x k convolutions) or None.
        where: attach's placement: None (each module's default), ``"all"``, a rule name, ``{stage: [blocks]}``,
            a list of stages, or a callable (not recordable in a spec).
        identity: Start as the original network's function.
        attn_kwargs / conv_kwargs: Options of the attention modules / of AWConv2d.
        gct_placement: ``"every_conv"`` (official) or ``"per_block"``.
        aw_convs: ``"kxk"`` (kernels larger than 1 x 1) or ``"all"``.
        eca_kernels: None (the network's rule), ``"adaptive"``, ``"released"`` or one odd size per stage.
        dry_run_size: Input side of attach's dry pass (None: the network's; recorded so a rebuild finds the same
            blocks).
    """

    attn: str | None = None
    conv: str | None = None
    where: Any = None
    identity: bool = False
    attn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    conv_kwargs: Mapping[str, Any] = field(default_factory=dict)
    gct_placement: str = "every_conv"
    aw_convs: str = "kxk"
    eca_kernels: Any = None
    dry_run_size: int | None = None

    def __post_init__(self) -> None:
        attn = self.attn
        if attn is not None and not isinstance(attn, str):
            raise ValueError(f"attn must be a registered attention name (e.g. 'se', 'se+gct') or None, got {attn!r}")
        parts = [p.strip().lower() for p in (attn or "").split("+") if p.strip()]
        parts = [p for p in parts if p not in PLAIN_NAMES]
        for p in parts:
            if _kind(p) == "conv":
                raise ValueError(f"'{p}' is a convolution, not an activation attention: pass conv='{p}' (or a variant "
                                 f"string such as 'se+{p}')")
        dup = sorted({p for p in parts if parts.count(p) > 1})
        if dup:
            raise ValueError(f"attention {', '.join(dup)} given twice in {attn!r}; name each module once")
        pre = [p for p in parts if _kind(p) == "pre_conv"]
        if len(pre) > 1:
            raise ValueError(f"at most one pre-convolution attention, got {'+'.join(pre)}")
        conv = self.conv.strip().lower() if isinstance(self.conv, str) else self.conv
        conv = None if conv in PLAIN_NAMES else conv
        if conv is not None and (not isinstance(conv, str) or _kind_or_none(conv) != "conv"):
            raise ValueError(f"Unknown conv {self.conv!r}. Valid: None or one of {', '.join(list_attn('conv'))}")
        for name in ("attn_kwargs", "conv_kwargs"):
            val = getattr(self, name)
            if val is None:
                object.__setattr__(self, name, {})
            elif not isinstance(val, Mapping):
                raise ValueError(f"{name} must be a dict of options, got {val!r}")
            else:
                object.__setattr__(self, name, dict(val))
        if self.attn_kwargs and not parts:
            raise ValueError(f"attn_kwargs {dict(self.attn_kwargs)} configure an attention module, but the plan has "
                             "none; add attn=NAME or drop attn_kwargs")
        if self.conv_kwargs and conv is None:
            raise ValueError(f"conv_kwargs {dict(self.conv_kwargs)} configure AW-convolution, but the plan has none; "
                             "add conv='aw' (or '+aw' to the variant) or drop conv_kwargs")
        if not isinstance(self.identity, bool):
            raise ValueError(f"identity must be True or False, got {self.identity!r}")
        if self.gct_placement not in _GCT_PLACEMENTS:
            raise ValueError(f"gct_placement must be 'every_conv' or 'per_block', got {self.gct_placement!r}")
        if self.aw_convs not in _AW_CONVS:
            raise ValueError(f"aw_convs must be 'kxk' (alias '3x3') or 'all', got {self.aw_convs!r}")
        eca = self.eca_kernels
        if eca is not None and eca not in _ECA_RULES and not (
                isinstance(eca, (list, tuple)) and eca and all(isinstance(k, int) and k % 2 == 1 for k in eca)):
            raise ValueError(f"eca_kernels must be None (the network's rule), 'adaptive', 'released' or a list of odd "
                             f"kernel sizes, one per stage; got {eca!r}")
        canonical = [p for p in parts if p not in pre] + pre
        object.__setattr__(self, "attn", "+".join(canonical) or None)
        object.__setattr__(self, "conv", conv)
        object.__setattr__(self, "where", _check_where(self.where))
        object.__setattr__(self, "aw_convs", _AW_CONVS[self.aw_convs])
        size = self.dry_run_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8):
            raise ValueError(f"dry_run_size must be an int >= 8 or None, got {size!r}")
        if isinstance(eca, tuple):
            object.__setattr__(self, "eca_kernels", list(eca))

    def __hash__(self) -> int:
        return hash((self.name, self.identity, self.gct_placement, self.aw_convs))

    # --- reading a variant string (the one parser) ---

    @classmethod
    def parse(cls, variant: "str | AttachPlan | None" = None, **options: Any) -> "AttachPlan":
        """A plan from a variant string (parts joined with ``+``; ``aw`` is the convolution, any other part an
        attention module; a part suffixed ``@all`` places the modules in every block) and plan options
        (``identity``, ``attn_kwargs``, ...). A plan is returned as it is (with ``options`` replaced)."""
        if isinstance(variant, AttachPlan):
            return replace(variant, **options) if options else variant
        if variant is not None and not isinstance(variant, str):
            raise ValueError(f"a variant is a string such as 'se', 'se+aw' or 'steam@all' (or None), got {variant!r}")
        attn, conv, where = _parse_variant_string(variant or "")
        if where is not None:
            if options.get("where") not in (None, where):
                raise ValueError(f"variant {variant!r} places its modules with '@all' but where={options['where']!r} "
                                 "was also given")
            options["where"] = where
        return cls(attn=attn, conv=conv, **options)

    # --- what downstream code reads ---

    @property
    def name(self) -> str:
        """The canonical variant string (``AttachPlan.parse(p.name)`` has ``p``'s modules and ``@all``)."""
        suffix = "@all" if self.where == "all" else ""
        parts = [p + suffix for p in self.attn_parts] + ([self.conv] if self.conv else [])
        return "+".join(parts) or "none"

    @property
    def attn_parts(self) -> tuple[str, ...]:
        """The attention module names, in order (no convolution replacement)."""
        return tuple(self.attn.split("+")) if self.attn else ()

    @property
    def modules(self) -> tuple[str, ...]:
        """Every module name of the plan, ``aw`` included."""
        return self.attn_parts + ((self.conv,) if self.conv else ())

    @property
    def is_plain(self) -> bool:
        return not self.modules

    @property
    def attn_blocks(self) -> str | None:
        """``"all"`` when the variant placed its modules in every block (``@all``), else None."""
        return "all" if self.where == "all" else None

    def kwargs(self) -> dict[str, Any]:
        """The variant as model keyword arguments (``attn``, ``conv`` and, for ``@all``, ``attn_blocks``)."""
        out: dict[str, Any] = {"attn": self.attn, "conv": self.conv}
        if self.attn_blocks:
            out["attn_blocks"] = self.attn_blocks
        return out

    def for_arm(self, plan: "AttachPlan") -> "AttachPlan":
        """This plan's options (module options only where ``plan`` has the module) with ``plan``'s modules."""
        return replace(plan, identity=self.identity, gct_placement=self.gct_placement, aw_convs=self.aw_convs,
                       eca_kernels=self.eca_kernels, dry_run_size=self.dry_run_size,
                       attn_kwargs=self.attn_kwargs if plan.attn else {},
                       conv_kwargs=self.conv_kwargs if plan.conv else {})

    def attach_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`convattn.models.attach` (``eca_kernels`` is the builder's to resolve)."""
        return dict(attn=self.attn, conv=self.conv, where=self.where, identity=self.identity,
                    attn_kwargs=dict(self.attn_kwargs) or None, conv_kwargs=dict(self.conv_kwargs) or None,
                    gct_placement=self.gct_placement, aw_convs=self.aw_convs, dry_run_size=self.dry_run_size)

    def apply(self, model: Any, dry_run_size: int | None = None) -> Any:
        """Attach this plan's modules to ``model`` in place (``convattn.models.attach``); returns ``model``."""
        from .attach import attach
        kw = self.attach_kwargs()
        kw["dry_run_size"] = kw["dry_run_size"] or dry_run_size
        return attach(model, **kw)

    @classmethod
    def recorded(cls, model: Any) -> "list[AttachPlan]":
        """The plans ``attach`` applied to ``model``, in order (each call records its arguments and the dry pass's
        input side); [] for a network nothing was attached to."""
        return [cls(**call) for call in getattr(model, "convattn_attach_calls", [])]

    # --- the attach spec (checkpoints, shared folders) ---

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON-able data, with ``spec_version``; :meth:`from_dict` rebuilds it."""
        if callable(self.where):
            raise ValueError("this plan's where= is a Python callable, which a saved spec cannot record; use None, "
                             "'all', a rule name, {stage: [blocks]} or a list of stages")
        d = {"spec_version": SPEC_VERSION, "variant": self.name}
        for f in fields(self):
            d[f.name] = getattr(self, f.name)
        for key in ("attn_kwargs", "conv_kwargs"):
            d[key] = dict(d[key])
        if isinstance(d["where"], dict):
            d["where"] = {str(k): v for k, v in d["where"].items()}
        json.dumps(d)  # a module option that JSON cannot hold fails here, not in the file writer
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "attach spec") -> "AttachPlan":
        """The plan recorded by :meth:`to_dict`; a newer spec version, an unknown key or module kind is a one-line
        ValueError naming ``source``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: an attach spec is a mapping, got {type(d).__name__}")
        version = d.get("spec_version", SPEC_VERSION)
        if not isinstance(version, int) or version > SPEC_VERSION:
            raise ValueError(f"{source}: attach spec version {version!r} is newer than this convattn reads "
                             f"({SPEC_VERSION}); upgrade convattn")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - {"spec_version", "variant"})
        if unknown:
            raise ValueError(f"{source}: unknown attach spec key(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(names))}")
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None


def _kind_or_none(name: str) -> str | None:
    try:
        return _kind(name)
    except ValueError:
        return None


@functools.lru_cache(maxsize=1024)
def _parse_variant_string(variant: str) -> tuple[str | None, str | None, str | None]:
    """``"SE + aw"`` -> (attn, conv, where): the only place a variant string is read (once per string: configs
    and run folders hold canonical names, and reading one again is a cache hit)."""
    attn_parts, conv, where = [], None, None
    for part in (p.strip().lower() for p in variant.split("+")):
        if part in PLAIN_NAMES:
            if variant.count("+"):
                raise ValueError(f"variant {variant!r}: {part or 'an empty part'!r} cannot be joined with modules")
            continue
        name, _, placement = part.partition("@")
        name = name.strip()
        if placement and placement.strip() != "all":
            raise ValueError(f"variant part {part!r}: the only placement suffix is '@all'")
        if get_attn_spec(name).kind == "conv":  # unknown names: one line listing the valid ones
            if conv is not None:
                raise ValueError(f"variant {variant!r} names the convolution {name!r} twice")
            conv = name
            continue
        attn_parts.append(name)
        if placement:
            where = "all"
    return "+".join(attn_parts) or None, conv, where


def resolve_plan(variant: "str | AttachPlan | None" = None, **options: Any) -> AttachPlan:
    """:meth:`AttachPlan.parse` as a function."""
    return AttachPlan.parse(variant, **options)


def canonical_variants(variants: "list[str | AttachPlan] | tuple[str | AttachPlan, ...]",
                       with_baseline: bool = True) -> list[AttachPlan]:
    """One plan per arm: each variant parsed once, ``none`` first when ``with_baseline``, and variants that name the
    same arm (``baseline``/``none``, ``SE``/``se``, ``se+aw``/``aw+se``) kept once, in the order first given."""
    plans: dict[str, AttachPlan] = {}
    if with_baseline:
        plans["none"] = AttachPlan()
    for v in variants:
        if isinstance(v, str) and not v.strip() and with_baseline:
            continue
        p = AttachPlan.parse(v)
        plans.setdefault(p.name, p)
    return list(plans.values())
