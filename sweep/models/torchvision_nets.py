"""torchvision classifiers as BlockNets: ResNet, MobileNetV3, EfficientNet, ConvNeXt and ViT.

A `Family` says how one torchvision family splits into ordered named blocks
and a head, so "the first k blocks" and block names mean the same thing for
every model. The choice, the same for every family: the head's only
parameters are the new classifier (`head.fc`). Pretrained layers that
torchvision runs after the features (MobileNetV3's pre-logits Linear,
ConvNeXt's and ViT's final norm) form the last block, so they can be frozen
like the rest of the backbone. Parameter-free glue (pooling, flatten, picking
ViT's class token) sits in the head unless a pretrained layer follows it.

Weights come from torchvision's weights enums (downloaded and cached by
`torch.hub`) or from a local state-dict file of the torchvision model; either
way the classifier's entries are ignored, since the head replaces it.
"""

import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from sweep.blocknet import BlockNet
from sweep.data import InputSpec
from sweep.errors import ConfigError, choice_error, one_line
from sweep.models import ModelDef

Blocks = list[tuple[str, nn.Module]]
StateDict = dict[str, torch.Tensor]


def _seq(**modules: nn.Module) -> nn.Sequential:
    """A Sequential whose children keep readable names, for `freeze.regex` and group labels."""
    return nn.Sequential(OrderedDict(modules))


@dataclass(frozen=True)
class Family:
    """How the networks of one torchvision family become blocks + head."""

    blocks: Callable[[nn.Module], Blocks]
    head: Callable[[nn.Module, nn.Linear], nn.Module]  # (model, new classifier) -> head
    classifier: str  # dotted name of the model's own final Linear, which the head replaces
    size_options: Callable[[int], dict] = lambda size: {}  # builder options that depend on the input size
    adapt_state: Callable[[nn.Module, StateDict], StateDict] = lambda model, state: state  # fit weights to the model

    def to_blocknet(self, model: nn.Module, classifier: nn.Linear) -> BlockNet:
        """`model` as a BlockNet ending in `classifier`.

        Given the model's own classifier, it computes exactly what `model` does.
        """
        return BlockNet(self.blocks(model), self.head(model, classifier))

    def is_classifier_key(self, key: str) -> bool:
        return key.startswith(f"{self.classifier}.")


def _resnet_blocks(model: nn.Module) -> Blocks:
    stem = _seq(conv1=model.conv1, bn1=model.bn1, relu=model.relu, maxpool=model.maxpool)
    return [("stem", stem), *((f"layer{i}", model.get_submodule(f"layer{i}")) for i in range(1, 5))]


def _pooled_head(model: nn.Module, fc: nn.Linear, **before_fc: nn.Module) -> nn.Sequential:
    return _seq(avgpool=model.avgpool, flatten=nn.Flatten(1), **before_fc, fc=fc)


def _feature_blocks(model: nn.Module, stage: str) -> Blocks:
    """MobileNetV3, EfficientNet: `features` = stem conv, stages, last 1x1 conv."""
    stem, *stages, last_conv = model.features
    return [("stem", stem), *((f"{stage}{i}", s) for i, s in enumerate(stages, 1)), ("last_conv", last_conv)]


def _mobilenet_v3_blocks(model: nn.Module) -> Blocks:
    linear, activation, dropout, _ = model.classifier
    pre_logits = _seq(avgpool=model.avgpool, flatten=nn.Flatten(1), linear=linear, activation=activation,
                      dropout=dropout)
    return [*_feature_blocks(model, "block"), ("pre_logits", pre_logits)]


def _convnext_blocks(model: nn.Module) -> Blocks:
    """`features` = stem, stage, (downsample, stage) x 3; each downsample joins the stage it feeds, as in timm."""
    stem, first, *rest = model.features
    stages = [_seq(blocks=first), *(_seq(downsample=d, blocks=s) for d, s in zip(rest[::2], rest[1::2]))]
    norm, flatten, _ = model.classifier
    return [("stem", stem), *((f"stage{i}", s) for i, s in enumerate(stages, 1)),
            ("norm", _seq(avgpool=model.avgpool, norm=norm, flatten=flatten))]


class VitEmbedding(nn.Module):
    """Patches -> tokens, class token prepended, position embedding added, dropout.

    torchvision's `_process_input`, the class-token concat and the start of
    `Encoder.forward`, as one block that owns those parameters.
    """

    def __init__(self, vit: VisionTransformer) -> None:
        super().__init__()
        self.conv_proj = vit.conv_proj
        self.class_token = vit.class_token
        self.pos_embedding = vit.encoder.pos_embedding
        self.dropout = vit.encoder.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.conv_proj(x).flatten(2).transpose(1, 2)
        class_token = self.class_token.expand(len(x), -1, -1)
        return self.dropout(torch.cat([class_token, tokens], dim=1) + self.pos_embedding)


class ClassToken(nn.Module):
    """ViT classifies the class token's output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0]


def _vit_blocks(vit: nn.Module) -> Blocks:
    layers = [(f"layer{i}", layer) for i, layer in enumerate(vit.encoder.layers, 1)]
    return [("embed", VitEmbedding(vit)), *layers, ("norm", vit.encoder.ln)]


def _vit_resample(vit: nn.Module, state: StateDict) -> StateDict:
    """Position embeddings are for the weights' image size; resample them to the model's (torchvision's helper)."""
    key = "encoder.pos_embedding"
    if key in state and state[key].shape != vit.encoder.pos_embedding.shape:
        return interpolate_embeddings(vit.image_size, vit.patch_size, state)
    return state


RESNET = Family(_resnet_blocks, head=_pooled_head, classifier="fc")
MOBILENET_V3 = Family(_mobilenet_v3_blocks, head=lambda model, fc: _seq(fc=fc), classifier="classifier.3")
EFFICIENTNET = Family(lambda model: _feature_blocks(model, "stage"), classifier="classifier.1",
                      head=lambda model, fc: _pooled_head(model, fc, dropout=model.classifier[0]))
CONVNEXT = Family(_convnext_blocks, head=lambda model, fc: _seq(fc=fc), classifier="classifier.2")
VIT = Family(_vit_blocks, head=lambda model, fc: _seq(class_token=ClassToken(), fc=fc), classifier="heads.head",
             size_options=lambda size: {"image_size": size}, adapt_state=_vit_resample)


def weights_member(arch: str, name: str) -> WeightsEnum:
    """`DEFAULT` or a member name such as `IMAGENET1K_V1` (DEFAULT is an alias member of every enum)."""
    members = get_model_weights(arch).__members__
    if name not in members:
        raise choice_error(f"{arch} weights", name, members)
    return members[name]


def download_state(arch: str, weights: WeightsEnum) -> StateDict:
    """torchvision's own download (cached under $TORCH_HOME), turned into a ConfigError when it fails."""
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a bad hash or a truncated file a RuntimeError
        raise ConfigError(f"could not download {arch} weights {weights.name} from {weights.url} (no network?): "
                          f"{one_line(err)}; pass model.weights_path=PATH to a local state-dict file "
                          "or model.weights=null") from None


def read_state_dict(path: Path) -> StateDict:
    """A state dict (name -> tensor) from a file, read with `weights_only=True` so no code in it runs."""
    hint = "save one with torch.save(model.state_dict(), PATH)"
    if not path.is_file():
        raise ConfigError(f"model.weights_path: no file {path}; give a state-dict file ({hint}) "
                          "or model.weights_path=null")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # its message is a page of advice to drop weights_only
        raise ConfigError(f"model.weights_path: cannot read {path} as a state dict (torch.load with weights_only=True "
                          f"refused it: a whole pickled model, other objects, or not a torch file); {hint}") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise ConfigError(f"model.weights_path: cannot read {path} as a state dict ({one_line(err)}); {hint}") from None
    if not (isinstance(state, Mapping) and all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items())):
        raise ConfigError(f"model.weights_path: {path} holds a {type(state).__name__}, not a state dict "
                          f"(parameter name -> tensor); {hint}")
    return dict(state)


def _few(items: list[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


class TorchvisionNet(ModelDef):
    """A torchvision classifier with pretrained (or random) weights and a fresh head.

    Options: `weights` (null = random init, `DEFAULT`, or a member of the
    model's weights enum), `weights_path` (a state-dict file of the torchvision
    model, relative to `base_dir`; used instead of `weights` when given),
    `input_size` (side of the square input; default the weights' crop size,
    e.g. 224; ViT takes multiples of its patch size, resampling pretrained
    position embeddings). Size and normalisation follow the transforms of
    `weights` (of the DEFAULT weights when it is null).
    """

    arch: ClassVar[str]
    family: ClassVar[Family]

    def __init__(self, cache_dir: Path, base_dir: Path, weights: str | None = None,
                 weights_path: str | None = None, input_size: int | None = None) -> None:
        reference = weights_member(self.arch, weights if weights is not None else "DEFAULT")
        preprocessing = reference.transforms()
        self.input_size = input_size if input_size is not None else preprocessing.crop_size[0]
        self._check_input_size()
        # the weights' own preprocessing (resize, centre crop, normalise), scaled to another input size
        resize_size = round(self.input_size * preprocessing.resize_size[0] / preprocessing.crop_size[0])
        self.input_spec = InputSpec(channels=3, size=self.input_size, mean=tuple(preprocessing.mean),
                                    std=tuple(preprocessing.std), resize_size=resize_size,
                                    interpolation=preprocessing.interpolation.value)
        self.pretrained = weights is not None or weights_path is not None
        self._state: StateDict | None = None
        self._source = "not pretrained (random init)"
        if weights_path is not None:  # a local file wins over `weights`, so the config's DEFAULT need not be unset
            path = (base_dir / Path(weights_path).expanduser()).resolve()
            self._state = self._fitted(read_state_dict(path), f"model.weights_path {path}")
            self._source = f"weights from {path.name}"
        elif weights is not None:
            self._state = self._fitted(download_state(self.arch, reference), f"{self.arch} weights {reference.name}")
            self._source = f"torchvision weights {reference.name}"

    def describe(self) -> str:
        return f"{self.arch}, {self._source}"

    def torchvision_model(self) -> nn.Module:
        """The model as torchvision builds it, randomly initialised."""
        return get_model(self.arch, **self.family.size_options(self.input_size))

    def _meta_model(self) -> nn.Module:
        """Shapes without memory or init time, for checks made before any trial runs."""
        with torch.device("meta"):
            return self.torchvision_model()

    def _check_input_size(self) -> None:
        """A meta-device forward pass: an input size the network cannot take fails here, not in the first trial."""
        size = self.input_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"model.input_size={size!r} must be a whole number of pixels >= 1")
        try:
            with torch.no_grad():
                self._meta_model().eval()(torch.zeros(1, 3, size, size, device="meta"))
        except (RuntimeError, AssertionError) as err:  # too small for the convolutions; ViT: not a patch multiple
            raise ConfigError(f"model.input_size={size} does not fit {self.arch} ({one_line(err)}); "
                              "choose another model.input_size") from None

    def _fitted(self, state: StateDict, source: str) -> StateDict:
        """The backbone part of `state`, checked against the model so a bad file fails before any trial."""
        model = self._meta_model()
        try:
            state = self.family.adapt_state(model, state)
        except ValueError as err:
            raise ConfigError(f"{source} does not fit {self.arch}: {one_line(err)}") from None
        expected = {k: v.shape for k, v in model.state_dict().items() if not self.family.is_classifier_key(k)}
        given = {k: v for k, v in state.items() if not self.family.is_classifier_key(k)}
        # Old torchvision checkpoints predate BatchNorm's step counter; BatchNorm fills it in itself.
        missing = sorted(k for k in expected.keys() - given.keys() if not k.endswith("num_batches_tracked"))
        unexpected = sorted(given.keys() - expected.keys())
        wrong = [f"{k} {tuple(given[k].shape)} vs {tuple(shape)}" for k, shape in expected.items()
                 if k in given and given[k].shape != shape]
        problems = [f"{what}: {_few(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("shape in file vs model", wrong)) if keys]
        if problems:
            raise ConfigError(f"{source} is not a {self.arch} state dict ({'; '.join(problems)}); give a file saved "
                              f"with torch.save(torchvision.models.{self.arch}().state_dict(), PATH) or choose the "
                              "model it belongs to")
        return given

    def build(self, num_classes: int) -> BlockNet:
        model = self.torchvision_model()
        if self._state is not None:
            model.load_state_dict(self._state, strict=False)  # checked by `_fitted`; only the classifier is left out
        old = model.get_submodule(self.family.classifier)
        return self.family.to_blocknet(model, nn.Linear(old.in_features, num_classes))


# One ModelDef class per architecture, so `MODELS.get(name)` stays a class like every other entry
# (sweep.models registers them by these names without importing this module).
def _model_class(name: str, arch: str, family: Family) -> type[TorchvisionNet]:
    return type(name, (TorchvisionNet,), {"arch": arch, "family": family, "__module__": __name__})


ResNet18 = _model_class("ResNet18", "resnet18", RESNET)
ResNet50 = _model_class("ResNet50", "resnet50", RESNET)
MobileNetV3Small = _model_class("MobileNetV3Small", "mobilenet_v3_small", MOBILENET_V3)
EfficientNetB0 = _model_class("EfficientNetB0", "efficientnet_b0", EFFICIENTNET)
ConvNeXtTiny = _model_class("ConvNeXtTiny", "convnext_tiny", CONVNEXT)
ViTB16 = _model_class("ViTB16", "vit_b_16", VIT)
ARCHITECTURES: dict[str, Family] = {net.arch: net.family for net in
                                    (ResNet18, ResNet50, MobileNetV3Small, EfficientNetB0, ConvNeXtTiny, ViTB16)}
