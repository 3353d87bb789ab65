"""Check ``attach`` on a network: what went in, whether it starts as the identity, trains and round-trips.

:func:`verify_attach` is what the coverage table (``benchmarks/attach_coverage.py``) and the test suite run on
every architecture, and what a user can run on their own network before training it::

    from convattn.models.verify import verify_attach
    print(verify_attach(lambda: MyNet(num_classes=10), "se"))
"""
from __future__ import annotations

import copy
from typing import Any, Callable

import torch
from torch import nn

from .attach import attach

__all__ = ["verify_attach", "VERIFY_COLUMNS"]

VERIFY_COLUMNS = ("status", "inserted", "params", "identity_eval", "identity_train", "train_step", "round_trip",
                  "stages", "found", "reason")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def _logits(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return _logits(out[0])
    for attr in ("logits", "out"):
        if hasattr(out, attr):
            return getattr(out, attr)
    if isinstance(out, dict):
        return _logits(next(iter(out.values())))
    raise TypeError(f"cannot read logits from a {type(out).__name__}")


def _run(model: nn.Module, x: torch.Tensor, train: bool, seed: int = 0) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(seed)  # dropout / drop path draw the same masks in both networks
    return _logits(model(x))


def _spread(model: nn.Module) -> None:
    """Norm weights, and parameters initialised at or near zero (zero-init last BN, layer scales of 1e-6, skip-init
    gains), drawn from [0.5, 1.5]: a branch scaled to ~0 would hide any gate and give it no gradient."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase) and getattr(m, "weight", None) is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        for n, p in model.named_parameters():
            if not n.endswith("bias") and p.is_floating_point() and p.numel() and p.abs().max() < 1e-3:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)


@torch.no_grad()
def _calibrate_norms(model: nn.Module, x: torch.Tensor) -> None:
    """BatchNorm running statistics of the input (one pass in training mode, cumulative average): a deep network
    without them computes ~1e11 in evaluation mode and overflows after one step."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    try:
        _run(model, x, True)
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
    model.eval()


def _network(build: Any) -> nn.Module:
    """The network to check: ``build()``, or a copy of ``build`` when it is a network (the caller's is not changed)."""
    if isinstance(build, nn.Module):
        return copy.deepcopy(build)
    if not callable(build):
        raise ValueError(f"verify_attach: build must be an nn.Module or a function returning one, got "
                         f"{type(build).__name__} {build!r:.60}")
    model = build()
    if not isinstance(model, nn.Module):
        raise ValueError(f"verify_attach: build() returned a {type(model).__name__}, not an nn.Module")
    return model


def _input_channels(model: nn.Module) -> list[int]:
    """Input channel counts to try, as attach does: the declared ``in_chans``, the first convolution's, 3, 1."""
    declared = getattr(model, "in_chans", None)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    cands = [declared, conv.in_channels if conv is not None else None, 3, 1]
    return list(dict.fromkeys(c for c in cands if isinstance(c, int) and not isinstance(c, bool) and c > 0))


def _cannot_run(model: nn.Module) -> str:
    """Why ``model`` cannot be run as it is ("" if it can)."""
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return ("cannot check: the network is on the meta device (shapes without values); build it on a real "
                "device (cpu, cuda) to run the checks")
    return ""


def verify_attach(build: Callable[[], nn.Module] | nn.Module, attn: str | None = None, conv: str | None = None,
                  input_size: int = 64, in_chans: int | None = None, tol: float = 1e-5,
                  **attach_kwargs: Any) -> dict[str, Any]:
    """One row of the coverage table for ``attach(build(), attn, conv)``.

    ``build``: a function returning the network (called once), or the network itself (a copy is checked).
    ``in_chans``: channels of the test input (default: the first of the network's ``in_chans``, its first
    convolution's, 3 and 1 that it runs on, as ``attach`` finds them).
    The input has the network's dtype and device (float16 / bfloat16 networks are checked in their dtype).

    ``status`` is ``"ok"`` (every check held), ``"failed"`` (a check did not hold, or could not run: ``reason``
    says which and why, e.g. a forward under ``torch.no_grad`` or a network on the meta device) or ``"refused"``
    (``attach`` raised a ValueError, given in ``reason``). Checks: modules inserted (count, parameters added);
    identity at insertion with ``identity=True`` (relative difference of the logits, eval and train mode, at most
    ``tol``); one SGD step without the identity form moves inserted parameters (``moved/total`` tensors); the
    attached state dict loads strictly into a fresh attach of the same network and gives the same logits.
    """
    row: dict[str, Any] = {k: "" for k in VERIFY_COLUMNS}
    torch.manual_seed(0)
    base = _network(build)
    why = _cannot_run(base)
    if why:
        row.update(status="failed", reason=why)
        return row
    p = next((t for t in [*base.parameters(), *base.buffers()] if t.is_floating_point()), None)
    _spread(base)
    for i, chans in enumerate(_input_channels(base) if in_chans is None else [in_chans]):
        x = torch.randn(2, chans, input_size, input_size, generator=torch.Generator().manual_seed(0))
        if p is not None:
            x = x.to(device=p.device, dtype=p.dtype)
        try:
            _calibrate_norms(base, x)
            break
        except Exception as e:  # noqa: BLE001 - the plain network cannot run on the input: a row, not a traceback
            if i == 0:
                first = (f"cannot check: the plain network fails on a {tuple(x.shape)} "
                         f"{str(x.dtype).removeprefix('torch.')} input: {_first_line(e)}")
    else:
        row.update(status="failed", reason=first)
        return row
    try:
        m = attach(copy.deepcopy(base), attn, conv, identity=True, **attach_kwargs)
    except ValueError as e:
        row.update(status="refused", reason=str(e).splitlines()[0][:300])
        return row
    step = ["checks"]
    try:
        _checks(row, step, base, m, x, attn, conv, tol, attach_kwargs)
    except Exception as e:  # noqa: BLE001 - a check that cannot run is a failed row with the reason
        row.update(status="failed", reason=f"{step[0]}: {_first_line(e)}")
    return row


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200]}" if text else type(e).__name__


def _checks(row: dict[str, Any], step: list[str], base: nn.Module, m: nn.Module, x: torch.Tensor,
            attn: str | None, conv: str | None, tol: float, attach_kwargs: dict[str, Any]) -> None:
    """The checks after a successful attach, filling ``row``; ``step[0]`` names the one running (the reason of a
    failure that stops them)."""
    rep = m.convattn_report
    row.update(inserted=rep.count(), params=rep.added_params, stages=rep.blocks_per_stage,
               found=", ".join(f"{k} {n}" for k, n in rep.block_kinds.items()))
    failures = []
    step[0] = "identity at insertion"
    with torch.no_grad():  # in float64: the oracle is exact up to rounding, not hidden in float32 noise
        ref, m64, x64 = copy.deepcopy(base).double(), copy.deepcopy(m).double(), x.double()
        for mode, key in ((False, "identity_eval"), (True, "identity_train")):
            r = _rel(_run(m64, x64, mode), _run(ref, x64, mode))
            row[key] = f"{r:.1e}"
            if not r <= tol:
                failures.append(f"{key} {r:.1e}")
    # a training step without the identity form
    step[0] = "train step"
    torch.manual_seed(0)
    t = attach(copy.deepcopy(base), attn, conv, **attach_kwargs)
    inserted = _inserted_params(t, base)
    before = {n: p.detach().clone() for n, p in t.named_parameters() if n in inserted}
    opt = torch.optim.SGD(t.parameters(), lr=1e-3)
    t.train()
    out = _logits(t(x)).float()
    loss = nn.functional.cross_entropy(out, torch.zeros(len(x), dtype=torch.long, device=out.device)) \
        if out.ndim == 2 else out.pow(2).mean()  # a feature extractor: any loss that reaches every output
    if loss.requires_grad:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t.parameters(), 1.0)  # a small step: checks that parameters move, not training
        opt.step()
        moved = sum(1 for n, p in t.named_parameters() if n in before and not torch.equal(p.detach(), before[n]))
        row["train_step"] = f"{moved}/{len(before)}"
        if not torch.isfinite(loss) or moved == 0:
            failures.append(f"train step (loss {loss.item():.3g}, {moved} moved)")
    else:
        row["train_step"] = f"0/{len(before)}"
        failures.append("train step: no gradient reaches the loss (the network's forward runs without gradients, "
                        "e.g. under torch.no_grad or on detached tensors), so nothing can train")
    # state dict round trip
    step[0] = "round trip"
    fresh = attach(copy.deepcopy(base), attn, conv, **attach_kwargs)
    try:
        fresh.load_state_dict(t.state_dict())
        with torch.no_grad():
            a, b = _run(fresh, x, False), _run(t, x, False)
        same = bool(torch.isfinite(b).all()) and torch.equal(a, b)
        row["round_trip"] = "ok" if same else "differs"
        if not same:
            failures.append("round trip differs")
    except RuntimeError as e:
        row["round_trip"] = "fails"
        failures.append(f"round trip: {str(e).splitlines()[0][:120]}")
    row["status"] = "failed" if failures else "ok"
    row["reason"] = "; ".join(failures)


def _inserted_params(model: nn.Module, base: nn.Module) -> set[str]:
    """Names of parameters the attach added (keys the base network does not have)."""
    own = set(base.state_dict())
    return {n for n, _ in model.named_parameters() if n not in own}
