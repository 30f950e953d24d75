"""Notebooks are committed without outputs and with a kernel that nbmake can start."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "getting_started.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs_and_a_title(path):
    notebook = json.loads(path.read_text())
    with_outputs = [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not with_outputs, f"{path.name}: clear the outputs of cells {with_outputs}"
    assert notebook["metadata"].get("kernelspec", {}).get("language") == "python"
    first = notebook["cells"][0]
    # The docs use the first heading as the page title.
    assert first["cell_type"] == "markdown" and "".join(first["source"]).startswith("# ")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_code_compiles_without_warnings(path):
    # A generated cell once held `if ('gap_to_optimum',) is None:`, a SyntaxWarning at run time.
    notebook = json.loads(path.read_text())
    for i, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile("".join(cell["source"]), f"{path.name}, cell {i}", "exec")
