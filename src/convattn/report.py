"""Tables: one list of row dicts written to the terminal (rich), CSV and Markdown, atomically."""
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

__all__ = ["atomic_write_text", "write_csv", "to_markdown", "print_table", "fmt", "save_figure"]


def safe_name(name: str, fallback: str = "item") -> str:
    """``name`` as one safe path component: letters, digits, ``-``, ``_`` and ``.`` kept, anything else ``_``;
    names made only of dots (``..``) or empty become ``fallback``. Outputs named from user files stay in their
    folder."""
    s = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
    return s if s.strip(".") else fallback


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fmt(v: Any) -> str:
    """Display form of a cell."""
    if v is None:
        return ""
    if isinstance(v, float):
        if v != v:  # NaN
            return "n/a"
        return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> None:
    columns = list(columns or (rows[0].keys() if rows else []))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    atomic_write_text(path, buf.getvalue())


def to_markdown(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                headers: dict[str, str] | None = None) -> str:
    columns = list(columns or (rows[0].keys() if rows else []))
    headers = headers or {}
    head = [headers.get(c, c) for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None,
                headers: dict[str, str] | None = None, title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    columns = list(columns or (rows[0].keys() if rows else []))
    headers = headers or {}
    table = Table(title=title)
    for c in columns:
        table.add_column(headers.get(c, c), justify="left" if c in ("model", "variant") else "right")
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in columns))
    Console(width=max(120, 14 * len(columns))).print(table)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (temporary file + rename) and close it."""
    import matplotlib.pyplot as plt
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp.png")
    os.close(fd)
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=dpi)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
