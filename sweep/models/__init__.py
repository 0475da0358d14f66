"""Models by name: each builds a `BlockNet` (pretrained backbone + fresh head) and says what input it expects."""

from abc import ABC, abstractmethod
from pathlib import Path

from sweep.blocknet import BlockNet
from sweep.data import InputSpec
from sweep.registry import Registry


class ModelDef(ABC):
    """A configured model family; `build` is called once per trial, after the trial's seed is set."""

    input_spec: InputSpec
    pretrained: bool

    @abstractmethod
    def build(self, num_classes: int) -> BlockNet:
        """The network with its pretrained backbone and a fresh head for `num_classes`."""


MODELS: Registry[type[ModelDef]] = Registry("model")


def make_model_def(name: str, cache_dir: Path, base_dir: Path, **options) -> ModelDef:
    """`cache_dir` holds derived weights (pretraining results); `base_dir` anchors relative paths."""
    return MODELS.build(name, options, cache_dir=cache_dir, base_dir=base_dir)


from sweep.models import digits_cnn  # noqa: E402,F401  (registers the embedded model)
from sweep.models import torchvision_nets  # noqa: E402,F401  (registers the torchvision models)
