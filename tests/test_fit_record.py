"""The fit's state is one explicit value: AmortizedVI creates the FitRecord and alone updates it.

The approximation reads the record (``approx.hist``, ``approx.settings``, ...) and cannot assign
its fields; no module of ``pymc_amortize/fitting`` assigns an attribute of the approximation.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

import pymc_amortize
from pymc_amortize import AmortizedVI
from pymc_amortize.examples.paper import linear_data, linear_model
from pymc_amortize.posterior.record import FitRecord

FITTING = Path(pymc_amortize.__file__).parent / "fitting"


@pytest.fixture(scope="module")
def fitted():
    model = linear_model(linear_data(60, random_seed=0))
    inference = AmortizedVI(family="encoder", model=model, encoder_widths=(), random_seed=1)
    approx = inference.fit(30, progressbar=False, gap_check=False, convergence=False)
    return inference, approx


def test_the_adapter_creates_the_record_and_the_approximation_reads_it(fitted):
    inference, approx = fitted
    record = inference.record
    assert isinstance(record, FitRecord) and approx.record is record
    assert approx.hist is record.hist and record.hist.size == 30
    np.testing.assert_array_equal(record.hist, inference.hist)
    assert record.step_seconds.shape == (30,) and np.isfinite(record.step_seconds).all()
    assert record.settings["steps"] == 30 and record.settings["converged"] is False
    assert approx.settings is record.settings
    assert approx.divergence is None and approx.gap_check is None


@pytest.mark.parametrize("field", ["hist", "step_seconds", "settings", "divergence", "gap_check"])
def test_the_approximation_cannot_assign_the_record_fields(fitted, field):
    _, approx = fitted
    with pytest.raises(AttributeError):
        setattr(approx, field, None)


def test_refine_extends_the_same_record(fitted):
    inference, approx = fitted
    record = inference.record
    inference.refine(10, progressbar=False)
    assert inference.record is record and approx.record is record
    assert record.hist.size == record.step_seconds.size == 40
    assert record.settings["steps"] == 40


def _approximation_attribute_writes(tree: ast.AST) -> list[str]:
    """``approx.x = ...`` / ``self.approx.x = ...`` (also augmented) targets in a module."""

    def is_approx(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id == "approx") or (
            isinstance(node, ast.Attribute) and node.attr == "approx"
        )

    found = []
    for node in ast.walk(tree):
        targets = (
            node.targets
            if isinstance(node, ast.Assign)
            else [node.target]
            if isinstance(node, ast.AugAssign | ast.AnnAssign)
            else []
        )
        for target in targets:
            if isinstance(target, ast.Attribute) and is_approx(target.value):
                found.append(f"line {target.lineno}: .{target.attr}")
    return found


@pytest.mark.parametrize("path", sorted(FITTING.glob("*.py")), ids=lambda p: p.name)
def test_no_fitting_module_assigns_attributes_of_the_approximation(path):
    writes = _approximation_attribute_writes(ast.parse(path.read_text()))
    assert not writes, f"{path.name} assigns attributes of the approximation: {writes}"


def test_the_write_finder_sees_a_write():
    tree = ast.parse("approx.settings = {}\nself.approx.hist += 1\nself.record.hist = 0")
    assert _approximation_attribute_writes(tree) == ["line 1: .settings", "line 2: .hist"]
