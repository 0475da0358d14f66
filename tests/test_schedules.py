"""Each schedule's lr trace, per param group: ratios kept (but for onecycle's scalar max_lr), new groups covered."""

import math
from pathlib import Path

import pytest
import torch
import yaml
from torch.optim.lr_scheduler import CosineAnnealingLR, ExponentialLR, MultiStepLR, StepLR

from sweep.errors import ConfigError
from sweep.schedules import SCHEDULES, Horizon, Schedule

LRS = (0.1, 0.01)  # two groups, as a head_backbone split makes them
HORIZON = Horizon(total_steps=20, steps_per_epoch=4)
CONF = Path(__file__).resolve().parent.parent / "conf" / "schedule"


def optimizer_with(lrs: tuple[float, ...]) -> torch.optim.SGD:
    return torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in lrs], momentum=0.9)


def trace(name: str, **options) -> list[list[float]]:
    """The lr of every group at every one of the horizon's optimizer steps."""
    optimizer = optimizer_with(LRS)
    scheduler = Schedule(name, HORIZON, LRS[0], options).build(optimizer)
    lrs = []
    for _ in range(HORIZON.total_steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


def reference_trace(make: type, **options) -> list[float]:
    """torch's own scheduler, stepped per optimizer step, on a single group with lr 1."""
    optimizer = optimizer_with((1.0,))
    scheduler = make(optimizer, **options)
    factors = []
    for _ in range(HORIZON.total_steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def cosine(progress: float) -> float:
    return (1 + math.cos(math.pi * progress)) / 2


def expected_factors(name: str) -> list[float]:
    steps = range(HORIZON.total_steps)
    per_epoch = HORIZON.steps_per_epoch
    if name == "constant":
        return [1.0] * HORIZON.total_steps
    if name == "step":  # step_size=2 epochs
        return reference_trace(StepLR, step_size=2 * per_epoch, gamma=0.5)
    if name == "multistep":  # milestones at epochs 1 and 3
        return reference_trace(MultiStepLR, milestones=[1 * per_epoch, 3 * per_epoch], gamma=0.5)
    if name == "exponential":  # gamma per epoch, spread over its steps
        return reference_trace(ExponentialLR, gamma=0.5 ** (1 / per_epoch))
    if name == "cosine":
        return reference_trace(CosineAnnealingLR, T_max=HORIZON.total_steps)
    if name == "warmup_cosine":  # 5 warmup steps, then cosine over the other 15
        return [(t + 1) / 5 if t < 5 else cosine((t - 5) / 15) for t in steps]
    raise AssertionError(name)


OPTIONS = {"constant": {}, "step": {"step_size": 2, "gamma": 0.5}, "multistep": {"milestones": [1, 3], "gamma": 0.5},
           "exponential": {"gamma": 0.5}, "cosine": {}, "warmup_cosine": {"warmup_fraction": 0.25}}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_schedule_scales_each_group_by_the_same_factor(name):
    lrs = trace(name, **OPTIONS[name])
    for step, (factor, (head, backbone)) in enumerate(zip(expected_factors(name), lrs)):
        assert head == pytest.approx(LRS[0] * factor, rel=1e-9, abs=1e-15), step
        assert backbone == pytest.approx(LRS[1] * factor, rel=1e-9, abs=1e-15), step


def test_onecycle_gives_every_group_the_same_scalar_trace():
    lrs = trace("onecycle", pct_start=0.25)
    assert all(head == backbone for head, backbone in lrs)  # the split's 10:1 ratio is gone: the documented pitfall
    heads = [head for head, _ in lrs]
    assert heads[0] == pytest.approx(LRS[0] / 25)
    assert max(heads) == pytest.approx(LRS[0])
    assert heads.index(max(heads)) == 4  # the peak at pct_start of 20 steps
    assert heads[-1] < heads[0]


@pytest.mark.parametrize("name, options", [("warmup_cosine", {"warmup_fraction": 0.25}), ("onecycle", {})])
def test_a_rebuilt_schedule_covers_a_group_added_mid_trial(name, options):
    optimizer = optimizer_with(LRS[:1])
    schedule = Schedule(name, HORIZON, LRS[0], options)
    scheduler = schedule.build(optimizer)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    optimizer.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "lr": LRS[1]})
    scheduler = schedule.build(optimizer, steps_done=scheduler.last_epoch)
    rebuilt = []
    for _ in range(7, HORIZON.total_steps):
        rebuilt.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    uninterrupted = trace(name, **options)[7:]
    for (first, added), (first_ref, added_ref) in zip(rebuilt, uninterrupted):
        assert first == pytest.approx(first_ref, rel=1e-12)
        assert added == pytest.approx(added_ref, rel=1e-12)  # as if the group had been there from the start


def test_every_schedule_has_a_config_that_builds():
    configs = {path.stem: yaml.safe_load(path.read_text()) for path in CONF.glob("*.yaml")}
    assert sorted(configs) == sorted(SCHEDULES.names())
    for stem, config in configs.items():
        options = dict(config)
        assert options.pop("name") == stem
        Schedule(stem, HORIZON, LRS[0], options).build(optimizer_with(LRS))


@pytest.mark.parametrize("name, options, message", [
    ("bogus", {}, "choose one of: constant, cosine"),
    ("step", {"step_size": 0}, "schedule.step_size=0"),
    ("step", {"gamma": 1.5}, "schedule.gamma=1.5"),
    ("multistep", {"milestones": [3, 2]}, "must be increasing"),
    ("warmup_cosine", {"warmup_fraction": 1.0}, "schedule.warmup_fraction=1.0"),
    ("cosine", {"warmup_fraction": 0.1}, "schedule 'cosine'"),
    ("onecycle", {"pct_start": 2}, "schedule.pct_start=2"),
])
def test_bad_schedule_config_is_a_config_error(name, options, message):
    with pytest.raises(ConfigError, match=message):
        Schedule(name, HORIZON, LRS[0], options).build(optimizer_with(LRS))
