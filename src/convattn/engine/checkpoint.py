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
import re
import shutil
import socket
import stat
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
           "RunInUseError", "RunLockError", "read_run_config", "load_run_weights",
           "clean_stale_temporaries"]


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
    from ..models.weights import upgrade_keys
    sd = upgrade_keys(model, sd)  # run folders of older versions (documented key maps)
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
    saved = _read_json_object(cfg_path, command)
    known = {f.name for f in fields(config_cls)}
    data_path = run_dir / "data.json"
    return config_cls(**{k: v for k, v in saved.items() if k in known}), \
        (_read_json_object(data_path, command) if data_path.exists() else None)


def _read_json_object(path: Path, command: str) -> dict[str, Any]:
    """A JSON object file of a run folder; a corrupt one is a :class:`CheckpointError` naming the file."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {e}); restore it, or rerun `{command}` into a "
                              "new folder") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path} is corrupt: expected a JSON object of settings, got {type(d).__name__}; "
                              f"restore it, or rerun `{command}` into a new folder")
    return d


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


class RunLockError(ValueError):
    """A run folder's ``.lock`` that is not a regular file of its own (a link to a file elsewhere)."""


# the names save_checkpoint gives its temporary folders (tempfile.mkdtemp(prefix=".epoch_NNNN.", suffix=".tmp"))
_TMP_CHECKPOINT = re.compile(r"^\.epoch_\d{4,}\.[A-Za-z0-9_]+\.tmp$")


def clean_stale_temporaries(ckpt_root: str | os.PathLike) -> list[str]:
    """Remove the temporary checkpoint folders a writer killed mid-save left in ``ckpt_root``; returns their names.

    Only folders named as :func:`save_checkpoint` names its temporaries (``.epoch_NNNN.<random>.tmp``) are removed,
    never a link or a file, and only by the owner of the run lock (:func:`run_lock` calls it once the lock is held),
    so a temporary another live writer is filling cannot be taken from under it."""
    root = Path(ckpt_root)
    if not root.is_dir() or root.is_symlink():
        return []
    removed = []
    for p in sorted(root.iterdir()):
        if _TMP_CHECKPOINT.match(p.name) and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def _open_lock(path: Path) -> Any:
    """The lock file opened for reading and writing without following a link at ``path`` (a ``.lock`` linked to a
    file elsewhere would otherwise be truncated) and refused unless it is a regular file with no other name."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) \
        | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if path.is_symlink():
            raise RunLockError(f"{path} is a symbolic link (to {os.readlink(path)}); a run's lock must be a regular "
                               "file inside the run folder: remove the link (convattn never follows it)") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else f"a hard link ({st.st_nlink} names)"
        raise RunLockError(f"{path} is {what}; a run's lock must be a regular file of its own inside the run folder: "
                           "remove it (convattn never writes through it)")
    return os.fdopen(fd, "r+", encoding="utf-8")


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike) -> Iterator[None]:
    """Own ``run_dir`` while a run writes to it: an exclusive ``flock`` on ``run_dir/.lock`` (released by the OS
    when the process ends, so a killed run leaves no stale lock). A second writer is refused with the owner's pid.

    The lock is opened without following links (``O_NOFOLLOW``) and must be a regular file with one name: a
    ``.lock`` that is a symbolic or hard link to a file elsewhere is refused, never truncated. Once the lock is
    held, temporary checkpoint folders a killed writer left in ``run_dir/checkpoints`` are removed
    (:func:`clean_stale_temporaries`)."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no flock on this platform: run unguarded
        yield
        return
    f = _open_lock(root / ".lock")
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
        clean_stale_temporaries(root / "checkpoints")
        yield
    finally:
        f.close()  # closing releases the lock
