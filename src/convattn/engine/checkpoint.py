"""Atomic checkpoints: safetensors weights + a weights-only torch state + JSON metadata, one folder per epoch.

A checkpoint folder is written under a temporary name and renamed into place, then ``latest.json`` is
replaced atomically to point at it, then older folders are removed. A run killed at any moment leaves the
previous checkpoint intact and ``latest.json`` pointing at a complete folder. Loading never unpickles
code: ``torch.load(..., weights_only=True)`` and safetensors.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..report import atomic_write_text

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "load_weights", "CheckpointError", "run_lock",
           "RunInUseError", "read_run_config", "load_run_weights"]


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or made for another model."""


def _tensors(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_checkpoint(ckpt_root: str | os.PathLike, epoch: int, model: nn.Module, state: dict[str, Any],
                    meta: dict[str, Any], ema: nn.Module | None = None, keep_last: int = 1) -> Path:
    root = Path(ckpt_root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch_{epoch:04d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.", suffix=".tmp"))  # unique: writers never collide
    try:
        save_file(_tensors(model.state_dict()), str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(_tensors(ema.state_dict()), str(tmp / "ema.safetensors"))
        torch.save(state, tmp / "state.pt")
        atomic_write_text(tmp / "meta.json", json.dumps(meta, indent=2, default=str))
    except (OSError, RuntimeError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint(root)
        raise OSError(f"could not write checkpoint {name} in {root} ({type(e).__name__}: {e}); "
                      + (f"the last good checkpoint {kept.name} is kept" if kept else "no earlier checkpoint")) from e
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    atomic_write_text(root / "latest.json", json.dumps({"epoch": epoch, "path": name}))
    done = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("epoch_") and p != final)
    for old in done[:max(0, len(done) - (keep_last - 1))] if keep_last >= 1 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root: str | os.PathLike) -> Path | None:
    """The folder ``latest.json`` points at, or None when no checkpoint was completed."""
    p = Path(ckpt_root) / "latest.json"
    if not p.exists():
        return None
    try:
        info = json.loads(p.read_text())
        name = info["path"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{p} is corrupt ({e}); delete the checkpoints folder to start over") from e
    if not isinstance(name, str) or Path(name).name != name or not name.startswith("epoch_"):
        raise CheckpointError(f"{p} points to {name!r}, not a checkpoint folder inside {ckpt_root} "
                              "(latest.json may only name an epoch_NNNN folder beside it)")
    folder = Path(ckpt_root) / name
    if not folder.is_dir():
        raise CheckpointError(f"{p} points to {folder}, which does not exist")
    return folder


def load_weights(path: str | os.PathLike, model: nn.Module, what: str = "model") -> None:
    """Load a safetensors state dict into ``model`` strictly; mismatches raise with the keys named."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise CheckpointError(f"checkpoint weights {path} not found")
    try:
        sd = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); it may be truncated or corrupt") from e
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        def show(keys):
            return ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
        parts = [f"missing {show(missing)}" if missing else "", f"unexpected {show(unexpected)}" if unexpected else "",
                 f"shape mismatch {show(shapes)}" if shapes else ""]
        raise CheckpointError(f"{path} was made for another model/variant than this {what}: "
                              + "; ".join(p for p in parts if p) + ". Check --model/--variant (or the run's config.json)")
    model.load_state_dict(sd)


def read_run_config(run_dir: str | os.PathLike, config_cls: type, command: str) -> tuple[Any, dict[str, Any] | None]:
    """(config, data.json or None) of a run folder written by ``command``; settings a newer or older version wrote
    that ``config_cls`` does not have are left out (they were resume checks, not model settings)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{cfg_path} not found: --run must be a folder written by `{command}`")
    saved = json.loads(cfg_path.read_text())
    known = {f.name for f in fields(config_cls)}
    data_path = run_dir / "data.json"
    return config_cls(**{k: v for k, v in saved.items() if k in known}), \
        (json.loads(data_path.read_text()) if data_path.exists() else None)


def load_run_weights(run_dir: str | os.PathLike, model: nn.Module, checkpoint: str | os.PathLike | None = None,
                     use_ema: bool = False, what: str = "model") -> Path:
    """Load a run's latest checkpoint (or ``checkpoint``: a checkpoint folder or a .safetensors file) into ``model``,
    the EMA weights with ``use_ema``; returns the file loaded."""
    src = Path(checkpoint) if checkpoint else latest_checkpoint(Path(run_dir) / "checkpoints")
    if src is None:
        raise CheckpointError(f"{run_dir} has no completed checkpoint yet")
    if src.is_dir():
        src = src / ("ema.safetensors" if use_ema else "model.safetensors")
    load_weights(src, model, what)
    return src


def load_checkpoint(folder: str | os.PathLike, model: nn.Module, ema: nn.Module | None = None) -> tuple[dict, dict]:
    """Load weights (and EMA) into the modules; return (torch state, meta)."""
    folder = Path(folder)
    load_weights(folder / "model.safetensors", model)
    if ema is not None:
        load_weights(folder / "ema.safetensors", ema, "EMA model")
    try:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
        meta = json.loads((folder / "meta.json").read_text())
    except Exception as e:  # noqa: BLE001 - any failure here means an unusable checkpoint
        raise CheckpointError(f"checkpoint {folder} is corrupt or incomplete ({type(e).__name__}: {e}); "
                              "delete it to restart from the previous one or from scratch") from e
    return state, meta


class RunInUseError(OSError):
    """Another process is writing to the same run folder."""


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Own ``run_dir`` while a run writes to it: an exclusive ``flock`` on ``run_dir/.lock`` (released by the OS
    when the process ends, so a killed run leaves no stale lock). A second writer is refused with the owner's pid."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: run unguarded
        yield
        return
    f = open(root / ".lock", "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            owner = f.read().strip() or "another process"
            raise RunInUseError(f"{root} is in use by {owner}; wait for it to finish or use another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}")
        f.flush()
        yield
    finally:
        f.close()  # closing releases the lock
