"""The package's structure stays as it is documented: no import cycles among its modules, imports
inside functions included (they are cycles all the same, only deferred)."""

import ast
import graphlib
from pathlib import Path

import big2small

PACKAGE_DIR = Path(big2small.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ["big2small", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its body."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: climb from this module's package
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            names |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    resolved = set()
    for name in names:
        while name and name not in known:  # `from a.b import f` depends on a.b
            name = name.rpartition(".")[0]
        if name and name != module:
            resolved.add(name)
    return resolved


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imported(m, p, set(modules)) for m, p in modules.items()}
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None


def test_the_checker_sees_a_cycle_through_a_function_level_import(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    known = {"a", "b"}
    graph = {m: _imported(m, tmp_path / f"{m}.py", known) for m in known}
    assert graph == {"a": {"b"}, "b": {"a"}}
