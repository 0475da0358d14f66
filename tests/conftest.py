"""Shared fixtures: the embedded model and task, built once per test session.

Fixtures other test files can use:

- `digits_model_def`: the digits CNN, pretrained briefly (3 epochs, about 2 s) into a
  session temp dir, so tests never read or write the user's cache under results/.
- `digits_task`: the embedded transfer task (digits 5-9 relabelled 0-4).
- `train`: `train(strategy, **spec_fields) -> Trained`, a CPU trial returning its
  result and its trained network (`TrialResult` alone has no weights to compare).
- `freezing_strategy`: parametrizes a test over the five mechanisms that freeze something under the
  default norm policy (`cached_prefix` needs `norm_policy=eval`: tests/test_cached_prefix.py covers it).
- `frozen_param_names`: the parameters of `FROZEN_BLOCKS`, named by hand rather than by
  `sweep.selection`, for checking what the engine says is frozen.
- `mechanism_runs`: every mechanism but `cached_prefix` trained once, on CPU, with `FROZEN_BLOCKS` (the first
  two of four) frozen and the same seed and SGD-with-momentum settings: {strategy: Trained}.
  Shared by the equivalence, cost, memory and pitfall tests; treat it as read-only.

Test modules do not import from here (`conftest` is not a unique module name
once subfolders have their own); they ask for fixtures.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from sweep.blocknet import BlockNet
from sweep.data import Task, make_task
from sweep.models import ModelDef, make_model_def
from sweep.selection import Selection
from sweep.strategies import MECHANISMS
from sweep.trial import TrialResult, TrialSpec, run_trial

FROZEN_BLOCKS = ("conv1", "conv2")
"""What `Selection(depth=2)`, the default selection of every trial here, freezes in the digits CNN."""
CACHED = "cached_prefix"
"""Refuses the default `norm_policy=train` with the digits CNN, whose frozen blocks hold BatchNorm layers."""
RUN_BY_DEFAULT = [name for name in MECHANISMS if name != CACHED]
FREEZING = [name for name in RUN_BY_DEFAULT if MECHANISMS.get(name).freezes]
"""The five mechanisms that freeze something under the default norm policy (all but full_finetune and CACHED)."""


@dataclass
class Trained:
    result: TrialResult
    net: BlockNet


class RecordingModelDef(ModelDef):
    """Wraps a ModelDef and keeps the network it last built, so tests can inspect trained weights."""

    def __init__(self, inner: ModelDef) -> None:
        self.inner = inner
        self.input_spec = inner.input_spec
        self.pretrained = inner.pretrained
        self.last_built: BlockNet | None = None

    def build(self, num_classes: int) -> BlockNet:
        self.last_built = self.inner.build(num_classes)
        return self.last_built


@pytest.fixture(scope="session")
def digits_model_def(tmp_path_factory: pytest.TempPathFactory) -> ModelDef:
    cache_dir = tmp_path_factory.mktemp("model-cache")
    return make_model_def("digits_cnn", cache_dir=cache_dir, base_dir=Path.cwd(), pretrain={"epochs": 3})


@pytest.fixture(scope="session")
def digits_task(digits_model_def: ModelDef) -> Task:
    return make_task("digits", digits_model_def.input_spec, Path.cwd())


@pytest.fixture(params=FREEZING)
def freezing_strategy(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def frozen_param_names(digits_model_def: ModelDef) -> set[str]:
    prefixes = tuple(f"blocks.{block}." for block in FROZEN_BLOCKS)
    return {name for name, _ in digits_model_def.build(5).named_parameters() if name.startswith(prefixes)}


@pytest.fixture(scope="session")
def train(digits_model_def: ModelDef, digits_task: Task) -> Callable[..., Trained]:
    recorder = RecordingModelDef(digits_model_def)

    def run(strategy: str, **spec_fields) -> Trained:
        fields = {"selection": Selection(depth=len(FROZEN_BLOCKS)), "epochs": 2, "device": "cpu", **spec_fields}
        result = run_trial(TrialSpec(strategy=strategy, **fields), digits_task, recorder)
        return Trained(result, recorder.last_built)

    return run


@pytest.fixture(scope="session")
def mechanism_runs(train: Callable[..., Trained]) -> dict[str, Trained]:
    return {name: train(name) for name in RUN_BY_DEFAULT}
