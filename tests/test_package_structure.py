"""The package's shape: no module imports another's private names, and no two modules import each other (also
through imports inside functions, which only hide a circle)."""
import ast
from pathlib import Path

import convattn

SRC = Path(convattn.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def _imports(tree: ast.Module):
    """Every ``from ... import`` of the module, at any depth, except those under ``if TYPE_CHECKING:``."""
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
            for n in ast.walk(node)}
    return [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and id(n) not in skip]


def _target(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".")[: len(mod.split(".")) - (0 if is_pkg else 1)]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _graph():
    mods = _modules()
    edges, private = {}, []
    for mod, (path, is_pkg) in mods.items():
        deps = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            target = _target(mod, is_pkg, node)
            for a in node.names:
                if target.startswith("convattn") and a.name.startswith("_") and not a.name.startswith("__"):
                    private.append(f"{mod} imports {target}.{a.name}")
                sub = f"{target}.{a.name}"
                deps.add(sub if sub in mods else target)
        edges[mod] = {d for d in deps if d in mods and d != mod}
    return edges, private


def test_no_module_imports_private_names_of_another():
    _, private = _graph()
    assert not private, "private names imported across modules: " + "; ".join(private)


def test_no_import_circles_between_modules():
    edges, _ = _graph()
    circles = []
    for a, deps in edges.items():
        for b in deps:
            # a circle through b back to a (depth-first over the graph)
            seen, todo = set(), [b]
            while todo:
                m = todo.pop()
                if m == a:
                    circles.append(f"{a} -> {b} -> ... -> {a}")
                    break
                if m not in seen:
                    seen.add(m)
                    todo.extend(edges.get(m, ()))
    assert not circles, "import circles: " + "; ".join(sorted(set(circles)))


def test_every_relative_import_resolves():
    """Imports inside functions run only when the function does: a module moved without them updated would fail
    late, in a user's run. Resolve each one now (optional packages are imported by the targets lazily too)."""
    import importlib
    bad = []
    for mod, (path, is_pkg) in _modules().items():
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if not node.level:
                continue
            target = _target(mod, is_pkg, node)
            try:
                m = importlib.import_module(target)
            except ModuleNotFoundError as e:
                bad.append(f"{mod}: from {'.' * node.level}{node.module or ''} ({e})")
                continue
            for a in node.names:
                if a.name != "*" and not hasattr(m, a.name) and f"{target}.{a.name}" not in _modules():
                    bad.append(f"{mod}: {target} has no {a.name}")
    assert not bad, "unresolvable imports: " + "; ".join(bad)
