"""docs/api.md is what scripts/gen_api_docs.py writes from the current signatures and docstrings."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_api_docs.py"
FIX = "run `python scripts/gen_api_docs.py` and commit docs/api.md"


def _generator():
    spec = importlib.util.spec_from_file_location("gen_api_docs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_docs_current():
    gen = _generator()
    expected = gen.render()
    committed = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    if committed != expected:
        diff = [f"line {i + 1}: committed {a!r} / generated {b!r}"
                for i, (a, b) in enumerate(zip(committed.splitlines(), expected.splitlines())) if a != b][:3]
        raise AssertionError(f"docs/api.md is out of date: {FIX}. First differences: {diff or 'length differs'}")
    missing = gen.undocumented()
    assert not missing, f"public names missing from API in scripts/gen_api_docs.py: {missing}; add them, then {FIX}"
