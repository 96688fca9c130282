"""The package's import graph follows docs/ARCHITECTURE.md: no import cycles (function-local
imports included, they only hide a cycle) and no stage importing a later stage.

Parsed with ``ast`` (nothing is imported), so it also sees imports inside functions and
``TYPE_CHECKING`` blocks. A new module must be given a layer in ``LAYERS``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "recon"

# Module-name prefix -> layer; the longest matching prefix decides. A module may import
# modules of its own layer or lower ones (docs/ARCHITECTURE.md, "Layers").
LAYERS: dict[str, int] = {
    # 0 shared: conventions, errors, colour maps
    "recon": 0,  # the package __init__ (version only)
    "recon.types": 0, "recon.errors": 0, "recon.geometry": 0, "recon.visual": 0, "recon.progress": 0,
    "recon.data": 1,
    "recon.priors": 2,
    "recon.init": 3,
    "recon.render": 4,
    "recon.optimise": 5,
    # 6 what a run produces: file formats (PLY, mesh, cameras.json, the run folder's files) and
    # image scores. Below the pipeline, which writes and scores every fit.
    "recon.export": 6, "recon.evaluate.metrics": 6, "recon.evaluate.lpips": 6,
    "recon.pipeline": 7,
    # 8 consumers of fits and run folders: `recon eval`, benchmarks, reports, the viewer
    "recon.evaluate": 8, "recon.view": 8,
    "recon.commands": 9, "recon.cli": 9,
}


# Cycles inside one stage that exist today, each with who removes it. The test fails on any
# other cycle, and on a listed one that is gone (delete its line then).
KNOWN_CYCLES: list[list[str]] = [
    # points' random fallback <-> random init's kNN scales (recon/init)
    ["recon.init.points", "recon.init.random"],
    # scoring <-> SpaRe helpers; the one-scorer work of issue 10 rewrites these modules
    ["recon.evaluate.protocols", "recon.evaluate.run", "recon.evaluate.spare"],
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """recon modules that ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import recon.x.y` names a module or a package
                t = t.rpartition(".")[0]
            if t.startswith("recon") and t != name:
                found.add(t)
    return found


def _layer(name: str) -> int | None:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len, default=None)
    return None if best is None else LAYERS[best]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    unplaced = [m for m in _modules() if _layer(m) is None]
    assert not unplaced, f"give these modules a layer in LAYERS (and docs/ARCHITECTURE.md): {unplaced}"


def test_no_import_cycles():
    cycles = _cycles(_graph())
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, "import cycles (function-local imports count): " + "; ".join(" <-> ".join(c) for c in new)
    gone = [c for c in KNOWN_CYCLES if c not in cycles]
    assert not gone, f"these cycles are gone: remove them from KNOWN_CYCLES: {gone}"


def test_pipeline_and_evaluate_do_not_import_each_other_both_ways():
    """The back edge of issue 11: the fit scores itself with evaluate's metrics (layer 6)
    while evaluate's benchmarks run fits (layer 8); no evaluate module the pipeline imports
    may reach the pipeline again."""
    graph = _graph()
    seen, todo = set(), [t for t in graph["recon.pipeline"] if t.startswith("recon.evaluate")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(graph[m])
    assert "recon.pipeline" not in seen


def test_no_stage_imports_a_later_stage():
    bad = []
    for name, targets in _graph().items():
        for t in sorted(targets):
            if _layer(t) > _layer(name):
                bad.append(f"{name} (layer {_layer(name)}) imports {t} (layer {_layer(t)})")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_the_checks_see_function_local_and_relative_imports(tmp_path):
    """The walker itself: a cycle hidden in a function and a back edge are both found."""
    modules = {"recon.a": tmp_path / "a.py", "recon.b": tmp_path / "b.py", "recon.pkg": tmp_path / "pkg" / "__init__.py",
               "recon.pkg.c": tmp_path / "pkg" / "c.py"}
    modules["recon.pkg"].parent.mkdir()
    modules["recon.a"].write_text("from recon.b import f\n")
    modules["recon.b"].write_text("def f():\n    from recon import a\n    return a\n")
    modules["recon.pkg"].write_text("")
    modules["recon.pkg.c"].write_text("from . import c as _\nfrom ..a import f\n")
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    assert graph["recon.b"] == {"recon.a"}
    assert graph["recon.pkg.c"] == {"recon.a"}
    assert _cycles(graph) == [["recon.a", "recon.b"]]
