"""cached_prefix: exact where it is valid, refused with a reason where it is not, its cache built once per key.

Equivalence runs use `freeze.norm_policy=eval`, where the frozen prefix is a
fixed function; every comparison is with `no_grad_forward` (and
`requires_grad`) under the same seed, so the same batches in the same order.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torchvision.transforms import v2

from sweep.data import make_task
from sweep.errors import ConfigError, NotApplicable
from sweep.feature_cache import FeatureCache
from sweep.models import ModelDef, make_model_def
from sweep.phases import Phase, gradual_unfreezing
from sweep.selection import Selection
from sweep.trial import TrialSpec, run_trial, set_up

EVAL = {"norm_policy": "eval"}
REFERENCES = ("no_grad_forward", "requires_grad")


class AlteredModelDef(ModelDef):
    """`inner` with `alter(net)` applied to every network it builds (a layer added, a head replaced); it keeps
    the network it built last, so tests can compare trained weights."""

    def __init__(self, inner: ModelDef, alter=lambda net: None) -> None:
        self.inner, self.alter = inner, alter
        self.input_spec, self.pretrained = inner.input_spec, inner.pretrained
        self.last_built = None

    def build(self, num_classes):
        self.last_built = self.inner.build(num_classes)
        self.alter(self.last_built)
        return self.last_built


def spec(strategy: str, **fields) -> TrialSpec:
    return TrialSpec(strategy=strategy, **{"selection": Selection(depth=2), "epochs": 2, "device": "cpu", **EVAL,
                                           **fields})


def assert_same_training(run, reference, frozen_prefixes=("blocks.conv1.", "blocks.conv2.")):
    """`run` and `reference`: (TrialResult, trained network)."""
    (result, net), (reference_result, reference_net) = run, reference
    assert result.test_accuracy == reference_result.test_accuracy
    assert result.history == reference_result.history
    trained = dict(reference_net.named_parameters())
    for name, param in net.named_parameters():
        if not name.startswith(frozen_prefixes):
            torch.testing.assert_close(param, trained[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.fixture(scope="module")
def eval_runs(train):
    return {strategy: train(strategy, **EVAL) for strategy in ("cached_prefix", *REFERENCES)}


def pair(trained) -> tuple:
    return trained.result, trained.net


@pytest.mark.parametrize("reference", REFERENCES)
def test_trains_the_same_model_as_no_grad_forward_and_requires_grad(eval_runs, reference):
    assert_same_training(pair(eval_runs["cached_prefix"]), pair(eval_runs[reference]))
    assert eval_runs["cached_prefix"].result.frozen_weight_drift == 0.0
    assert eval_runs["cached_prefix"].result.frozen_buffer_drift == 0.0


def test_flops_per_step_are_those_of_the_suffix_alone_and_the_prefix_is_counted_once(eval_runs, digits_model_def,
                                                                                     digits_task):
    net = digits_model_def.build(digits_task.num_classes)
    prefix, suffix = nn.Sequential(net.blocks.conv1, net.blocks.conv2), nn.Sequential(net.blocks.conv3,
                                                                                      net.blocks.fc, net.head)
    samples = torch.cat([torch.stack([x for x, _ in split]) for split in
                         (digits_task.train, digits_task.val, digits_task.test)])
    with torch.no_grad(), FlopCounterMode(display=False) as whole_prefix:
        features = prefix.eval()(samples)
    batch = features[:32]
    with FlopCounterMode(display=False) as suffix_step:
        F.cross_entropy(suffix(batch), torch.zeros(32, dtype=torch.long)).backward()

    result = eval_runs["cached_prefix"].result
    assert result.flops_per_step == suffix_step.get_total_flops()
    assert result.feed_metrics["cache_prefix_flops"] == whole_prefix.get_total_flops()
    prefix_per_batch = whole_prefix.get_total_flops() // len(samples) * 32
    assert eval_runs["no_grad_forward"].result.flops_per_step == result.flops_per_step + prefix_per_batch


def test_cache_bytes_are_counted_exactly_and_in_memory(eval_runs, digits_task):
    rows = len(digits_task.train) + len(digits_task.val) + len(digits_task.test)
    conv2_output = 32 * 4 * 4  # channels x height x width after conv2's pooling
    metrics = eval_runs["cached_prefix"].result.feed_metrics
    assert metrics["cache_bytes"] == rows * (conv2_output * 4 + 8)  # float32 features, int64 targets
    assert (metrics["cache_built"], metrics["cache_spilled"]) == (1.0, 0.0)
    assert metrics["cache_build_s"] > 0
    same_params_and_state = eval_runs["no_grad_forward"].result.held_bytes
    assert eval_runs["cached_prefix"].result.held_bytes == same_params_and_state + metrics["cache_bytes"]


def test_phases_cache_what_stays_frozen_in_every_phase_and_run_the_rest_without_grad(train, digits_task):
    phases = (Phase(1, Selection(depth=3)), Phase(1, Selection(depth=1), lr_scale=0.5))
    runs = {strategy: train(strategy, selection=phases[0].freeze, phases=phases, **EVAL)
            for strategy in ("cached_prefix", "no_grad_forward")}
    assert_same_training(pair(runs["cached_prefix"]), pair(runs["no_grad_forward"]), frozen_prefixes=("blocks.conv1.",))
    for cached, no_grad in zip(runs["cached_prefix"].result.phases, runs["no_grad_forward"].result.phases, strict=True):
        assert cached.flops_per_step < no_grad.flops_per_step  # conv1 is never run; the rest as in no_grad_forward
    rows = len(digits_task.train) + len(digits_task.val) + len(digits_task.test)
    conv1_output = 16 * 8 * 8
    assert runs["cached_prefix"].result.feed_metrics["cache_bytes"] == rows * (conv1_output * 4 + 8)


def test_dropout_after_the_prefix_draws_the_same_masks(digits_model_def, digits_task):
    """The cache build must not consume the random numbers the suffix's dropout draws."""
    dropout_head = AlteredModelDef(digits_model_def, lambda net: net.replace_head(nn.Sequential(nn.Dropout(0.5),
                                                                                                net.head)))
    results = {strategy: run_trial(spec(strategy), digits_task, dropout_head)
               for strategy in ("cached_prefix", "no_grad_forward")}
    assert results["cached_prefix"].history == results["no_grad_forward"].history
    assert results["cached_prefix"].test_accuracy == results["no_grad_forward"].test_accuracy


def test_resnet18_at_a_small_input_size_trains_the_same_model(tmp_path):
    resnet = make_model_def("resnet18", cache_dir=tmp_path, base_dir=tmp_path, weights=None, input_size=32)
    task = make_task("digits", resnet.input_spec, tmp_path)
    runs = {}
    for strategy in ("cached_prefix", "no_grad_forward"):
        recording = AlteredModelDef(resnet)
        runs[strategy] = run_trial(spec(strategy, selection=Selection(depth=4), epochs=1), task, recording), \
            recording.last_built
    assert_same_training(runs["cached_prefix"], runs["no_grad_forward"],
                         frozen_prefixes=("blocks.stem.", "blocks.layer1.", "blocks.layer2.", "blocks.layer3."))
    rows = len(task.train) + len(task.val) + len(task.test)
    layer3_output = 256 * 2 * 2  # channels x height x width at input 32
    assert runs["cached_prefix"][0].feed_metrics["cache_bytes"] == rows * (layer3_output * 4 + 8)


def insert(block: str, layer: nn.Module):
    return lambda net: net.blocks[block].append(layer)


def write_image_folder(root: Path, classes: int = 2, per_class: int = 10) -> Path:
    for label in range(classes):
        (root / f"class{label}").mkdir(parents=True)
        for index in range(per_class):
            pixels = np.full((8, 8), 40 * label + 3 * index, dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{label}" / f"{index}.png")
    return root


def flipped(task):
    task.train.dataset.transform = v2.Compose([v2.RandomHorizontalFlip(), task.train.dataset.transform])
    return task


# case: (model alteration, spec fields, task change, fragments the one-line message must hold)
REFUSED = {
    "norm_policy=train with BatchNorm in the prefix": (
        None, {"norm_policy": "train"}, None,
        ["freeze.norm_policy=train", "blocks.conv1.1, blocks.conv2.1", "pass freeze.norm_policy=eval", "no_grad_forward"]),
    "dropout in the prefix": (
        insert("conv1", nn.Dropout(0.25)), {}, None, ["blocks.conv1.3 (p=0.25)", "random", "no_grad_forward"]),
    "BatchNorm without running statistics": (
        insert("conv2", nn.BatchNorm2d(32, track_running_stats=False)), {}, None,
        ["blocks.conv2.4", "statistics of each batch", "no_grad_forward"]),
    "a norm layer norm_policy=eval does not hold": (
        insert("conv1", nn.InstanceNorm2d(16, track_running_stats=True)), {}, None,
        ["blocks.conv1.3", "does not hold", "no_grad_forward"]),
    "random augmentation": (
        None, {}, flipped, ["randomly augmented", "RandomHorizontalFlip", "no_grad_forward"]),
    "gradual unfreezing, which ends with nothing frozen": (
        None, {"phases": gradual_unfreezing(2, 3), "epochs": 3}, None,
        ["no block stays frozen through every phase", "freeze.depth=1", "no_grad_forward"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_an_inexact_configuration_is_refused_with_its_reason_and_fix(case, digits_model_def, tmp_path):
    alter, fields, change_task, fragments = REFUSED[case]
    model_def = AlteredModelDef(digits_model_def, alter) if alter else digits_model_def
    task = make_task("imagefolder", model_def.input_spec, tmp_path, root=str(write_image_folder(tmp_path / "images")))
    with pytest.raises(NotApplicable) as refused:
        set_up(spec("cached_prefix", **fields), change_task(task) if change_task else task, model_def)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("strategy 'cached_prefix' cannot reuse the frozen prefix's")
    for fragment in fragments:
        assert fragment in message


def test_the_plain_image_pipeline_and_dropout_that_drops_nothing_are_accepted(digits_model_def, tmp_path):
    task = make_task("imagefolder", digits_model_def.input_spec, tmp_path, root=str(write_image_folder(tmp_path)))
    setup = set_up(spec("cached_prefix"), task, AlteredModelDef(digits_model_def, insert("conv1", nn.Dropout(0.0))))
    assert setup.net.precomputed_prefix == 0, "choosing the feed must not change the network; opening it does"
    setup.feed.open(None)
    assert setup.net.precomputed_prefix == 2


def test_a_selection_that_is_not_a_prefix_is_refused_like_no_grad_forward(digits_model_def, digits_task):
    with pytest.raises(ConfigError, match=r"strategy 'cached_prefix' needs the frozen blocks to be a prefix.*\['conv2'\]"):
        set_up(spec("cached_prefix", selection=Selection(names=("conv2",))), digits_task, digits_model_def)


def entry(cache_dir: Path) -> Path:
    [found] = [p for p in cache_dir.iterdir() if p.is_dir()]
    return found


def cached_trial(digits_model_def, digits_task, cache: FeatureCache, **fields):
    return run_trial(spec("cached_prefix", epochs=1, **fields), digits_task, digits_model_def, feature_cache=cache)


def built(result) -> tuple[float, float]:
    return result.feed_metrics["cache_built"], result.feed_metrics["cache_spilled"]


def test_trials_with_the_same_key_build_once_and_a_new_key_builds_again(digits_model_def, digits_task, tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=1 << 30)
    first = cached_trial(digits_model_def, digits_task, cache)
    assert built(first) == (1.0, 0.0)
    assert built(cached_trial(digits_model_def, digits_task, cache, seed=1)) == (0.0, 0.0)  # another trial, same key
    assert built(cached_trial(digits_model_def, digits_task, cache, selection=Selection(depth=3))) == (1.0, 0.0)
    rerun = cached_trial(digits_model_def, digits_task, FeatureCache(tmp_path, max_bytes=1 << 30))  # a new process
    assert built(rerun) == (0.0, 0.0)
    spilled = cached_trial(digits_model_def, digits_task, FeatureCache(tmp_path, max_bytes=0))
    assert built(spilled) == (0.0, 1.0)
    assert rerun.history == spilled.history == first.history
    assert rerun.feed_metrics["cache_build_s"] == 0.0 and first.train_time_s > first.feed_metrics["cache_build_s"]


def test_a_corrupt_cache_file_is_rebuilt_and_its_bytes_never_used(digits_model_def, digits_task, tmp_path):
    first = cached_trial(digits_model_def, digits_task, FeatureCache(tmp_path, max_bytes=1 << 30))
    inputs = entry(tmp_path) / "inputs.npy"
    good = inputs.read_bytes()
    corrupt = np.load(inputs, mmap_mode="r+")
    corrupt[:] = 1e30  # header intact, every feature absurd: training on them could not give the same losses
    corrupt.flush()
    del corrupt
    assert inputs.read_bytes() != good and inputs.stat().st_size == len(good)

    again = cached_trial(digits_model_def, digits_task, FeatureCache(tmp_path, max_bytes=1 << 30))
    assert built(again) == (1.0, 0.0)
    assert again.history == first.history and again.test_accuracy == first.test_accuracy
    assert inputs.read_bytes() == good


def test_the_cache_key_follows_what_the_features_depend_on_and_nothing_else(digits_model_def, digits_task):
    setup = set_up(spec("cached_prefix"), digits_task, digits_model_def)
    shape = digits_task.train[0][0].shape
    key = setup.feed.key(shape)
    with torch.no_grad():
        setup.net.blocks.conv3[0].weight.add_(1.0)  # after the prefix
    assert setup.feed.key(shape) == key
    with torch.no_grad():
        setup.net.blocks.conv2[1].running_mean.add_(1e-3)  # a BatchNorm statistic inside it
    assert setup.feed.key(shape) != key
    other_split = make_task("digits", digits_model_def.input_spec, Path.cwd(), split_seed=1)
    deeper = set_up(spec("cached_prefix", selection=Selection(depth=3)), digits_task, digits_model_def)
    resplit = set_up(spec("cached_prefix"), other_split, digits_model_def)
    fresh = set_up(spec("cached_prefix"), digits_task, digits_model_def)
    assert len({fresh.feed.key(shape), deeper.feed.key(shape), resplit.feed.key(shape)}) == 3
    assert fresh.net.backbone_sha256(len(fresh.net.block_names)) == fresh.net.backbone_sha256()
