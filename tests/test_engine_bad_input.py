"""Every user mistake raises `ConfigError`, whose message names the bad value and what would be valid."""

import pytest

from sweep.errors import ConfigError
from sweep.lr_split import LR_SPLITS, make_lr_split, param_groups
from sweep.optim import OPTIMIZERS, OptimizerSpec
from sweep.schedules import SCHEDULES, make_schedule
from sweep.selection import Selection, resolve
from sweep.strategies import MECHANISMS
from sweep.trial import TrialSpec, run_trial

BLOCKS = ["conv1", "conv2", "conv3", "fc"]
UNITS = [*BLOCKS, "head"]


def freeze(strategy: str, selection: Selection):
    return lambda net: MECHANISMS.get(strategy)(net, resolve(net, selection))


def groups_split(net, groups):
    return param_groups(net, resolve(net, Selection(depth=1)), make_lr_split("groups", groups=groups), 0.1, 0.0)


# (bad input, run it on a fresh net, fragments the message must contain: the bad value, then the valid choices)
CASES = {
    "unknown block name": (lambda net: resolve(net, Selection(names=("conv9",))), ["'conv9'", *BLOCKS]),
    "head by name": (lambda net: resolve(net, Selection(names=("head",))), ["head", *BLOCKS]),
    "depth too large": (lambda net: resolve(net, Selection(depth=5)), ["depth=5", *BLOCKS]),
    "negative depth": (lambda net: resolve(net, Selection(depth=-1)), ["depth=-1", *BLOCKS]),
    "index out of range": (lambda net: resolve(net, Selection(indices=(-5,))), ["-5", *BLOCKS]),
    "invalid regex": (lambda net: resolve(net, Selection(regex="conv(")), ["'conv('", "regular expression"]),
    "a regex matching nothing": (freeze("zero_lr", Selection(regex="nomatch")), ["freezes nothing", *BLOCKS]),
    "no_grad_forward on a later block": (freeze("no_grad_forward", Selection(names=("conv2",))),
                                         ["['conv2']", "prefix", *BLOCKS, "freeze.depth"]),
    "no_grad_forward on a prefix plus part of a block": (
        freeze("no_grad_forward", Selection(depth=1, regex=r"conv2\.0\.")),
        ["blocks.conv2.0.weight", "prefix", *BLOCKS]),
    "lr = 0": (lambda net: OptimizerSpec(lr=0.0), ["lr=0.0", "> 0"]),
    "lr < 0": (lambda net: OptimizerSpec(lr=-0.1), ["lr=-0.1", "> 0"]),
    "lr = 0 given to param_groups": (lambda net: param_groups(net, resolve(net, Selection(depth=1)),
                                                              make_lr_split("uniform"), 0.0, 0.0), ["lr=0.0", "> 0"]),
    "a group's lr < 0": (lambda net: groups_split(net, {"head": {"lr": -1.0}}), ["head.lr=-1.0", "> 0"]),
    "a group for an unknown unit": (lambda net: groups_split(net, {"hed": {"lr": 0.1}}), ["'hed'", *UNITS]),
    "unknown optimizer": (lambda net: OptimizerSpec(name="rmsprop"), ["'rmsprop'", *OPTIMIZERS]),
    "unknown lr split": (lambda net: make_lr_split("cosine"), ["'cosine'", *LR_SPLITS]),
    "unknown strategy": (lambda net: MECHANISMS.get("freeze_all"), ["'freeze_all'", *MECHANISMS]),
    "unknown schedule": (lambda net: make_schedule("warp", None, 10, 0.1), ["'warp'", *SCHEDULES]),
    **{f"{option}={value}": (lambda net, split=split, option=option, value=value:
                             make_lr_split(split, **{option: value}), [f"{option}={value}", "(0, 1]"])
       for split, option in [("head_backbone", "backbone_ratio"), ("layerwise", "decay")]
       for value in (0.0, -0.5, 1.5, float("nan"))},
}


@pytest.fixture(scope="module")
def net(digits_model_def):
    return digits_model_def.build(5)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_raises_config_error_naming_value_and_choices(digits_model_def, case):
    bad_input, fragments = CASES[case]
    with pytest.raises(ConfigError) as raised:
        bad_input(digits_model_def.build(5))  # a fresh net: mechanisms modify the one they are given
    assert raised.type is ConfigError
    missing = [fragment for fragment in fragments if fragment not in str(raised.value)]
    assert not missing, f"{str(raised.value)!r} lacks {missing}"


def test_a_freezing_strategy_refuses_a_selection_that_freezes_nothing(digits_model_def, freezing_strategy):
    with pytest.raises(ConfigError) as raised:
        freeze(freezing_strategy, Selection())(digits_model_def.build(5))
    message = str(raised.value)
    assert all(fragment in message for fragment in [freezing_strategy, "freezes nothing", "freeze.depth", *BLOCKS])


@pytest.mark.parametrize("spec_fields, fragments", [
    ({"strategy": "requires_grad", "selection": Selection()}, ["freezes nothing", *BLOCKS]),
    ({"strategy": "requires_grad", "selection": Selection(names=("conv9",))}, ["'conv9'", *BLOCKS]),
    ({"strategy": "requires_grad", "norm_policy": "frozen"}, ["'frozen'", "train", "eval"]),
    ({"strategy": "zero_lr", "lr_split": "layerwise", "lr_split_options": {"decay": 2.0}}, ["decay=2.0", "(0, 1]"]),
])
def test_a_trial_rejects_bad_input_before_training(digits_model_def, digits_task, spec_fields, fragments):
    with pytest.raises(ConfigError) as raised:
        run_trial(TrialSpec(**spec_fields, epochs=1, device="cpu"), digits_task, digits_model_def)
    assert all(fragment in str(raised.value) for fragment in fragments), raised.value
