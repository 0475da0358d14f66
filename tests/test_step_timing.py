"""The side-by-side step timing: its interleaving and its summaries (no timing is asserted, only structure)."""

import random

import pytest
import torch

from sweep.selection import Selection
from sweep.step_timing import Spread, engine_step, round_ratios, step_ms, time_round, time_rounds
from sweep.trial import TrialSpec


def test_every_variant_takes_one_step_per_batch_and_a_group_runs_back_to_back():
    calls = []

    def step(name):
        return lambda inputs, targets: calls.append((name, int(inputs)))

    groups = [["a1", "a2"], ["b"], ["c1", "c2", "c3"]]
    steps = {v: step(v) for group in groups for v in group}
    batches = [(torch.tensor(i), torch.tensor(0)) for i in range(4)]
    times = time_round(groups, steps, batches, random.Random(0))
    assert {v: len(t) for v, t in times.items()} == {v: 4 for v in steps}
    for batch in range(4):
        order = [name for name, b in calls if b == batch]
        assert sorted(order) == sorted(steps), "every variant steps on every batch before the next batch"
        for group in groups:
            at = sorted(order.index(v) for v in group)
            assert at == list(range(at[0], at[0] + len(group))), f"group {group} ran apart: {order}"
    orders = {tuple(name for name, b in calls if b == batch) for batch in range(4)}
    assert len(orders) > 1, "the order is drawn afresh for each batch"


def test_spread_is_median_and_quartiles_and_crossing_means_inside_them():
    spread = Spread.of([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (spread.median, spread.q1, spread.q3) == (3.0, 2.0, 4.0)
    assert spread.crosses(2.5) and not spread.crosses(4.5)
    assert Spread.of([0.7]) == Spread(0.7, 0.7, 0.7)


def test_ratios_are_taken_within_each_round_before_they_are_summarised():
    rounds = [{"x": [2.0, 2.0], "ref": [1.0, 1.0]}, {"x": [8.0, 8.0], "ref": [4.0, 4.0]},
              {"x": [3.0, 3.0], "ref": [1.0, 1.0]}]
    assert round_ratios(rounds, "x", "ref") == Spread(2.0, 2.0, 2.5)
    assert step_ms(rounds, "ref").median == pytest.approx(1000.0 * 1.0)


def test_engine_step_trains_the_configured_trial(digits_model_def, digits_task):
    spec = TrialSpec("requires_grad", Selection(depth=2), lr_split="uniform", device="cpu")
    step = engine_step(spec, digits_task, digits_model_def)
    batches = [digits_task.train[:32]]
    rounds = time_rounds([["rg"]], {"rg": step}, batches, rounds=2, warmup_rounds=1, seed=0)
    assert len(rounds) == 2 and all(len(r["rg"]) == 1 and r["rg"][0] > 0 for r in rounds)
