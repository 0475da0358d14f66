"""`held_bytes`, counted independently: what each mechanism keeps alive besides activations; and the real peak.

SGD with momentum holds one momentum buffer per parameter it steps, and a
gradient exists wherever backward reached a parameter that requires it:

| mechanism | grads | momentum | extra |
|---|---|---|---|
| requires_grad, no_grad_forward | trainable | trainable | - |
| exclude_from_optimizer | all (frozen ones accumulate) | trainable | - |
| zero_lr, full_finetune | all | all | - |
| weight_restore | all | all | a copy of the frozen params |

What a trial really adds to the process at its peak (`peak_rss_growth_bytes` on a CPU) also
holds the activations saved for backward, which grow with the input while the held bytes do not.
"""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Subset

from sweep.data import Task, make_task
from sweep.measure import ProcessPeakRss
from sweep.models import make_model_def
from sweep.trial import TrialSpec, run_trial

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
def test_held_bytes_count_params_grads_optimizer_state_and_copies(mechanism_runs, frozen_param_names, strategy):
    run = mechanism_runs[strategy]
    sizes = parameter_bytes(run.net, frozen_param_names)
    assert run.result.held_bytes == sum(times * sizes[kind] for kind, times in HELD[strategy].items())


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


def saved_activation_bytes(net: nn.Module, inputs: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one training forward pass, parameters aside."""
    saved = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.cross_entropy(net.train()(inputs), torch.zeros(len(inputs), dtype=torch.long))
    params = {p.untyped_storage().data_ptr() for p in net.parameters()}
    return sum(size for storage, size in saved.items() if storage not in params)


@pytest.mark.skipif(not ProcessPeakRss.available(), reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)")
def test_the_real_peak_grows_with_the_input_while_held_bytes_do_not(tmp_path):
    batch = 64  # one training step per trial
    results, activations = {}, {}
    for size in (64, 32):  # the larger first: a peak that never came down (the process's lifetime one) fails
        model_def = make_model_def("resnet18", cache_dir=tmp_path, base_dir=tmp_path, weights=None, input_size=size)
        digits = make_task("digits", model_def.input_spec, Path.cwd())
        task = Task(digits.name, Subset(digits.train, range(batch)), Subset(digits.val, range(16)),
                    Subset(digits.test, range(16)), digits.num_classes)
        results[size] = run_trial(TrialSpec("full_finetune", epochs=1, batch_size=batch, device="cpu"), task, model_def)
        inputs = torch.stack([digits.train[i][0] for i in range(batch)])
        activations[size] = saved_activation_bytes(model_def.build(digits.num_classes), inputs)

    growth = {size: result.peak_memory["peak_rss_growth_bytes"] for size, result in results.items()}
    assert results[64].held_bytes == results[32].held_bytes
    assert growth[32] > results[32].held_bytes
    assert growth[64] - growth[32] >= activations[64] - activations[32] > 0
    for result in results.values():
        assert result.peak_memory["peak_rss_bytes"] > growth[64]  # the interpreter and torch come on top
        assert result.peak_memory.keys() <= result.final_metrics().keys()
