"""Former name of :mod:`convattn.models.weights` (loading weights into convattn models); kept so that old imports
work, with a DeprecationWarning."""
from __future__ import annotations

import warnings

from .weights import LoadReport, added_keys, classifier_names, load_pretrained, upgrade_keys

warnings.warn("convattn.models.helpers is now convattn.models.weights", DeprecationWarning, stacklevel=2)

__all__ = ["LoadReport", "load_pretrained", "added_keys", "classifier_names", "upgrade_keys"]
