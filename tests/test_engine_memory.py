"""`peak_memory_bytes` on a CPU, counted independently: what each mechanism really keeps alive.

SGD with momentum holds one momentum buffer per parameter it steps, and a
gradient exists wherever backward reached a parameter that requires it:

| mechanism | grads | momentum | extra |
|---|---|---|---|
| requires_grad, no_grad_forward | trainable | trainable | - |
| exclude_from_optimizer | all (frozen ones accumulate) | trainable | - |
| zero_lr, full_finetune | all | all | - |
| weight_restore | all | all | a copy of the frozen params |
"""

import pytest

SKIP_FROZEN_BACKWARD = ("requires_grad", "no_grad_forward")

# Bytes held (params + grads + momentum + copies) as multiples of the bytes of all, trainable and frozen params.
HELD = {
    "requires_grad": {"params": 1, "trainable": 2},
    "no_grad_forward": {"params": 1, "trainable": 2},
    "exclude_from_optimizer": {"params": 2, "trainable": 1},
    "zero_lr": {"params": 3},
    "full_finetune": {"params": 3},
    "weight_restore": {"params": 3, "frozen": 1},
}


def parameter_bytes(net, frozen_param_names) -> dict[str, int]:
    sizes = {"params": 0, "trainable": 0, "frozen": 0}
    for name, param in net.named_parameters():
        size = param.numel() * param.element_size()
        sizes["params"] += size
        sizes["frozen" if name in frozen_param_names else "trainable"] += size
    return sizes


@pytest.mark.parametrize("strategy", HELD)
def test_peak_memory_counts_params_grads_optimizer_state_and_copies(mechanism_runs, frozen_param_names, strategy):
    run = mechanism_runs[strategy]
    sizes = parameter_bytes(run.net, frozen_param_names)
    assert run.result.peak_memory_bytes == sum(times * sizes[kind] for kind, times in HELD[strategy].items())


@pytest.mark.parametrize("strategy", HELD)
def test_gradients_exist_exactly_where_backward_reached(mechanism_runs, frozen_param_names, strategy):
    for name, param in mechanism_runs[strategy].net.named_parameters():
        skipped = strategy in SKIP_FROZEN_BACKWARD and name in frozen_param_names
        assert (param.grad is None) == skipped, name


@pytest.mark.parametrize("strategy", HELD)
def test_parameter_counts(mechanism_runs, frozen_param_names, strategy):
    run = mechanism_runs[strategy]
    frozen = sum(p.numel() for n, p in run.net.named_parameters() if n in frozen_param_names)
    total = sum(p.numel() for p in run.net.parameters())
    if strategy == "full_finetune":
        frozen = 0
    assert (run.result.trainable_params, run.result.frozen_params) == (total - frozen, frozen)
