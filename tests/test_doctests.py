"""Every docstring example in the package runs, under the installed module names (medtrans.data_prep, ...)."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: checkout folder -> installed package (pyproject's package-dir mapping)
PACKAGES = {"medtrans": "medtrans", "data_prep": "medtrans.data_prep", "evaluation": "medtrans.evaluation"}


def module_names() -> list[str]:
    names = []
    for folder, package in PACKAGES.items():
        for f in sorted((ROOT / folder).rglob("*.py")):
            if f.name == "__main__.py":
                continue
            parts = f.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            names.append(".".join((package, *parts)))
    return names


def _run(name: str) -> doctest.TestResults:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in doctest.DocTestFinder().find(module):
        runner.run(test)
    return runner.summarize(verbose=False)


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    assert _run(name).failed == 0, f"docstring examples of {name} failed (see the output above)"


def test_the_package_has_examples():
    assert sum(_run(n).attempted for n in module_names()) >= 20
