"""The training engine under every task: the loop, resume and checkpoints, schedules, optimizer groups, DDP.

A task package (``convattn.tasks.classification``, ``convattn.tasks.detection``) brings its data, model, loss and
evaluation as a ``Task`` object and runs ``Loop.fit``; nothing here knows about images, labels or boxes.
"""
from .checkpoint import (CheckpointError, RunInUseError, latest_checkpoint, load_checkpoint, load_run_weights, load_weights,
                         read_run_config, run_lock, save_checkpoint)
from .common import Progress, autocast, check_finite, seed_all
from .distributed import DistInfo, all_reduce_sum, barrier, distributed_session, init_distributed
from .loop import Loop, RunState, Task, compile_model, resume_run, settings_diff, wrap_model
from .optim import param_groups
from .schedule import create_scheduler

__all__ = ["CheckpointError", "RunInUseError", "latest_checkpoint", "load_checkpoint", "load_weights", "run_lock",
           "read_run_config", "load_run_weights",
           "save_checkpoint", "Progress", "autocast", "check_finite", "seed_all", "DistInfo", "all_reduce_sum", "barrier",
           "distributed_session", "init_distributed", "Loop", "RunState", "Task", "resume_run", "settings_diff",
           "wrap_model", "compile_model", "param_groups", "create_scheduler"]
