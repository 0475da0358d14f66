"""The five freezing mechanisms train the same model; they differ only in cost.

Same seed, same hyperparameters, plain SGD with momentum, the first two blocks
frozen: every mechanism must end with the same weights and accuracy, and only
`requires_grad` and `no_grad_forward` may skip backward work through the frozen prefix.
"""

import torch

FULL_BACKWARD = ("exclude_from_optimizer", "zero_lr", "weight_restore")


def test_mechanisms_end_with_the_same_model(mechanism_runs, freezing_strategy, frozen_param_names):
    reference, run = mechanism_runs["requires_grad"], mechanism_runs[freezing_strategy]
    assert run.result.test_accuracy == reference.result.test_accuracy
    assert run.result.history == reference.result.history
    assert run.result.frozen_weight_drift == 0.0
    reference_params = dict(reference.net.named_parameters())
    for name, param in run.net.named_parameters():
        if name not in frozen_param_names:
            torch.testing.assert_close(param, reference_params[name], rtol=1e-6, atol=1e-6, msg=name)


def test_frozen_weights_are_the_pretrained_ones(mechanism_runs, digits_model_def, freezing_strategy,
                                                frozen_param_names):
    """Checks `frozen_weight_drift == 0.0` against the cached backbone, independently of the probe."""
    pretrained = digits_model_def.backbone_weights()
    for name, param in mechanism_runs[freezing_strategy].net.named_parameters():
        if name in frozen_param_names:
            assert torch.equal(param, pretrained[name.removeprefix("blocks.")]), name


def test_full_finetune_differs_so_the_comparison_can_fail(mechanism_runs):
    frozen = mechanism_runs["requires_grad"].net.state_dict()
    full = mechanism_runs["full_finetune"].net.state_dict()
    assert mechanism_runs["full_finetune"].result.frozen_weight_drift is None
    assert not torch.allclose(full["head.weight"], frozen["head.weight"], atol=1e-6)
    assert not torch.equal(full["blocks.conv1.0.weight"], frozen["blocks.conv1.0.weight"])


def test_only_requires_grad_and_no_grad_forward_skip_the_frozen_backward(mechanism_runs):
    flops = {name: run.result.flops_per_step for name, run in mechanism_runs.items()}
    assert flops["requires_grad"] == flops["no_grad_forward"]
    for name in FULL_BACKWARD:
        assert flops[name] == flops["full_finetune"], name
        assert flops["requires_grad"] < flops[name], name
