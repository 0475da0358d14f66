"""scripts/bench_step.py gives a verdict against the overhead budget only when the ratio's spread does not cross it."""

import importlib.util
import sys
from pathlib import Path

import pytest

from sweep.step_timing import Spread

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@pytest.fixture(scope="module")
def bench_step():
    sys.path.insert(0, str(SCRIPTS))  # it imports its sibling benchkit
    try:
        spec = importlib.util.spec_from_file_location("bench_step", SCRIPTS / "bench_step.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPTS))
    return module


@pytest.mark.parametrize("ratio, verdict", [
    (Spread(1.00, 0.98, 1.03), True),
    (Spread(1.00, 0.48, 2.11), None),  # a median within the budget, but the spread crosses it: no verdict
    (Spread(1.04, 1.02, 1.08), None),
    (Spread(1.10, 1.06, 1.20), False),
])
def test_budget_verdict(bench_step, ratio, verdict):
    assert bench_step.OVERHEAD_BUDGET == 1.05
    assert bench_step.budget_verdict(ratio) is verdict


def test_one_mechanism_over_the_budget_or_undecided_decides_the_whole(bench_step):
    assert bench_step.overall_verdict({"a": True, "b": True}) == (True, "within the 1.05 budget")
    within, text = bench_step.overall_verdict({"a": True, "b": None})
    assert within is None and text.startswith("no verdict") and "b" in text
    within, text = bench_step.overall_verdict({"a": False, "b": None})
    assert within is False and text == "over the 1.05 budget: a"
