"""Where the mechanisms differ, the measurements show it instead of hiding it."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sweep.lr_split import make_lr_split, param_groups
from sweep.measure import StepTimer
from sweep.optim import OptimizerSpec, make_optimizer
from sweep.selection import Selection, resolve
from sweep.strategies import MECHANISMS
from sweep.train import Trainer


def test_norm_policy_train_lets_frozen_batchnorm_statistics_drift(mechanism_runs, freezing_strategy):
    result = mechanism_runs[freezing_strategy].result
    assert result.frozen_buffer_drift > 0
    assert result.frozen_weight_drift == 0.0


@pytest.mark.parametrize("strategy", ["requires_grad", "no_grad_forward"])
def test_norm_policy_eval_holds_only_frozen_batchnorm_statistics(train, digits_model_def, frozen_param_names,
                                                                 strategy):
    run = train(strategy, norm_policy="eval", epochs=1)
    assert run.result.frozen_buffer_drift == 0.0
    pretrained = digits_model_def.backbone_weights()
    for name, buffer in run.net.named_buffers():
        if name.endswith("running_mean"):
            unchanged = torch.equal(buffer, pretrained[name.removeprefix("blocks.")])
            in_frozen_block = name.replace("running_mean", "weight") in frozen_param_names  # the BatchNorm's weight
            assert unchanged == in_frozen_block, name


def test_exclude_from_optimizer_lets_frozen_gradients_accumulate(digits_model_def, digits_task, frozen_param_names):
    torch.manual_seed(0)
    net = digits_model_def.build(digits_task.num_classes)
    frozen = resolve(net, Selection(depth=2))
    mechanism = MECHANISMS.get("exclude_from_optimizer")(net, frozen)
    groups = param_groups(net, frozen, make_lr_split("uniform"), lr=0.05, weight_decay=0.0)
    trainer = Trainer(net, make_optimizer(mechanism.optimizer_groups(groups), OptimizerSpec()), mechanism,
                      StepTimer(), torch.device("cpu"))
    inputs, targets = digits_task.train[:32]
    params = dict(net.named_parameters())
    summed = {name: torch.zeros_like(p) for name, p in params.items()}
    for _ in range(3):
        probe = copy.deepcopy(net)  # this step's own gradient, computed apart from the trainer
        probe_params = dict(probe.named_parameters())
        grads = torch.autograd.grad(F.cross_entropy(probe(inputs), targets), list(probe_params.values()))
        step_grads = dict(zip(probe_params, grads))
        for name in summed:
            summed[name] += step_grads[name]
        trainer.step(inputs, targets)
    for name, param in params.items():
        expected = summed[name] if name in frozen_param_names else step_grads[name]
        torch.testing.assert_close(param.grad, expected, rtol=1e-5, atol=1e-7, msg=name)
    assert not torch.allclose(params["blocks.conv1.0.weight"].grad, step_grads["blocks.conv1.0.weight"])


@pytest.mark.parametrize("strategy, drifts", [("zero_lr", True), ("requires_grad", False), ("weight_restore", False)])
def test_onecycle_with_a_scalar_max_lr_moves_zero_lr_groups(train, strategy, drifts):
    result = train(strategy, schedule="onecycle", epochs=1).result
    assert (result.frozen_weight_drift > 0) == drifts
