#!/usr/bin/env python3
"""Write docs/api.md, the API reference, from the signatures and docstrings of convattn's public API.

    python scripts/gen_api_docs.py            # rewrite docs/api.md
    python scripts/gen_api_docs.py --check    # exit 1 when docs/api.md is not what this script writes

``API`` below lists what is documented, in order: (module path, names). Only modules that the core install
imports are listed (optional packages such as onnx are imported inside the functions that need them, see
``convattn/optional.py``), so the reference renders the same with or without the extras.
tests/test_api_docs.py checks that the committed docs/api.md is current.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import pprint
import re
import sys
from pathlib import Path
from typing import Any

# (module path, public names), rendered in this order
API: list[tuple[str, list[str]]] = [
    ("convattn", ["create_model", "list_models", "attach", "create_attn", "list_attn", "load_pretrained",
                  "VERIFIED_BACKBONES", "AttachPlan", "build_model", "save_pretrained", "load_folder", "AWConv2d", "STEAM", "SEModule", "CBAM", "ECA",
                  "GCT"]),
    ("convattn.sharing", ["export_run", "SavedFolder", "model_card"]),
    ("convattn.models", ["AttachReport", "LoadReport", "register_block", "default_data_cfg"]),
    ("convattn.models.plan", ["AttachPlan", "canonical_variants", "SPEC_VERSION"]),
    ("convattn.models.build", ["build_model", "create_backbone"]),
    ("convattn.models.verify", ["verify_attach"]),
    ("convattn.profile", ["profile", "ProfileConfig", "show_profile", "write_profile", "count_complexity",
                          "Complexity", "count_params", "count_macs_dispatch", "count_macs_hooks",
                          "measure_latency", "Timing"]),
    ("convattn.export", ["export_model", "export_onnx", "export_torchscript", "export_mode", "verify_export",
                         "run_onnx"]),
    ("convattn.tasks.classification", ["TrainConfig", "train", "evaluate_run", "load_run", "CompareConfig",
                                       "run_compare", "resolve_compare"]),
    ("convattn.tasks.detection.run", ["DetectConfig", "train_detector", "evaluate_detector", "load_detector_run",
                                      "predict"]),
    ("convattn.tasks.detection.study", ["compare_detection"]),
    ("convattn.tasks.detection.backbone", ["fpn_backbone"]),
    ("convattn.study.executors", ["ExecutorConfig", "make_executor", "LocalExecutor", "ProcessExecutor", "RayExecutor",
                                  "SlurmExecutor"]),
    ("convattn.study.presets", ["run_paper_study", "plan_study", "PAPER_STUDIES"]),
    ("convattn.integrations.ultralytics", ["attach_yolo", "load_yolo", "attaching_trainer"]),
    ("convattn.integrations.yolo_data", ["export_yolo_data"]),
    ("convattn.engine.run", ["RunConfig"]),
]

# Every name of these modules' __all__ must appear in API (checked by tests/test_api_docs.py); names left out
# on purpose are listed here.
COVERED_ALL: dict[str, set[str]] = {"convattn": {"__version__"}, "convattn.profile": set(),
                                    "convattn.export": set()}

# nn.Module hooks that classes override but users do not call
SKIP_METHODS = {"extra_repr"}

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "api.md"

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SECTION = re.compile(r"^(Args|Arguments|Parameters|Returns|Return|Raises|Yields|Attributes|Note|Notes|"
                      r"Example|Examples):\s*$")
_ROLE = re.compile(r":(?:func|class|data|meth|attr|mod|obj|exc):`~?([^`]+)`")
_ITEM = re.compile(r"^([\w*][\w*, /.]*?(?: \([^)]*\))?):\s*(.*)$")


class _Raw:
    """An annotation shown as written (``from __future__ import annotations`` keeps them as strings)."""

    def __init__(self, text: str) -> None:
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # a quoted forward reference
            text = text[1:-1]
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _clean(text: str) -> str:
    return _ADDRESS.sub("", text)


def _annotation(ann: Any) -> Any:
    if ann is inspect.Parameter.empty:
        return ann
    return _Raw(ann if isinstance(ann, str) else inspect.formatannotation(ann))


def signature(obj: Any, name: str, drop_first: bool = False, returns: bool = True) -> str:
    """``name(params) -> ret`` with annotations as written, no object addresses; one parameter per line when long."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return f"{name}(...)"
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    params = [p.replace(annotation=_annotation(p.annotation)) for p in params]
    ret = _annotation(sig.return_annotation) if returns else inspect.Signature.empty
    sig = sig.replace(parameters=params, return_annotation=ret)
    text = _clean(f"{name}{sig}")
    if len(text) <= 100:
        return text
    parts = [_clean(str(p)) for p in params]
    # keep the bare '*' / '/' markers of keyword-only and positional-only parameters
    shown: list[str] = []
    kinds = [p.kind for p in params]
    for i, (p, part) in enumerate(zip(params, parts)):
        if p.kind == inspect.Parameter.KEYWORD_ONLY and (i == 0 or kinds[i - 1] not in (
                inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.VAR_POSITIONAL)):
            shown.append("*")
        shown.append(part)
        if p.kind == inspect.Parameter.POSITIONAL_ONLY and (i + 1 == len(params) or
                                                             kinds[i + 1] != inspect.Parameter.POSITIONAL_ONLY):
            shown.append("/")
    tail = "" if ret is inspect.Signature.empty else f" -> {ret!r}"
    return f"{name}(\n" + "".join(f"    {s},\n" for s in shown) + f"){_clean(tail)}"


def own_doc(obj: Any) -> str:
    """The object's own docstring (never one inherited from a base class), dedented; '' when it has none."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    doc = inspect.cleandoc(doc)
    if inspect.isclass(obj) and dataclasses.is_dataclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # the text dataclasses write when a class has no docstring
    return _ROLE.sub(r"``\1``", _clean(doc))  # Sphinx roles (:func:`x`) shown as code


def first_paragraph(doc: str) -> str:
    lines = []
    for line in doc.splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)


def docstring_md(doc: str) -> str:
    """Google-style docstring -> Markdown: sections in bold, their ``name: text`` items as bullets, ``::``
    literal blocks and indented examples fenced; other text as written."""
    out: list[str] = []
    lines = doc.splitlines()
    i, section_indent, literal = 0, None, False
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if literal or (section_indent is None and indent >= 4 and stripped and (not out or not out[-1].strip())):
            # an indented block: code (after '::' or standing alone after a blank line)
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) >= 4):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                out.extend(["```python", *inspect.cleandoc("\n".join(block)).splitlines(), "```", ""])
            literal = False
            continue
        m = _SECTION.match(stripped)
        if m and indent == 0:
            if out and out[-1].strip():
                out.append("")
            out.append(f"**{m.group(1)}:**")
            out.append("")
            section_indent = None
            i += 1
            # items of the section: the lines indented under it
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith(" ")):
                item = lines[i]
                if not item.strip():
                    i += 1
                    if i < len(lines) and not lines[i].startswith(" "):
                        break
                    continue
                ind = len(item) - len(item.lstrip())
                if section_indent is None:
                    section_indent = ind
                im = _ITEM.match(item.strip())
                if ind == section_indent and im:
                    out.append(f"* `{im.group(1)}`: {im.group(2)}".rstrip())
                elif ind == section_indent:
                    out.append(f"* {item.strip()}")
                else:
                    out.append(f"  {item.strip()}")
                i += 1
            out.append("")
            section_indent = None
            continue
        if stripped.endswith("::"):
            out.append(line[:-1] if line.endswith("::") else line)
            literal = True
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            continue
        out.append(line)
        i += 1
    text = "\n".join(out).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def dataclass_fields(cls: type) -> str:
    rows = ["| field | default | help |", "|---|---|---|"]
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.default is not dataclasses.MISSING:
            default = f"`{_clean(repr(f.default))}`"
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f"`{_clean(repr(f.default_factory()))}`"  # type: ignore[misc]
        else:
            default = "required"
        help_text = f.metadata.get("help", "") if f.metadata else ""
        choices = f.metadata.get("choices") if f.metadata else None
        if choices:
            help_text = f"{help_text} (choices: {', '.join(map(str, choices))})".strip()
        rows.append(f"| `{f.name}` | {_md_cell(default)} | {_md_cell(help_text)} |")
    return "\n".join(rows)


def _methods(cls: type) -> list[tuple[str, Any, str]]:
    """(name, function, kind) of the public methods and properties defined on ``cls`` itself, in source order."""
    found = []
    for name, member in vars(cls).items():
        if name.startswith("_") or name in SKIP_METHODS:
            continue
        if isinstance(member, property):
            found.append((name, member.fget, "property"))
        elif isinstance(member, staticmethod):
            found.append((name, member.__func__, "staticmethod"))
        elif isinstance(member, classmethod):
            found.append((name, member.__func__, "classmethod"))
        elif inspect.isfunction(member):
            found.append((name, member, "method"))
    return found


def public_path(obj: type) -> str:
    """The shortest dotted path under which an already imported module exposes ``obj``
    (``torch.nn.Conv2d``, not ``torch.nn.modules.conv.Conv2d``)."""
    parts = obj.__module__.split(".")
    for i in range(1, len(parts) + 1):
        mod = sys.modules.get(".".join(parts[:i]))
        if mod is not None and getattr(mod, obj.__qualname__, None) is obj:
            return f"{'.'.join(parts[:i])}.{obj.__qualname__}"
    return f"{obj.__module__}.{obj.__qualname__}"


def method_doc(cls: type, name: str, fn: Any) -> str:
    """``fn``'s own docstring, else that of the method it overrides in a convattn base class (never torch's)."""
    doc = own_doc(fn)
    for base in cls.__mro__[1:]:
        if doc:
            break
        if base.__module__.split(".")[0] == "convattn" and name in vars(base):
            member = vars(base)[name]
            doc = own_doc(member.fget if isinstance(member, property) else getattr(member, "__func__", member))
    return doc


def render_class(cls: type) -> list[str]:
    bases = [public_path(b) for b in cls.__bases__ if b is not object]
    out = [f"### class `{cls.__name__}`", ""]
    out += ["```python", signature(cls, cls.__name__, returns=False), "```", ""]
    if bases:
        out += [f"Bases: {', '.join(f'`{b}`' for b in bases)}", ""]
    doc = own_doc(cls)
    if doc:
        out += [docstring_md(doc), ""]
    if dataclasses.is_dataclass(cls):
        out += ["Fields:", "", dataclass_fields(cls), ""]
    for name, fn, kind in _methods(cls):
        label = "" if kind == "method" else f" ({kind})"
        out += [f"#### `{cls.__name__}.{name}`{label}", ""]
        if kind != "property":
            out += ["```python", signature(fn, name, drop_first=kind != "staticmethod"), "```", ""]
        para = first_paragraph(method_doc(cls, name, fn))
        if para:
            out += [para, ""]
    return out


def render_object(module: str, name: str) -> list[str]:
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj):
        return render_class(obj)
    if callable(obj):
        out = [f"### `{name}`", "", "```python", signature(obj, name), "```", ""]
        doc = own_doc(obj)
        return out + ([docstring_md(doc), ""] if doc else [])
    if isinstance(obj, (tuple, list)) and len(repr(obj)) > 100:
        open_, close = "()" if isinstance(obj, tuple) else "[]"
        value = open_ + "\n" + "".join(f"    {v!r},\n" for v in obj) + close
    else:
        value = pprint.pformat(obj, width=100, sort_dicts=True)
    return [f"### `{name}`", "", "```python", _clean(f"{name} = {value}"), "```", ""]


def render(api: list[tuple[str, list[str]]] | None = None) -> str:
    """The whole of docs/api.md as a string (deterministic: the order of ``API``, no addresses or dates)."""
    api = API if api is None else api
    out = ["# API reference", "",
           "Generated from the code's signatures and docstrings by `python scripts/gen_api_docs.py`; do not edit",
           "by hand (`tests/test_api_docs.py` checks that this file is current). The command line is documented",
           "by `convattn --help` and `convattn <command> --help`.", ""]
    for module, names in api:
        out.append(f"* `{module}`: " + ", ".join(f"`{n}`" for n in names))
    out.append("")
    for module, names in api:
        mod = importlib.import_module(module)
        out += [f"## `{module}`", ""]
        intro = first_paragraph(own_doc(mod))
        if intro:
            out += [intro, ""]
        for name in names:
            out += render_object(module, name)
    text = "\n".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.rstrip("\n") + "\n"


def undocumented() -> list[str]:
    """Names in the ``__all__`` of the modules in :data:`COVERED_ALL` that ``API`` does not list."""
    listed = {(m, n) for m, names in API for n in names}
    missing = []
    for module, skipped in COVERED_ALL.items():
        for name in importlib.import_module(module).__all__:
            if name not in skipped and (module, name) not in listed:
                missing.append(f"{module}.{name}")
    return missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 when docs/api.md is out of date")
    ap.add_argument("--out", default=str(OUT), help="output file (default docs/api.md)")
    args = ap.parse_args(argv)
    text = render()
    out = Path(args.out)
    if args.check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{out} is out of date: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        print(f"{out} is current")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
