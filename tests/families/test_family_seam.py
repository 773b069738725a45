"""Outside stages/families/, no module asks which family it has: no comparison with a registered family's name
and no import of a family's own module (stages.families.<family>...). Found with `ast`, so comments and docs
do not count. The modules still doing it are listed in KNOWN (shrink-only: a fixed one must be deleted from it).
"""

from __future__ import annotations

import ast
from pathlib import Path

from stages.families.registry import FAMILIES

ROOT = Path(__file__).resolve().parents[2]
# module -> who moves it behind the family interface
KNOWN: dict[str, str] = {}


def family_questions(path: Path, root: Path = ROOT) -> list[str]:
    """'file:line what' for each comparison with a family name and each import of a family's module."""
    tree = ast.parse(path.read_text(), str(path))
    names, own = set(FAMILIES), tuple(f"stages.families.{f}" for f in FAMILIES)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
            hit = [v.value for v in values if isinstance(v, ast.Constant) and v.value in names]
            hit += [e.value for v in values if isinstance(v, (ast.Tuple, ast.List, ast.Set)) for e in v.elts
                    if isinstance(e, ast.Constant) and e.value in names]
            found += [f"{path.relative_to(root)}:{node.lineno} compares with {h!r}" for h in hit]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(own):
            found.append(f"{path.relative_to(root)}:{node.lineno} imports {node.module}")
        elif isinstance(node, ast.Import):
            found += [f"{path.relative_to(root)}:{node.lineno} imports {a.name}" for a in node.names if a.name.startswith(own)]
    return found


def test_no_module_outside_the_families_asks_for_a_family():
    files = [p for pkg in ("stages", "pipeline") for p in sorted((ROOT / pkg).rglob("*.py"))
             if not p.relative_to(ROOT).as_posix().startswith("stages/families/")]
    found = {p.relative_to(ROOT).as_posix(): family_questions(p) for p in files}
    new = [line for rel, lines in found.items() if rel not in KNOWN for line in lines]
    assert new == []
    fixed = sorted(rel for rel in KNOWN if not found.get(rel))
    assert fixed == [], f"fixed, so delete from KNOWN: {fixed}"


def test_a_planted_family_branch_is_found(tmp_path):
    family = next(iter(FAMILIES))
    planted = tmp_path / "stages" / "planted.py"
    planted.parent.mkdir()
    planted.write_text(f"import stages.families.{family}.family\n\ndef f(x):\n    return x in ({family!r}, 'other')\n")
    assert family_questions(planted, tmp_path) == [
        f"stages/planted.py:1 imports stages.families.{family}.family",
        f"stages/planted.py:4 compares with {family!r}",
    ]
