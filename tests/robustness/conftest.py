"""Hostile-input suite: every case carries its outcome class as a marker (``@pytest.mark.outcome``; see
``_outcomes.py``), which ``scripts/robustness_summary.py`` counts."""
from __future__ import annotations

from pathlib import Path

import pytest

from _outcomes import OUTCOMES, declared_outcome  # noqa: E402 - beside this file


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "outcome(name): what a failure of this hostile-input case would be: "
                                       + ", ".join(OUTCOMES) + " (tests/robustness/conftest.py)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every hostile-input case carries its outcome marker (checked: a name outside :data:`OUTCOMES` is an error)."""
    here = Path(__file__).parent
    for item in items:
        if here not in Path(str(item.path)).parents:
            continue
        outcome = declared_outcome(item)
        if outcome is not None and outcome not in OUTCOMES:
            raise pytest.UsageError(f"{item.nodeid}: outcome {outcome!r} is none of {', '.join(OUTCOMES)}")
        if outcome is not None and item.get_closest_marker("outcome") is None:
            item.add_marker(pytest.mark.outcome(outcome))
