"""Learning-rate schedules from timm, stepped once per update (``step_update(updates)``) by the loop."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["create_scheduler"]


def create_scheduler(opt: torch.optim.Optimizer, schedule: str, steps_per_epoch: int, epochs: int,
                     warmup_steps: int = 0, warmup_lr: float = 0.0, min_lr: float = 0.0,
                     milestones: Sequence[int] | None = None, gamma: float = 0.1):
    """timm's ``CosineLRScheduler`` (to ``min_lr`` over the run) or ``MultiStepLRScheduler`` (``gamma`` at each
    milestone epoch), in updates, with a linear warm-up from ``warmup_lr`` over ``warmup_steps`` updates.

    Update ``u`` (0-based) trains at the schedule's value at ``t = u``: the warm-up starts at ``warmup_lr`` and a
    milestone ``m`` applies from the first update of epoch ``m + 1`` (torchvision's reference detection recipe).
    """
    from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler
    if schedule not in ("cosine", "step"):
        raise ValueError(f"schedule must be 'cosine' or 'step', got {schedule!r}")
    common = dict(warmup_t=warmup_steps, warmup_lr_init=warmup_lr, t_in_epochs=False)
    if schedule == "cosine":
        return CosineLRScheduler(opt, t_initial=epochs * steps_per_epoch, lr_min=min_lr, **common)
    # timm counts a milestone from index t + 1 and, by default, after the warm-up: "+ 1" and warmup_prefix=False
    # make milestone m start exactly at update m * steps_per_epoch whatever the warm-up
    return MultiStepLRScheduler(opt, decay_t=[m * steps_per_epoch + 1 for m in milestones or []], decay_rate=gamma,
                                warmup_prefix=False, **common)
