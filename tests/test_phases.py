"""Progressive unfreezing: each mechanism unfreezes its own way, and what a phase freezes stays put."""

import pytest
import torch

from sweep.errors import ConfigError
from sweep.optim import OptimizerSpec
from sweep.phases import Phase, PhaseResult, gradual_unfreezing
from sweep.selection import Selection
from sweep.strategies import MECHANISMS
from sweep.trial import TrialSpec, set_up

FREEZING = [name for name in MECHANISMS if MECHANISMS.get(name).freezes and name != "cached_prefix"]
"""cached_prefix refuses the default norm_policy=train here; tests/test_cached_prefix.py runs it through phases."""

PROBE_THEN_TUNE = (Phase(1, Selection(depth=3)), Phase(1, Selection(depth=1), lr_scale=0.5))
"""Phase 1 trains fc and the head; phase 2 also unfreezes conv2 and conv3, at half their split rate."""
ADDS_GROUPS = {"requires_grad": True, "exclude_from_optimizer": True, "no_grad_forward": True,
               "zero_lr": False, "weight_restore": False}
"""Whether a mechanism unfreezes by `add_param_group` (else its frozen params were in the optimizer all along)."""


def phased_spec(strategy: str, phases: tuple[Phase, ...], **fields) -> TrialSpec:
    return TrialSpec(strategy=strategy, selection=phases[0].freeze, epochs=sum(p.epochs for p in phases),
                     phases=phases, device="cpu", **fields)


def run_phased(train, strategy: str, phases: tuple[Phase, ...] = PROBE_THEN_TUNE, **fields):
    return train(strategy, selection=phases[0].freeze, epochs=sum(p.epochs for p in phases), phases=phases, **fields)


def in_blocks(name: str, *blocks: str) -> bool:
    return name.startswith(tuple(f"blocks.{block}." for block in blocks))


@pytest.fixture(scope="module")
def phased_runs(train):
    """Every freezing mechanism through PROBE_THEN_TUNE, with and without momentum: {(strategy, momentum): run}."""
    return {(strategy, momentum): run_phased(train, strategy, lr_split="head_backbone",
                                             optimizer=OptimizerSpec(momentum=momentum))
            for strategy in FREEZING for momentum in (0.0, 0.9)}


def test_unfrozen_params_join_the_optimizer_at_their_configured_lr(freezing_strategy, digits_model_def, digits_task):
    spec = phased_spec(freezing_strategy, PROBE_THEN_TUNE, lr_split="head_backbone",
                       lr_split_options={"backbone_ratio": 0.1}, optimizer=OptimizerSpec(lr=0.05))
    setup = set_up(spec, digits_task, digits_model_def)
    groups_before = len(setup.optimizer.param_groups)
    setup.plan.unfreeze(1, setup.mechanism, setup.optimizer, setup.groups_for)

    group_of = {id(p): group for group in setup.optimizer.param_groups for p in group["params"]}
    for name, param in setup.net.named_parameters():
        if in_blocks(name, "conv2", "conv3"):
            assert group_of[id(param)]["lr"] == pytest.approx(0.05 * 0.1 * 0.5), name  # split rate x lr_scale
            assert param.requires_grad, name
        elif name.startswith("head."):
            assert group_of[id(param)]["lr"] == 0.05, name
    added = len(setup.optimizer.param_groups) - groups_before
    assert added == (2 if ADDS_GROUPS[freezing_strategy] else 0)  # conv2 and conv3 as new groups
    assert setup.mechanism.frozen.blocks == ["conv1"]
    assert setup.net.no_grad_prefix == (1 if freezing_strategy == "no_grad_forward" else 0)


def test_what_a_phase_freezes_does_not_move(phased_runs, digits_model_def, freezing_strategy):
    run = phased_runs[(freezing_strategy, 0.9)]
    assert [(p.phase, p.epochs, p.frozen_weight_drift) for p in run.result.phases] == [(1, 1, 0.0), (2, 1, 0.0)]
    assert run.result.frozen_weight_drift == 0.0
    pretrained = digits_model_def.backbone_weights()
    for name, param in run.net.named_parameters():
        if in_blocks(name, "conv1", "conv2", "conv3", "fc"):
            unchanged = torch.equal(param, pretrained[name.removeprefix("blocks.")])
            assert unchanged == in_blocks(name, "conv1"), name  # conv1 frozen throughout; the rest trained


def test_plain_sgd_makes_every_mechanism_agree_through_an_unfreeze(phased_runs):
    reference = phased_runs[("requires_grad", 0.0)]
    for strategy in FREEZING:
        run = phased_runs[(strategy, 0.0)]
        assert run.result.history == reference.result.history, strategy
        for (name, param), ref in zip(run.net.named_parameters(), reference.net.parameters()):
            assert torch.equal(param, ref), (strategy, name)


def test_momentum_gathered_while_frozen_carries_into_the_unfrozen_phase(phased_runs):
    """zero_lr and weight_restore keep frozen params in the optimizer, so their momentum fills up while frozen."""
    reference = phased_runs[("requires_grad", 0.9)].net.state_dict()
    for strategy in FREEZING:
        weights = phased_runs[(strategy, 0.9)].net.state_dict()
        assert torch.equal(weights["blocks.conv3.0.weight"], reference["blocks.conv3.0.weight"]) == \
            ADDS_GROUPS[strategy], strategy


def test_onecycle_moves_zero_lr_groups_in_every_phase(train):
    result = run_phased(train, "zero_lr", schedule="onecycle").result
    drifts = [p.frozen_weight_drift for p in result.phases]
    assert all(drift > 0 for drift in drifts)
    assert result.frozen_weight_drift == max(drifts)
    assert result.final_metrics()["phase2.frozen_weight_drift"] == drifts[1]


def test_gradual_unfreezing_thaws_one_block_per_epoch(train):
    phases = gradual_unfreezing(depth=2, epochs=4)
    assert [(p.epochs, p.freeze.depth) for p in phases] == [(1, 2), (1, 1), (2, None)]
    result = run_phased(train, "requires_grad", phases).result
    frozen = [p.frozen_params for p in result.phases]
    flops = [p.flops_per_step for p in result.phases]
    assert frozen[0] > frozen[1] > frozen[2] == 0 and flops[0] < flops[1] < flops[2]
    assert [p.frozen_weight_drift for p in result.phases] == [0.0, 0.0, None]
    assert result.flops_per_step == round((flops[0] + flops[1] + 2 * flops[2]) / 4)


@pytest.mark.parametrize("make, message", [
    (lambda: phased_spec("zero_lr", (Phase(1, Selection(depth=1)), Phase(1, Selection(depth=2)))),
     "phases can only unfreeze"),
    (lambda: phased_spec("no_grad_forward", (Phase(1, Selection(depth=3)), Phase(1, Selection(names=("conv3",))))),
     "prefix"),
    (lambda: TrialSpec("zero_lr", selection=Selection(depth=2), epochs=3, phases=PROBE_THEN_TUNE),
     "epochs=3 but the phases add up to 2"),
    (lambda: TrialSpec("zero_lr", selection=Selection(depth=2), epochs=2, phases=PROBE_THEN_TUNE),
     "the first phase freezes"),
    (lambda: Phase(0), "epochs=0"),
    (lambda: Phase(1, lr_scale=0.0), "lr_scale=0.0"),
    (lambda: gradual_unfreezing(depth=3, epochs=3), "needs more than 3 epochs"),
])
def test_bad_phases_are_config_errors_before_training(digits_model_def, digits_task, make, message):
    with pytest.raises(ConfigError, match=message):
        set_up(make(), digits_task, digits_model_def)


@pytest.mark.parametrize("strategy", ["zero_lr", "weight_restore"])
def test_in_place_unfreezing_refuses_to_split_a_param_group(digits_model_def, digits_task, strategy):
    phases = (Phase(1, Selection(depth=1)), Phase(1, Selection(regex=r"conv1\.1\.")))  # keeps only conv1's norm
    setup = set_up(phased_spec(strategy, phases), digits_task, digits_model_def)
    with pytest.raises(ConfigError, match="only part of group 'conv1/frozen'"):
        setup.plan.unfreeze(1, setup.mechanism, setup.optimizer, setup.groups_for)


def test_a_phase_restored_from_a_checkpoint_older_than_its_description_still_describes_itself():
    older = {"phase": 1, "frozen_params": 4848, "flops_per_step": 5, "epochs": 2}  # what such a checkpoint holds
    assert PhaseResult(**older).describe() == "2 epochs, frozen not recorded (4,848 frozen params)"
