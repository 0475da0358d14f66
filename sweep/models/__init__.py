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

    def save_cache(self) -> None:
        """Write what building the model derived (pretrained weights) to the cache. Called once every check of the
        sweep has passed, so that a mistake found by checks that build the model writes nothing."""

    def describe(self) -> str:
        """Where the backbone's weights come from, in words, for the records (its sha256 is recorded per trial)."""
        return f"{type(self).__name__}, {'pretrained' if self.pretrained else 'not pretrained (random init)'}"


MODELS: Registry[type[ModelDef]] = Registry("model")


def make_model_def(name: str, cache_dir: Path, base_dir: Path, **options) -> ModelDef:
    """`cache_dir` holds derived weights (pretraining results); `base_dir` anchors relative paths."""
    return MODELS.build(name, options, cache_dir=cache_dir, base_dir=base_dir)


from sweep.models import digits_cnn  # noqa: E402,F401  (registers the embedded model)

# torchvision is imported only when one of its models is chosen: it costs seconds at start-up.
TORCHVISION_NETS = {"resnet18": "ResNet18", "resnet50": "ResNet50", "mobilenet_v3_small": "MobileNetV3Small",
                    "efficientnet_b0": "EfficientNetB0", "convnext_tiny": "ConvNeXtTiny", "vit_b_16": "ViTB16"}
for _arch, _class in TORCHVISION_NETS.items():
    MODELS.register_lazy(_arch, f"sweep.models.torchvision_nets:{_class}")
