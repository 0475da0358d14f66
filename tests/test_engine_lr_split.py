"""LR splits reach the optimizer exactly: each parameter trains at its unit's lr and weight decay.

Expected rates are written out here from the design's formulas, then compared
with what the torch optimizer actually holds after a trial's constant schedule
is attached. Frozen parameters must never land in a trainable group: they are
left out, or (zero_lr, weight_restore) sit in groups of their own.
"""

import pytest
import torch

from sweep.blocknet import HEAD
from sweep.lr_split import make_lr_split, param_groups
from sweep.optim import OptimizerSpec, make_optimizer
from sweep.schedules import make_schedule
from sweep.selection import Selection, resolve
from sweep.strategies import MECHANISMS

LR, WD = 0.05, 1e-3
UNITS = ["conv1", "conv2", "conv3", "fc", HEAD]
SPLITS = {
    "uniform": ({}, {u: (LR, WD) for u in UNITS}),
    "head_backbone": ({"backbone_ratio": 0.25}, {**{u: (LR * 0.25, WD) for u in UNITS[:-1]}, HEAD: (LR, WD)}),
    "layerwise": ({"decay": 0.5}, {u: (LR * 0.5 ** (4 - i), WD) for i, u in enumerate(UNITS)}),
    "groups": ({"groups": {"conv3": {"lr": 0.01, "weight_decay": 0.1}, HEAD: {"lr": 0.2}}},
               {"conv1": (LR, WD), "conv2": (LR, WD), "conv3": (0.01, 0.1), "fc": (LR, WD), HEAD: (0.2, WD)}),
}
DECAYED = {"blocks.conv1.0.weight", "blocks.conv2.0.weight", "blocks.conv3.0.weight", "blocks.fc.1.weight",
           "head.weight"}  # with no_decay_bias_norm, biases and BatchNorm parameters get no weight decay
SELECTIONS = {
    "first two blocks": Selection(depth=2),
    "part of conv3": Selection(regex=r"conv3\.0\.weight"),  # a block split between frozen and trainable
}
CASES = [(strategy, selection) for strategy in ("requires_grad", "exclude_from_optimizer", "zero_lr", "weight_restore")
         for selection in SELECTIONS] + [("no_grad_forward", "first two blocks")]  # no_grad_forward needs a prefix


def optimizer_for(net, strategy, selection, split, no_decay_bias_norm):
    frozen = resolve(net, selection)
    groups = param_groups(net, frozen, make_lr_split(split, **SPLITS[split][0]), LR, WD, no_decay_bias_norm)
    optimizer = make_optimizer(MECHANISMS.get(strategy)(net, frozen).optimizer_groups(groups),
                               OptimizerSpec(lr=LR, weight_decay=WD, no_decay_bias_norm=no_decay_bias_norm))
    make_schedule("constant", optimizer, total_steps=10, base_lr=LR)
    return frozen, optimizer


def expected_rate(strategy, split, unit, name, is_frozen, no_decay_bias_norm):
    lr, wd = SPLITS[split][1][unit]
    return 0.0 if is_frozen and strategy == "zero_lr" else lr, 0.0 if no_decay_bias_norm and name not in DECAYED else wd


@pytest.mark.parametrize("no_decay_bias_norm", [False, True])
@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("strategy, selection", CASES)
def test_every_parameter_trains_at_exactly_its_rate(digits_model_def, strategy, selection, split, no_decay_bias_norm):
    torch.manual_seed(0)
    net = digits_model_def.build(5)
    frozen, optimizer = optimizer_for(net, strategy, SELECTIONS[selection], split, no_decay_bias_norm)
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    assert len(group_of) == sum(len(group["params"]) for group in optimizer.param_groups)  # no param twice
    in_optimizer = strategy in ("zero_lr", "weight_restore")
    for unit, name, param in net.named_unit_parameters():
        is_frozen = name in frozen.param_names
        if is_frozen and not in_optimizer:
            assert id(param) not in group_of, name
            continue
        group = group_of[id(param)]
        assert group["frozen"] == is_frozen, f"{name} is in a group of the wrong kind"
        assert (group["lr"], group["weight_decay"]) == expected_rate(strategy, split, unit, name, is_frozen,
                                                                     no_decay_bias_norm), name

