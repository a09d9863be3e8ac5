"""No import cycles among the registry packages, nor in the whole library, and serving never imports training:
every ``radvlsm.*`` import, module-level or inside a function (or under ``TYPE_CHECKING``), read from the source
with :mod:`ast`, so a cycle hidden in a function body counts too.

A registry is a leaf that its builders import; the package ``__init__`` imports the builders to register them.
The implicit import of a package by its submodules (Python runs ``radvlsm/models/__init__.py`` before
``radvlsm/models/registry.py``) is not an edge here: it always comes first and never forms a cycle at run time.
Imports made by name at run time (``importlib.import_module``) are not seen.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"
PACKAGE = "radvlsm"

#: what is checked now; pass more (or ``[LIB / "radvlsm"]``) to ``import_cycle`` to cover more of the library
CHECKED = [LIB / "radvlsm" / "models", LIB / "radvlsm" / "runtimes",
           LIB / "radvlsm" / "proposals" / "base.py", LIB / "radvlsm" / "proposals" / "__init__.py"]


def module_name(path: Path, root: Path = LIB) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str, root: Path = LIB) -> bool:
    """Whether dotted ``name`` is a module or package in the source tree under ``root``."""
    path = root.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def source_files(targets: Iterable[Path]) -> list[Path]:
    """Every ``.py`` file of the given package directories (recursively) and single files."""
    files: set[Path] = set()
    for target in targets:
        files.update(target.rglob("*.py") if target.is_dir() else [target])
    return sorted(files)


def imports_of(path: Path, root: Path = LIB, package: str = PACKAGE) -> set[str]:
    """The ``package.*`` modules that ``path`` imports anywhere in its body. ``from a.b import c`` is module
    ``a.b.c`` when that is a module, else ``a.b``; relative imports are resolved against ``path``'s package."""
    me = module_name(path, root)
    here = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if alias.name != "*" and is_module(sub, root) else base)
    return {m for m in found if m == package or m.startswith(package + ".")}


def import_graph(targets: Iterable[Path], root: Path = LIB, package: str = PACKAGE) -> dict[str, set[str]]:
    """``module -> modules it imports``, restricted to the modules of ``targets`` (no self edges)."""
    files = source_files(targets)
    nodes = {module_name(f, root) for f in files}
    return {module_name(f, root): (imports_of(f, root, package) & nodes) - {module_name(f, root)} for f in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search, deterministic order)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def import_cycle(targets: Iterable[Path], root: Path = LIB, package: str = PACKAGE) -> list[str] | None:
    return find_cycle(import_graph(targets, root, package))


def test_no_import_cycles_in_the_registry_packages():
    graph = import_graph(CHECKED)
    assert {"radvlsm.models.registry", "radvlsm.runtimes.registry", "radvlsm.proposals.base"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_registries_are_leaves():
    graph = import_graph(CHECKED)
    assert graph["radvlsm.models.registry"] == set()
    assert graph["radvlsm.runtimes.registry"] == {"radvlsm.models.registry"}
    assert graph["radvlsm.proposals.base"] == set()  # imports radvlsm.io and radvlsm.predictor, outside the set
    # the packages register their built-ins
    assert {"radvlsm.models.litemedsam", "radvlsm.models.sam_vit"} <= graph["radvlsm.models"]
    assert {"radvlsm.runtimes.onnx", "radvlsm.runtimes.torch_runtimes"} <= graph["radvlsm.runtimes"]


def test_the_checker_finds_function_level_and_relative_cycles(tmp_path):
    pkg = tmp_path / "radvlsm" / "demo"
    pkg.mkdir(parents=True)
    (tmp_path / "radvlsm" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text("def load():\n    from radvlsm.demo import builder  # noqa\n")
    (pkg / "builder.py").write_text("from .registry import load\n")
    (pkg / "other.py").write_text("import radvlsm.demo.registry\nfrom radvlsm.demo.builder import load\n")
    graph = import_graph([pkg], root=tmp_path)
    assert graph["radvlsm.demo.other"] == {"radvlsm.demo.registry", "radvlsm.demo.builder"}
    assert import_cycle([pkg], root=tmp_path) == ["radvlsm.demo.builder", "radvlsm.demo.registry",
                                                  "radvlsm.demo.builder"]
    (pkg / "registry.py").write_text("REGISTRY = {}\n")
    assert import_cycle([pkg], root=tmp_path) is None


def test_no_import_cycles_in_the_library():
    """The whole of ``lib/radvlsm``: one composition root (:mod:`radvlsm.stack`) over layers that never import
    back (function-level imports count)."""
    graph = import_graph([LIB / PACKAGE])
    assert {"radvlsm.versions.store", "radvlsm.diagnosis.recalibrate", "radvlsm.training.datastore"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_serving_never_imports_training():
    """Only training publishes versions: no module of ``lib/radvlsm`` outside ``training/`` imports
    ``radvlsm.training`` (module- or function-level); serving reads the versions from :mod:`radvlsm.versions`."""
    training = f"{PACKAGE}.training"
    offenders = {}
    for path in source_files([LIB / PACKAGE]):
        if (LIB / PACKAGE / "training") in path.parents:
            continue
        hits = {m for m in imports_of(path) if m == training or m.startswith(training + ".")}
        if hits:
            offenders[module_name(path)] = sorted(hits)
    assert not offenders, f"serving modules import radvlsm.training: {offenders}"


#: what builds a backbone, a predictor or a proposer: only the stack (and the library's own builders) call these
BUILDERS = {"build_backbone", "build_proposer", "SegmentPredictor"}


def builder_calls(path: Path) -> list[str]:
    """``name:line`` of every call of a :data:`BUILDERS` name in ``path`` (plain or attribute call)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in BUILDERS:
                out.append(f"{name}:{node.lineno}")
    return out


def test_cli_app_and_benchmarks_build_through_the_stack():
    """The CLI, the MONAI Label app and every benchmark get their predictor and proposers from
    :class:`radvlsm.stack.Stack` (so each measures or serves what the server serves): none calls a builder."""
    root = LIB.parent
    files = [LIB / PACKAGE / "cli.py", *sorted((root / "apps" / "radvlsm").rglob("*.py")),
             *sorted((root / "benchmarks").glob("*.py"))]
    offenders = {str(p.relative_to(root)): calls for p in files if (calls := builder_calls(p))}
    assert not offenders, f"builders called outside the stack: {offenders}"
    assert builder_calls(LIB / PACKAGE / "stack.py")  # the check sees calls where they are
