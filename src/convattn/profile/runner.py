"""``convattn profile``: params, MACs (two counters) and measured latency of models and variants."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..models import DEFAULT_VARIANTS, create_model
from ..models.plan import canonical_variants
from ..report import atomic_write_text, print_table, to_markdown, write_csv
from ..validate import check_device, check_values, option
from .counting import count_complexity
from .latency import measure_latency, prepare_for_timing

__all__ = ["ProfileConfig", "profile", "PROFILE_COLUMNS", "PROFILE_HEADERS"]

PROFILE_COLUMNS = ["model", "variant", "params_m", "added_params", "gmacs", "gmacs_hook", "g_elementwise",
                   "latency_ms", "iqr_ms", "throughput", "latency_ratio"]
PROFILE_HEADERS = {
    "params_m": "params (M)", "added_params": "added params", "gmacs": "GMACs (dispatch)",
    "gmacs_hook": "GMACs (hooks)", "g_elementwise": "G elementwise", "latency_ms": "latency ms (median)",
    "iqr_ms": "IQR ms", "throughput": "img/s", "latency_ratio": "latency / plain",
}


@dataclass
class ProfileConfig:
    """What ``profile`` measures; the ``convattn profile`` options are built from these fields."""

    models: Sequence[str] = ("resnet50",)
    variants: Sequence[str] = DEFAULT_VARIANTS
    input_size: int | None = option(None, "square input size (default 224 ImageNet / 32 CIFAR)")
    batch_size: int = option(1, "images per timed forward")
    device: str = option("cpu", "cpu, cuda, cuda:N")
    threads: int | None = option(None, "torch CPU threads (default: torch's)")
    warmup: int = option(3, "untimed forwards before timing")
    repeats: int = option(10, "timed forwards per model (interleaved rounds)")
    channels_last: bool = option(False, "channels_last memory format")
    compile: bool = option(False, "torch.compile each model before timing")
    latency: bool = True
    num_classes: int | None = option(None, "classifier classes (default: the model's)")
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_values(self, (("input_size", dict(lo=8, integer=True, optional=True)),
                            ("batch_size", dict(lo=1, integer=True)), ("warmup", dict(lo=0, integer=True)),
                            ("repeats", dict(lo=1, integer=True)), ("threads", dict(lo=1, integer=True, optional=True)),
                            ("num_classes", dict(lo=1, integer=True, optional=True))))
        canonical_variants(self.variants)  # refuses unknown names before anything is built


def _default_size(model: torch.nn.Module) -> int:
    return getattr(model, "default_input_size", 224)


def profile(cfg: ProfileConfig) -> list[dict[str, Any]]:
    """Profile every (model, variant); latency ratios are to the plain model timed in the same rounds."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = check_device(cfg.device)
    variants = [p.name for p in canonical_variants(cfg.variants)]  # baseline always measured, first; one per arm
    rows: list[dict[str, Any]] = []
    for name in cfg.models:
        kw = dict(cfg.model_kwargs)
        if cfg.num_classes is not None:
            kw["num_classes"] = cfg.num_classes
        built = [(v, create_model(name, variant=v, **kw)) for v in variants]
        size = cfg.input_size or _default_size(built[0][1])
        in_chans = built[0][1].in_chans
        x1 = torch.randn(1, in_chans, size, size)
        group = []
        for v, m in built:
            c = count_complexity(m, x1)
            group.append(dict(model=name, variant=v, params=c.params, params_m=c.params / 1e6, gmacs=c.macs / 1e9,
                              gmacs_hook=c.hook_macs / 1e9, g_elementwise=c.elementwise / 1e9))
        base_params = group[0]["params"]
        for r in group:
            r["added_params"] = r["params"] - base_params
        if cfg.latency:
            x = torch.randn(cfg.batch_size, in_chans, size, size, device=device)
            if cfg.channels_last:
                x = x.to(memory_format=torch.channels_last)
            fns = [prepare_for_timing(m, device, cfg.channels_last, cfg.compile) for _, m in built]
            timings = measure_latency(fns, x, cfg.warmup, cfg.repeats)
            for r, t in zip(group, timings):
                r.update(latency_ms=t.median_ms, iqr_ms=t.iqr_ms, throughput=t.throughput,
                         latency_ratio=t.median_ms / timings[0].median_ms)
        for r in group:
            r.update(input_size=size, batch_size=cfg.batch_size, device=str(device), threads=torch.get_num_threads(),
                     channels_last=cfg.channels_last, compile=cfg.compile)
        rows.extend(group)
    return rows


def environment() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"torch {torch.__version__}, Python {platform.python_version()}, {cpu}{gpu}, {torch.get_num_threads()} threads"


def write_profile(rows: list[dict[str, Any]], out_dir: str | Path, command: str) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / "profile.csv", out_dir / "profile.md"
    cols = PROFILE_COLUMNS + ["params", "input_size", "batch_size", "device", "threads", "channels_last", "compile"]
    write_csv(csv_path, rows, cols)
    shown = [c for c in PROFILE_COLUMNS if any(c in r for r in rows)]
    md = (f"# Profile\n\nCommand: `{command}`\n\nEnvironment: {environment()}\n\n"
          "MACs in 10^9 multiply-accumulates (1 MAC = 2 FLOPs). *dispatch*: torch.utils.flop_counter at the ATen "
          "level (sees functional convs); *hooks*: nn.Conv/nn.Linear module hooks as thop/ptflops (the papers' "
          "kind); *elementwise*: gates, pooling, norms, activations, counted by the dispatch counter. Latency: "
          "forward pass, median over interleaved runs; ratio to the plain model measured in the same run.\n\n"
          + to_markdown(rows, shown, PROFILE_HEADERS))
    atomic_write_text(md_path, md)
    return csv_path, md_path


def show_profile(rows: list[dict[str, Any]], title: str | None = None) -> None:
    shown = [c for c in PROFILE_COLUMNS if any(c in r for r in rows)]
    print_table(rows, shown, PROFILE_HEADERS, title=title)
