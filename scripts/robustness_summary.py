#!/usr/bin/env python3
"""The hostile-input suite (tests/robustness) by outcome: one command, so that a regression shows as a number.

Runs the suite's cases with pytest (the slow ones too, unless ``--fast``) and counts them: a case that passes is
``good``; one that fails (or errors) counts as the outcome class it declares (``@pytest.mark.outcome``, or its
file's section or entry in tests/robustness/conftest.py): ``silent``, ``traceback``, ``misleading``, ``security`` or
``loss``. Skipped cases (a missing optional package, a check that cannot run as root) are listed apart. The exit
status is 0 when every case that ran is good, 1 otherwise.

    python scripts/robustness_summary.py                 # the whole suite, slow cases included (a few minutes)
    python scripts/robustness_summary.py --fast          # without the slow cases
    python scripts/robustness_summary.py -- -k round4    # anything after -- goes to pytest
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "tests" / "robustness"
sys.path.insert(0, str(SUITE))
from _outcomes import OUTCOMES  # noqa: E402 - the suite's classes, kept beside it

COLUMNS = ("good",) + OUTCOMES + ("skipped",)


class Collector:
    """pytest plugin: each case's declared outcome class and what happened to it."""

    def __init__(self) -> None:
        self.declared: dict[str, str | None] = {}
        self.result: dict[str, str] = {}  # nodeid -> passed / failed / skipped
        self.reason: dict[str, str] = {}

    def pytest_configure(self, config: pytest.Config) -> None:  # the marker, also for paths outside the suite
        config.addinivalue_line("markers", "outcome(name): what a failure of this hostile-input case would be")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            marker = item.get_closest_marker("outcome")
            self.declared[item.nodeid] = marker.args[0] if marker is not None and marker.args else None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        nid = report.nodeid
        if report.failed:
            self.result[nid] = "failed"
            text = str(report.longreprtext).strip().splitlines()
            line = next((ln[1:].strip() for ln in reversed(text) if ln.startswith("E ")), text[-1] if text else "")
            where = f" (in {report.when})" if report.when != "call" else ""
            self.reason.setdefault(nid, f"{line or 'failed'}{where}"[:200])
        elif report.skipped and self.result.get(nid) != "failed":
            self.result[nid] = "skipped"
            longrepr: Any = report.longrepr
            self.reason[nid] = str(longrepr[-1] if isinstance(longrepr, tuple) else longrepr)[:200]
        elif report.when == "call" and nid not in self.result:
            self.result[nid] = "passed"

    def outcome(self, nid: str) -> str:
        """good, skipped, the declared class of a failed case, or ``unclassified`` (failed, no class declared)."""
        res = self.result.get(nid, "skipped")
        if res == "passed":
            return "good"
        if res == "skipped":
            return "skipped"
        return self.declared.get(nid) or "unclassified"


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows[1:]])


def summarise(c: Collector, seconds: float) -> tuple[str, bool]:
    """The summary text and whether every case that ran is good."""
    by_file: dict[str, Counter] = {}
    total: Counter = Counter()
    for nid in c.declared:
        o = c.outcome(nid)
        by_file.setdefault(nid.split("::")[0], Counter())[o] += 1
        total[o] += 1
    cols = list(COLUMNS) + (["unclassified"] if total["unclassified"] else [])
    rows = [["file", "cases", *cols]]
    for f, cnt in sorted(by_file.items()):
        rows.append([Path(f).name, str(sum(cnt.values())), *(str(cnt[k]) for k in cols)])
    rows.append(["all", str(sum(total.values())), *(str(total[k]) for k in cols)])
    lines = [f"hostile-input suite: {sum(total.values())} cases in {seconds:.0f} s", "",
             "by outcome: " + ", ".join(f"{total[k]} {k}" for k in cols), "", _table(rows)]
    bad = [nid for nid in c.declared if c.outcome(nid) not in ("good", "skipped")]
    if bad:
        lines += ["", "not good:"] + [f"  {c.outcome(n):12s} {n}: {c.reason.get(n, '')}" for n in bad]
    skipped = [nid for nid in c.declared if c.outcome(nid) == "skipped"]
    if skipped:
        lines += ["", "skipped:"] + [f"  {n}: {c.reason.get(n, '')}" for n in skipped]
    undeclared = [nid for nid in c.declared if c.declared[nid] is None]
    if undeclared:
        lines += ["", f"{len(undeclared)} cases declare no outcome class (add @pytest.mark.outcome(...)):"] + \
                 [f"  {n}" for n in undeclared[:20]]
    return "\n".join(lines), not bad


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="leave out the cases marked slow")
    ap.add_argument("paths", nargs="*", default=[str(SUITE)], help="test files or folders (default: tests/robustness)")
    args, extra = ap.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    collector = Collector()
    start = time.perf_counter()
    os.chdir(ROOT)  # pyproject.toml's pytest settings
    code = pytest.main([*args.paths, "-q", "--tb=line", "-p", "no:cacheprovider", "-m", "not slow" if args.fast
                        else "", *extra], plugins=[collector])
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        print(f"robustness_summary: pytest stopped ({code!r}); no summary", file=sys.stderr)
        return 2
    text, good = summarise(collector, time.perf_counter() - start)
    print("\n" + text)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
