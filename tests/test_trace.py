"""The per-epoch traces: lrs per param group, gradient norms, clip factor, and the optimizer-vs-mechanism invariant."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sweep.lr_split import make_lr_split, param_groups
from sweep.measure import StepTimer
from sweep.optim import OptimizerSpec, make_optimizer
from sweep.schedules import SCALAR_LR_SCHEDULES, SCHEDULES
from sweep.selection import Selection, resolve
from sweep.strategies import MECHANISMS, RequiresGrad, ZeroLr
from sweep.trace import (CLIP_FACTOR, CLIP_EPS, FROZEN_LR, GRAD_NORM_FROZEN, GRAD_NORM_TRAINABLE, LR_PREFIX,
                         MOVABLE_FROZEN, SPLIT_DEVIATION, SPLIT_TOLERANCE, UNMOVABLE_TRAINABLE, Tracer)
from sweep.train import Trainer

RATIO = 0.1
SCHEDULE_OPTIONS = {"step": {"step_size": 1, "gamma": 0.5}, "multistep": {"milestones": [1], "gamma": 0.5},
                    "exponential": {"gamma": 0.5}}  # so that every schedule changes the lr within two epochs


@pytest.mark.parametrize("schedule", SCHEDULES.names())
def test_the_lr_trace_of_a_two_group_split_keeps_its_ratio_unless_the_schedule_is_documented_to_break_it(train,
                                                                                                        schedule):
    result = train("requires_grad", lr_split="head_backbone", lr_split_options={"backbone_ratio": RATIO},
                   schedule=schedule, schedule_options=SCHEDULE_OPTIONS.get(schedule, {})).result
    breaks = schedule in SCALAR_LR_SCHEDULES
    for epoch in result.history:
        ratio = epoch.trace[LR_PREFIX + "conv3"] / epoch.trace[LR_PREFIX + "head"]
        assert (ratio == pytest.approx(1.0) if breaks else ratio == pytest.approx(RATIO, rel=1e-9)), epoch
        assert (epoch.trace[SPLIT_DEVIATION] > SPLIT_TOLERANCE) == breaks, epoch
    assert (result.max_lr_split_deviation > SPLIT_TOLERANCE) == breaks
    head = [epoch.trace[LR_PREFIX + "head"] for epoch in result.history]
    assert schedule == "constant" or head != [0.05, 0.05], "the schedule must really change the lrs it keeps in ratio"


class LeavesAFrozenGroupAtLr(ZeroLr):
    """A broken zero_lr: its first frozen group keeps a positive lr."""

    name = "leaky_zero_lr"

    def optimizer_groups(self, groups):
        torch_groups = super().optimizer_groups(groups)
        next(g for g in torch_groups if g["frozen"])["lr"] = 0.01
        return torch_groups


class ForgetsTheHead(RequiresGrad):
    """A broken requires_grad: the head never reaches the optimizer."""

    name = "headless_requires_grad"

    def optimizer_groups(self, groups):
        return [g for g in super().optimizer_groups(groups) if not g["name"].startswith("head")]


def one_traced_epoch(model_def, task, mechanism_cls, grad_clip_norm=None, batches=4):
    """A trainer with a tracer over the first `batches` batches; returns (trace, net, frozen set)."""
    torch.manual_seed(0)
    net = model_def.build(task.num_classes)
    frozen = resolve(net, Selection(depth=2))
    mechanism = mechanism_cls(net, frozen)
    groups = param_groups(net, frozen, make_lr_split("uniform"), lr=0.05, weight_decay=0.0)
    optimizer = make_optimizer(mechanism.optimizer_groups(groups), OptimizerSpec())
    trainer = Trainer(net, optimizer, mechanism, StepTimer(), torch.device("cpu"), grad_clip_norm=grad_clip_norm,
                      tracer=Tracer(net, optimizer, mechanism, grad_clip_norm))
    data = [task.train[i * 32:(i + 1) * 32] for i in range(batches)]
    history = trainer.fit(data, data[:1], range(1, 2))
    return history[0].trace, net, frozen


def test_the_invariant_check_catches_a_frozen_param_left_at_a_positive_lr(digits_model_def, digits_task):
    trace, net, _ = one_traced_epoch(digits_model_def, digits_task, LeavesAFrozenGroupAtLr)
    assert trace[FROZEN_LR] == 0.01
    assert trace[MOVABLE_FROZEN] == sum(p.numel() for p in net.blocks.conv1.parameters())  # the first frozen group
    assert trace[UNMOVABLE_TRAINABLE] == 0
    honest, _, _ = one_traced_epoch(digits_model_def, digits_task, ZeroLr)
    assert honest[FROZEN_LR] == 0.0 and honest[MOVABLE_FROZEN] == 0 and honest[UNMOVABLE_TRAINABLE] == 0


def test_the_invariant_check_catches_a_trainable_param_the_optimizer_cannot_move(digits_model_def, digits_task):
    trace, net, _ = one_traced_epoch(digits_model_def, digits_task, ForgetsTheHead)
    assert trace[UNMOVABLE_TRAINABLE] == sum(p.numel() for p in net.head.parameters())
    assert trace[MOVABLE_FROZEN] == 0


def test_weight_restore_may_let_the_optimizer_move_what_it_puts_back(digits_model_def, digits_task):
    trace, _, _ = one_traced_epoch(digits_model_def, digits_task, MECHANISMS.get("weight_restore"))
    assert trace[MOVABLE_FROZEN] == 0 and FROZEN_LR not in trace


@pytest.mark.parametrize("strategy, frozen_grads", [("exclude_from_optimizer", True), ("requires_grad", False)])
def test_sampled_grad_norms_and_clip_factor_are_the_ones_clipping_sees(digits_model_def, digits_task, strategy,
                                                                        frozen_grads):
    torch.manual_seed(0)
    probe = digits_model_def.build(digits_task.num_classes)  # the same weights and head the traced trainer starts from
    inputs, targets = digits_task.train[:32]
    F.cross_entropy(probe(inputs), targets).backward()
    frozen_names = resolve(probe, Selection(depth=2)).param_names
    norm = {part: torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for n, p in
                                                        probe.named_parameters() if (n in frozen_names) == part]))
            for part in (True, False)}
    trace, _, _ = one_traced_epoch(digits_model_def, digits_task, MECHANISMS.get(strategy), grad_clip_norm=0.5,
                                   batches=1)
    assert trace[GRAD_NORM_TRAINABLE] == pytest.approx(norm[False].item(), rel=1e-5)
    seen = norm[False] ** 2 + (norm[True] ** 2 if frozen_grads else 0)
    assert trace[CLIP_FACTOR] == pytest.approx(min(1.0, 0.5 / (seen.sqrt().item() + CLIP_EPS)), rel=1e-5)
    if frozen_grads:
        assert trace[GRAD_NORM_FROZEN] == pytest.approx(norm[True].item(), rel=1e-5)
    else:
        assert GRAD_NORM_FROZEN not in trace


def test_tracing_leaves_training_bitwise_unchanged(digits_model_def, digits_task):
    """The tracer only reads: the same steps with and without it end with the same weights."""
    torch.manual_seed(0)
    net = digits_model_def.build(digits_task.num_classes)
    twin = copy.deepcopy(net)
    data = [digits_task.train[i * 32:(i + 1) * 32] for i in range(3)]
    for model, traced in ((net, True), (twin, False)):
        frozen = resolve(model, Selection(depth=2))
        mechanism = MECHANISMS.get("exclude_from_optimizer")(model, frozen)
        groups = param_groups(model, frozen, make_lr_split("uniform"), lr=0.05, weight_decay=0.0)
        optimizer = make_optimizer(mechanism.optimizer_groups(groups), OptimizerSpec())
        tracer = Tracer(model, optimizer, mechanism, 0.5) if traced else None
        Trainer(model, optimizer, mechanism, StepTimer(), torch.device("cpu"), grad_clip_norm=0.5,
                tracer=tracer).fit(data, data[:1], range(1, 3))
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
