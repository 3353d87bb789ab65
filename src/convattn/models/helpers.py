"""Loading weights into convattn models, with a report of what matched."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

__all__ = ["LoadReport", "load_pretrained"]


@dataclass
class LoadReport:
    """What a non-strict load did: keys loaded, keys the model has that the file lacks, and the reverse."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors; {len(self.missing)} new in the model (kept at init); "
                 f"{len(self.unexpected)} in the file but not in the model; {len(self.shape_mismatch)} shape mismatches"]
        for title, keys in (("new", self.missing), ("unused", self.unexpected), ("shape mismatch", self.shape_mismatch)):
            if keys:
                shown = ", ".join(keys[:8]) + (f", ... (+{len(keys) - 8})" if len(keys) > 8 else "")
                lines.append(f"  {title}: {shown}")
        return "\n".join(lines)


def load_pretrained(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = False) -> LoadReport:
    """Load ``state_dict`` (e.g. a torchvision ResNet's) into ``model`` and report what matched.

    Tensors whose shapes differ (a classifier with another class count) are skipped and reported. With
    ``strict=True`` any missing, unexpected or mismatched key raises a ValueError naming them.
    """
    own = model.state_dict()
    report = LoadReport()
    to_load = {}
    for k, v in state_dict.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape != v.shape:
            report.shape_mismatch.append(f"{k} (file {tuple(v.shape)}, model {tuple(own[k].shape)})")
        else:
            to_load[k] = v
            report.loaded.append(k)
    report.missing = [k for k in own if k not in state_dict]
    if strict and (report.missing or report.unexpected or report.shape_mismatch):
        raise ValueError("state dict does not match the model:\n" + report.summary())
    model.load_state_dict(to_load, strict=False)
    return report
