"""The house's layers: no import runs back up a floor, no two rooms import each other, rooms stay small, and
docs/architecture.md lists exactly the modules there are (the contract CI checks on every change)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Source folders and the installed package each becomes (pyproject.toml's package-dir).
SOURCES = {"medtrans": "medtrans", "data_prep": "medtrans.data_prep", "evaluation": "medtrans.evaluation"}
#: Floors, bottom first: a room may import rooms on its own floor or below, never above.
LAYERS = [
    ["medtrans", "medtrans.errors"],
    ["medtrans.config", "medtrans.fsutil", "medtrans.output_dirs", "medtrans.geometry", "medtrans.intensity"],
    ["medtrans.io", "medtrans.metrics", "medtrans.calibration", "medtrans.qa", "medtrans.formats", "medtrans.prepared", "medtrans.provenance",
     "medtrans.runs", "medtrans.models"],
    ["medtrans.dicom_out", "medtrans.cohort", "medtrans.phantom", "medtrans.bundle", "medtrans.modes"],
    ["medtrans.inference", "medtrans.data_prep", "medtrans.evaluation"],
    ["medtrans.training", "medtrans.convert"],
    ["medtrans.demo"],
    ["medtrans.cli", "medtrans.__main__"],
]
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def modules() -> dict[str, Path]:
    """Every module of the installed package, by dotted name."""
    found = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join([package, *parts]).removesuffix(".__init__")
            found[name] = path
    return found


def room(module: str) -> str:
    """The room (layer entry) a module belongs to: the longest listed prefix."""
    entries = [e for floor in LAYERS for e in floor if module == e or module.startswith(e + ".")]
    assert entries, f"{module} is on no floor of LAYERS: add it (tests/test_architecture.py) and docs/architecture.md"
    return max(entries, key=len)


def floor_of(entry: str) -> int:
    return next(i for i, floor in enumerate(LAYERS) if entry in floor)


def imports(path: Path) -> set[str]:
    """The medtrans modules a file imports, at its top or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "medtrans":
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "medtrans"}
    return out


def test_no_import_runs_up_a_floor_and_rooms_form_no_circle():
    graph: dict[str, set[str]] = {}
    for name, path in modules().items():
        mine = room(name)
        for target in imports(path):
            theirs = room(target)
            assert floor_of(theirs) <= floor_of(mine), f"{name} imports {target}: from floor {floor_of(mine)} up " \
                                                       f"to floor {floor_of(theirs)}"
            if theirs != mine:
                graph.setdefault(mine, set()).add(theirs)

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        return any(n == b or (n not in seen and reaches(n, b, seen | {n})) for n in graph.get(a, ()))

    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a, {b}))
    assert not circles, f"rooms that import each other: {circles}"


def _function_sizes(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text())
    return [(f"{path.relative_to(ROOT)}:{n.lineno} {n.name}", n.end_lineno - n.body[0].lineno + 1)
            for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.body]


def test_rooms_stay_small():
    """No function over 60 lines, no module over 400 (the CLI's option signatures excepted)."""
    long_functions, long_modules = [], []
    for name, path in modules().items():
        if name != "medtrans.cli":
            long_functions += [f"{where} ({n} lines)" for where, n in _function_sizes(path) if n > MAX_FUNCTION_LINES]
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            long_modules.append(f"{path.relative_to(ROOT)} ({lines} lines)")
    assert not long_functions, long_functions
    assert not long_modules, long_modules


def test_docs_architecture_lists_every_module():
    """Every module is named in docs/architecture.md as its path, and every path named there exists."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`((?:medtrans|data_prep|evaluation)/[\w/]+\.py)`", doc))
    actual = {str(p.relative_to(ROOT)) for p in modules().values()}
    assert not actual - named, f"modules missing from docs/architecture.md: {sorted(actual - named)}"
    assert not named - actual, f"docs/architecture.md names modules that do not exist: {sorted(named - actual)}"


def _named_configs() -> list[str]:
    from medtrans.config import named_configs

    return named_configs()


@pytest.mark.parametrize("config", _named_configs())
def test_adding_a_mode_is_one_class_and_a_config(config):
    """Every shipped config selects exactly one registered mode, and the registry is the one place modes are named:
    no module outside medtrans/modes/ branches on a mode's name."""
    from medtrans.config import load_config
    from medtrans.modes import MODES, check_mode

    assert check_mode(load_config(config)).name in MODES
    branching = re.compile(r"""(plane|mode\.name)\s*[!=]=\s*["'](axial|coronal|sagittal|all|3d|multiplanar)["']""")
    offenders = [str(p.relative_to(ROOT)) for name, p in modules().items()
                 if not name.startswith("medtrans.modes") and branching.search(p.read_text())]
    assert not offenders, f"these modules branch on a mode by name (give the mode a method instead): {offenders}"
