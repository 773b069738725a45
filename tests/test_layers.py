"""The floor plan of docs/architecture.md, checked against the code: every import of every module of
`stages/` and `pipeline/` (at any depth: function-local and TYPE_CHECKING imports count, since they
are the same dependency taken later) goes to the same floor or a lower one, and no modules import
each other in a circle.

Floors, lowest first (a module may import its own floor's package and any lower floor):
  1 stages.core                 pure functions (lgf, grid, devices, quantize, compiling, fs)
  2 stages.config               the typed YAML loader and the stage schemas (uses core)
  3 stages.media, stages.store, stages.families, stages.teacher
                                the shared floor. Its packages import only core and config, with one
                                documented exception (SIBLINGS): a family may import the store, whose
                                ArraySpec names the arrays of its encodings column (the on-disk
                                contract every family writes into); the store never asks about a
                                family, so the floor stays acyclic. media and teacher are independent.
  4 stages.extract              stage one
  5 stages.distill              stage two
  6 stages.evaluate             evaluation
  7 pipeline                    entry points, orchestration and views, on top
The package root `stages` (a docstring) is floor 0. A module in none of these packages fails: a new
package is placed on a floor here first.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FLOORS: dict[str, int] = {
    "stages": 0,
    "stages.core": 1,
    "stages.config": 2,
    "stages.media": 3, "stages.store": 3, "stages.families": 3, "stages.teacher": 3,
    "stages.extract": 4,
    "stages.distill": 5,
    "stages.evaluate": 6,
    "pipeline": 7,
}
# same-floor imports between different packages that are allowed, as (importer, imported) pairs:
# one direction only, so the floor keeps an order (the reverse pair is refused, the circle check runs)
SIBLINGS: set[tuple[str, str]] = {("stages.families", "stages.store")}

# Violations still in the code, each with the helper that removes it (issue 16). The test fails on any
# problem not listed AND on a listed one that is gone, so this list only shrinks: delete the entry
# with the fix. Keys carry no line numbers (they move with every edit); the failure text has them.
KNOWN: dict[str, str] = {
}


@dataclass(frozen=True)
class Problem:
    key: str  # what is wrong, without line numbers: "importer -> imported", or "circle: " + sorted modules
    text: str  # the one line a reader acts on: file:line, both modules and floors, or the circle's path


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name, resolved to a module of the tree
    where: str  # file:line of the import statement, relative to the root


def modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """{dotted name: file} of every module under root/<package> (a package is named by its __init__)."""
    out = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known prefix of a dotted name (`stages.core.lgf.fuse` -> `stages.core.lgf`)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return None


def imports(root: Path, packages: tuple[str, ...]) -> list[Import]:
    """Every import between modules of the tree, relative ones resolved; `from a import b` goes to
    the module a.b when b is a submodule, else to a."""
    known = modules(root, packages)
    out = []
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package holding this module, `level - 1` further up
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in known else module for a in node.names]
            for target in targets:
                resolved = _resolve(target, known)
                if resolved is not None and resolved != name:
                    out.append(Import(name, resolved, f"{path.relative_to(root)}:{node.lineno}"))
    return out


def floor_of(module: str, floors: dict[str, int]) -> tuple[str, int] | None:
    """(package, floor) of the longest floor prefix of a module, None when it is on no floor."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        package = ".".join(parts[:n])
        if package in floors:
            return package, floors[package]
    return None


def layer_violations(edges: list[Import], floors: dict[str, int], siblings: set[tuple[str, str]]) -> list[Problem]:
    """One problem per import that goes up a floor, or sideways to another package of the same floor
    without a SIBLINGS entry, or from/to a module on no floor."""
    out: list[Problem] = []
    for e in edges:
        a, b = floor_of(e.importer, floors), floor_of(e.imported, floors)
        key, where = f"{e.importer} -> {e.imported}", e.where
        if a is None or b is None:
            out.append(Problem(key, f"{where}: {key}: {e.importer if a is None else e.imported} is on no floor"))
        elif b[1] > a[1]:
            out.append(Problem(key, f"{where}: {e.importer} (floor {a[1]}, {a[0]}) imports {e.imported} (floor {b[1]}, {b[0]}): upward"))
        elif b[1] == a[1] and a[0] != b[0] and (a[0], b[0]) not in siblings:
            out.append(Problem(key, f"{where}: {e.importer} ({a[0]}) imports {e.imported} ({b[0]}): same floor {a[1]}, not in SIBLINGS"))
    return list(dict.fromkeys(out))  # `from x import a, b` of one module is one problem


def cycles(edges: list[Import]) -> list[list[str]]:
    """One circle per strongly connected component of the import graph (Tarjan), as a closed path
    [m0, m1, ..., m0] through real edges."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
        graph.setdefault(e.imported, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (~100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle(graph, c) for c in components]


def _circle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest closed path from the component's first module back to itself, inside the component."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle through {start} in {sorted(component)}")  # unreachable for an SCC


def problems(root: Path, packages: tuple[str, ...], floors: dict[str, int], siblings: set[tuple[str, str]]) -> list[Problem]:
    edges = imports(root, packages)
    out = layer_violations(edges, floors, siblings)
    out += [Problem(f"circle: {' '.join(sorted(set(c)))}", f"import circle: {' -> '.join(c)}") for c in cycles(edges)]
    unplaced = [m for m in modules(root, packages) if floor_of(m, floors) is None]
    out += [Problem(f"unplaced: {m}", f"{m}: on no floor (add its package to FLOORS)") for m in unplaced]
    return out


def check(root: Path, packages: tuple[str, ...], floors: dict[str, int], siblings: set[tuple[str, str]]) -> list[str]:
    """Every problem's line (empty when the tree follows the floors)."""
    return [p.text for p in problems(root, packages, floors, siblings)]


def test_the_code_follows_the_floor_plan() -> None:
    found = problems(ROOT, ("stages", "pipeline"), FLOORS, SIBLINGS)
    new = [p.text for p in found if p.key not in KNOWN]
    assert new == [], "imports against the floor plan (tests/test_layers.py docstring):\n" + "\n".join(new)
    fixed = sorted(set(KNOWN) - {p.key for p in found})
    assert fixed == [], "fixed, so delete from KNOWN:\n" + "\n".join(fixed)


def test_the_walk_sees_every_module_and_real_imports() -> None:
    # the checker is only as good as its walk: it must see the modules and the edges we know exist
    known = modules(ROOT, ("stages", "pipeline"))
    assert "stages.core.lgf" in known and "pipeline.cli" in known and "stages" in known
    edges = {(e.importer, e.imported) for e in imports(ROOT, ("stages", "pipeline"))}
    assert ("pipeline.cli", "stages.config.loader") in edges  # module-level `from x.y import z`
    assert ("pipeline.cli", "pipeline.runner") in edges  # function-local import
    assert len(edges) > 150


# --- the checker itself, on planted trees -------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


PLANTED_FLOORS = {"low": 1, "mid": 2, "top": 3}


def test_a_clean_planted_tree_passes(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "low/__init__.py": "", "low/a.py": "X = 1\n",
        "mid/__init__.py": "", "mid/x.py": "from low.a import X\n",
        "top/__init__.py": "", "top/run.py": "import mid.x\nfrom low import a\n",
    })
    assert check(root, ("low", "mid", "top"), PLANTED_FLOORS, set()) == []


def test_a_planted_upward_import_fails_naming_both_modules_and_the_line(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "low/__init__.py": "",
        # function-local, and `from package import submodule`: both must be seen
        "low/a.py": "X = 1\n\n\ndef f():\n    from top import run\n    return run\n",
        "mid/__init__.py": "", "mid/x.py": "from ..low.a import X\n",  # relative, resolved
        "top/__init__.py": "", "top/run.py": "",
    })
    problems = check(root, ("low", "mid", "top"), PLANTED_FLOORS, set())
    assert problems == ["low/a.py:5: low.a (floor 1, low) imports top.run (floor 3, top): upward"]


def test_a_planted_circle_fails_with_the_cycle(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "low/__init__.py": "", "low/a.py": "",
        "mid/__init__.py": "",
        "mid/x.py": "from . import y\n",
        "mid/y.py": "def g():\n    import mid.x\n",
    })
    problems = check(root, ("low", "mid"), PLANTED_FLOORS, set())
    assert problems == ["import circle: mid.x -> mid.y -> mid.x"]


def test_a_planted_sideways_import_and_an_unplaced_module_fail(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "mid/__init__.py": "", "mid/x.py": "from mid.y import Z\n", "mid/y.py": "Z = 1\n",
        "mid/z/__init__.py": "", "mid/z/w.py": "",
    })
    floors = {"mid": 2, "mid.x": 2, "mid.y": 2}
    problems = check(root, ("mid",), floors, set())
    assert "mid/x.py:1: mid.x (mid.x) imports mid.y (mid.y): same floor 2, not in SIBLINGS" in problems
    assert check(root, ("mid",), floors, {("mid.x", "mid.y")}) == []
    # mid.z is inside `mid`, so it takes mid's floor; a top-level package absent from FLOORS does not
    root = _tree(tmp_path, {"stray/__init__.py": "", "stray/s.py": "import mid.y\n"})
    problems = check(root, ("mid", "stray"), {**floors}, {("mid.x", "mid.y")})
    assert "stray: on no floor (add its package to FLOORS)" in problems
    assert "stray/s.py:1: stray.s -> mid.y: stray.s is on no floor" in problems
