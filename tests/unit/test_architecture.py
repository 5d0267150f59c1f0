"""The dependency rule of docs/architecture.md, checked on every import in the package.

Layers, lowest first: contracts -> analysis (pure core) -> adapters -> assembly -> local stack -> CLI.
A module may import its own component and any lower layer; never a higher layer, and never another
component of its own layer. No import cycle between modules either. Function-level (lazy) and
TYPE_CHECKING imports count: they are dependencies all the same.

Why not import-linter: it builds its graph from one directory per top-level package, and ``cxrmesh.export``
and ``cxrmesh.services`` live in the top-level ``export/`` and ``services/`` folders (the layout users were
promised), mapped by ``package-dir`` in pyproject.toml, so it would not see them. This reads the same mapping.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# lowest first; components of one layer must not import each other
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cxrmesh", "cxrmesh.contracts", "cxrmesh.v1"),
    ("cxrmesh.analysis",),
    ("cxrmesh.dicom", "cxrmesh.search", "cxrmesh.runtime", "cxrmesh.ml", "cxrmesh.synth"),
    ("cxrmesh.services", "cxrmesh.export", "cxrmesh.reporting", "cxrmesh.client"),
    ("cxrmesh.local",),
    ("cxrmesh.cli",),
)
# the bottom layer shares one rule: contracts and generated code may use each other and the root's version
SHARED_BOTTOM = {"cxrmesh", "cxrmesh.contracts", "cxrmesh.v1"}
LAYER_OF = {component: i for i, layer in enumerate(LAYERS) for component in layer}


def package_roots() -> dict[str, Path]:
    """Package name -> folder, from pyproject's package-dir (the same mapping the installer uses)."""
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    roots = {"cxrmesh": ROOT / mapping[""] / "cxrmesh"}
    roots.update({name: ROOT / folder for name, folder in mapping.items() if name})
    return roots


def modules() -> dict[str, Path]:
    """Every hand-written and generated module of the package, by dotted name."""
    found: dict[str, Path] = {}
    for package, folder in package_roots().items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if any(p.startswith(".") or p == "__pycache__" for p in rel.parts):
                continue
            name = ".".join([package, *parts])
            if not name.startswith("cxrmesh.export.triton_backends"):  # run inside Triton, not the package
                found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The cxrmesh modules that ``name`` imports (from-imports resolved to a module where they name one)."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        yield from (t for t in targets if t == "cxrmesh" or t.startswith("cxrmesh."))


def component(module: str) -> str:
    """The layer component a module belongs to: the longest LAYERS entry that prefixes it."""
    best = "cxrmesh"
    for candidate in LAYER_OF:
        if (module == candidate or module.startswith(candidate + ".")) and len(candidate) > len(best):
            best = candidate
    return best


def violations(edges: Iterable[tuple[str, str]]) -> list[str]:
    """Edges that import upwards, or sideways into another component of the same layer."""
    found = []
    for src, dst in edges:
        a, b = component(src), component(dst)
        if a == b or (a in SHARED_BOTTOM and b in SHARED_BOTTOM):
            continue
        if LAYER_OF[b] > LAYER_OF[a]:
            found.append(f"{src} -> {dst}: {b} is a higher layer than {a}")
        elif LAYER_OF[b] == LAYER_OF[a]:
            found.append(f"{src} -> {dst}: {a} and {b} are siblings of one layer")
    return found


def cycles(edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), i.e. import cycles."""
    graph: dict[str, set[str]] = {}
    for src, dst in edges:
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def package_edges() -> list[tuple[str, str]]:
    mods = modules()
    known = set(mods)
    edges = []
    for name, path in mods.items():
        for target in imports_of(name, path, known):
            while target not in known and "." in target:  # `import cxrmesh.x.y` of a symbol-less path
                target = target.rsplit(".", 1)[0]
            # a package importing its own submodules (re-exports) is not a dependency between modules
            if target != name and not target.startswith(name + "."):
                edges.append((name, target))
    return edges


def test_every_module_belongs_to_a_layer() -> None:
    loose = [m for m in modules() if component(m) == "cxrmesh" and m != "cxrmesh"]
    assert not loose, f"modules outside every layer (add them to a component folder): {loose}"


def test_imports_follow_the_layers() -> None:
    assert not violations(package_edges()), "\n".join(violations(package_edges()))


def test_no_import_cycles() -> None:
    found = cycles(package_edges())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(g) for g in found)


@pytest.mark.parametrize(
    ("edge", "why"),
    [
        (("cxrmesh.analysis.regions", "cxrmesh.runtime.kafka"), "higher layer"),
        (("cxrmesh.ml.train", "cxrmesh.synth.corpus"), "siblings"),
        (("cxrmesh.contracts.tensors", "cxrmesh.services.stage"), "higher layer"),
    ],
)
def test_the_check_catches_a_wrong_import(edge: tuple[str, str], why: str) -> None:
    assert why in violations([edge])[0]


def test_the_check_catches_a_cycle() -> None:
    assert cycles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]


def test_every_package_folder_is_in_the_wheel() -> None:
    """A package folder that pyproject does not list would be missing from a non-editable install."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {name for name, path in modules().items() if path.name == "__init__.py"}
    assert folders - listed == set(), f"add to [tool.setuptools] packages: {sorted(folders - listed)}"
