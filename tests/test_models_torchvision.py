"""torchvision models through the block adapter: structure, exactness, training, FLOPs and weights loading.

Everything runs on the CPU at 32x32 with random weights; "downloads" are either
a file placed in the torch.hub cache (which torchvision reads without any
network) or a network failure simulated at `urlopen`.
"""

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torch.nn.functional as F
import torchvision
import yaml

from sweep.data import make_task
from sweep.errors import ConfigError
from sweep.measure import flops_per_step
from sweep.models import MODELS, make_model_def
from sweep.models.torchvision_nets import ARCHITECTURES, TorchvisionNet
from sweep.selection import Selection, resolve
from sweep.strategies import RequiresGrad
from sweep.trial import TrialSpec, run_trial

LISTED = ["resnet18", "resnet50", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
SIZE = 32
CONF = Path(__file__).resolve().parents[1] / "conf" / "model"


def model_def(arch: str, tmp_path: Path, **options) -> TorchvisionNet:
    options = {"weights": None, "input_size": SIZE, **options}
    return make_model_def(arch, cache_dir=tmp_path / "cache", base_dir=tmp_path, **options)


def ids(tensors) -> list[int]:
    return [id(t) for t in tensors]


def test_every_listed_model_is_registered_with_a_config():
    assert set(LISTED) <= set(ARCHITECTURES) <= set(MODELS)
    for arch in ARCHITECTURES:
        assert MODELS.get(arch).arch == arch  # registered lazily by name: the name must lead to its own class
        config = yaml.safe_load((CONF / f"{arch}.yaml").read_text())
        assert config["name"] == arch and set(config) == {"name", "weights", "weights_path", "input_size"}


@pytest.mark.parametrize("arch", LISTED)
def test_blocknet_is_the_torchvision_model_split_into_blocks(arch, tmp_path):
    """Same modules, every parameter and buffer exactly once, and exactly the same output."""
    definition = model_def(arch, tmp_path)
    family = ARCHITECTURES[arch]
    torch.manual_seed(0)
    model = definition.torchvision_model().eval()
    net = family.to_blocknet(model, model.get_submodule(family.classifier)).eval()

    unit_params = [p for _, _, p in net.named_unit_parameters()]
    assert len(set(ids(unit_params))) == len(unit_params), "a parameter belongs to two blocks"
    assert set(ids(unit_params)) == set(ids(model.parameters()))
    assert set(ids(net.buffers())) == set(ids(model.buffers()))
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(net(x), model(x))


@pytest.mark.parametrize("arch", LISTED)
def test_build_replaces_the_head_and_trains_one_step(arch, tmp_path):
    definition = model_def(arch, tmp_path)
    assert not definition.pretrained
    assert definition.input_spec.channels == 3 and definition.input_spec.size == SIZE
    net = definition.build(num_classes=3)

    head_params = {name for unit, name, _ in net.named_unit_parameters() if unit == "head"}
    assert head_params == {"head.fc.weight", "head.fc.bias"}
    assert net.head.fc.out_features == 3
    unit_params = [p for _, _, p in net.named_unit_parameters()]
    assert sorted(ids(unit_params)) == sorted(ids(net.parameters()))

    before = {name: p.detach().clone() for name, p in net.named_parameters()}
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    loss = F.cross_entropy(net(torch.randn(2, 3, SIZE, SIZE)), torch.tensor([0, 2]))
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = [name for name, p in net.named_parameters() if not torch.equal(p, before[name])]
    assert "head.fc.weight" in changed
    assert any(name.startswith(f"blocks.{net.block_names[0]}.") for name in changed)


def test_requires_grad_flops_fall_with_every_frozen_block(tmp_path):
    definition = model_def("resnet18", tmp_path)
    inputs, targets = torch.randn(2, 3, SIZE, SIZE), torch.tensor([0, 1])
    flops = []
    for depth in range(len(definition.build(num_classes=2).block_names) + 1):
        torch.manual_seed(0)
        net = definition.build(num_classes=2)
        if depth:
            RequiresGrad(net, resolve(net, Selection(depth=depth)))
        flops.append(flops_per_step(net, inputs, targets, F.cross_entropy))
    assert all(a > b for a, b in zip(flops, flops[1:])), flops


def test_random_resnet18_runs_a_trial_on_digits(tmp_path):
    """`model=resnet18 model.weights=null data=digits` works offline."""
    definition = model_def("resnet18", tmp_path, input_size=16)
    task = make_task("digits", definition.input_spec, base_dir=tmp_path)
    result = run_trial(TrialSpec(strategy="requires_grad", epochs=1, batch_size=64, device="cpu"), task, definition)
    assert 0 <= result.test_accuracy <= 1 and result.frozen_weight_drift == 0.0


# --- weights -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet18_state() -> dict[str, torch.Tensor]:
    """The state dict of torchvision's own resnet18, shifted so that it is unlike any fresh init."""
    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    return model.state_dict()


def assert_backbone_is(net, state: dict[str, torch.Tensor]) -> None:
    expected = torchvision.models.resnet18()
    expected.load_state_dict(state)
    reference = ARCHITECTURES["resnet18"].to_blocknet(expected, expected.fc)
    actual, wanted = net.blocks.state_dict(), reference.blocks.state_dict()
    assert actual.keys() == wanted.keys()
    for name in wanted:
        assert torch.equal(actual[name], wanted[name]), name


def test_weights_file_round_trip(tmp_path, resnet18_state):
    torch.save(resnet18_state, tmp_path / "resnet18.pth")
    definition = model_def("resnet18", tmp_path, weights_path="resnet18.pth")  # relative to base_dir
    assert definition.pretrained
    assert_backbone_is(definition.build(num_classes=4), resnet18_state)


def test_weights_file_ignores_the_old_classifier_and_legacy_batchnorm_counters(tmp_path, resnet18_state):
    state = {k: v for k, v in resnet18_state.items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(10, 512), torch.zeros(10)  # fine-tuned on 10 classes
    torch.save(state, tmp_path / "w.pth")
    assert_backbone_is(model_def("resnet18", tmp_path, weights_path=str(tmp_path / "w.pth")).build(4),
                       resnet18_state)


def test_weights_file_wins_over_the_config_default(tmp_path, resnet18_state, monkeypatch):
    monkeypatch.setattr("torch.hub.urlopen", _offline)
    torch.save(resnet18_state, tmp_path / "w.pth")
    assert model_def("resnet18", tmp_path, weights="DEFAULT", weights_path="w.pth").pretrained


def _offline(*args, **kwargs):
    raise URLError("[Errno -3] Temporary failure in name resolution")


def test_weights_enum_loads_from_the_torch_hub_cache(tmp_path, resnet18_state, monkeypatch):
    """The real torchvision path: `weights.get_state_dict` finds the file torch.hub cached and needs no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("torch.hub.urlopen", _offline)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / Path(torchvision.models.ResNet18_Weights.DEFAULT.url).name
    cached.parent.mkdir(parents=True)
    torch.save(resnet18_state, cached)
    definition = model_def("resnet18", tmp_path, weights="IMAGENET1K_V1", input_size=None)
    assert definition.pretrained and definition.input_spec.size == 224
    assert definition.input_spec.mean == (0.485, 0.456, 0.406)
    assert_backbone_is(definition.build(num_classes=4), resnet18_state)


def test_failed_weights_download_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr("torch.hub.urlopen", _offline)
    with pytest.raises(ConfigError, match=r"could not download resnet18 weights IMAGENET1K_V1 .*no network.*"
                                          r"model\.weights_path=PATH.*model\.weights=null") as err:
        model_def("resnet18", tmp_path, weights="DEFAULT")
    assert "\n" not in str(err.value)


def test_pretrained_vit_position_embeddings_are_resampled_to_the_input_size(tmp_path, monkeypatch):
    torch.manual_seed(0)
    state = model_def("vit_b_16", tmp_path, input_size=64).torchvision_model().state_dict()  # 4x4 patches
    monkeypatch.setattr("torchvision.models._api.load_state_dict_from_url", lambda url, **kwargs: dict(state))
    pos_64 = state["encoder.pos_embedding"].clone()
    net = model_def("vit_b_16", tmp_path, weights="DEFAULT").build(num_classes=2)  # 32x32: 2x2 patches
    pos_32 = net.blocks.embed.pos_embedding
    assert pos_32.shape == (1, 1 + 2 * 2, 768)
    assert torch.equal(pos_32[:, 0], pos_64[:, 0])  # the class token's position is kept as it is
    assert torch.equal(net.blocks.layer1.ln_1.weight, state["encoder.layers.encoder_layer_0.ln_1.weight"])


def _bad_files() -> dict[str, object]:
    return {
        "garbage": b"\x00 not a torch file",
        "empty": b"",
        "a pickled module": torch.nn.Linear(2, 2),
        "a training checkpoint": {"epoch": 3, "model": {"w": torch.zeros(1)}},
    }


@pytest.mark.parametrize("case, message", [
    ("garbage", r"cannot read .*bad\.pth as a state dict"),
    ("empty", r"cannot read .*bad\.pth as a state dict"),
    ("a pickled module", r"cannot read .*bad\.pth as a state dict .*torch\.save\(model\.state_dict\(\), PATH\)"),
    ("a training checkpoint", r"bad\.pth holds a dict, not a state dict"),
])
def test_unreadable_weights_file(tmp_path, case, message):
    content = _bad_files()[case]
    if isinstance(content, bytes):
        (tmp_path / "bad.pth").write_bytes(content)
    else:
        torch.save(content, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=message) as err:
        model_def("resnet18", tmp_path, weights_path="bad.pth")
    assert "\n" not in str(err.value)


def test_missing_weights_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"no file {tmp_path}/nope\.pth"):
        model_def("resnet18", tmp_path, weights_path="nope.pth")


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("layer1.0.conv1.weight"), r"missing: layer1\.0\.conv1\.weight"),
    (lambda s: s.update({"layer5.weight": torch.zeros(1)}), r"unexpected: layer5\.weight"),
    (lambda s: s.update({"conv1.weight": torch.zeros(64, 3, 3, 3)}),
     r"shape in file vs model: conv1\.weight \(64, 3, 3, 3\) vs \(64, 3, 7, 7\)"),
])
def test_mismatched_weights_file(tmp_path, resnet18_state, edit, message):
    state = dict(resnet18_state)
    edit(state)
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=rf"model\.weights_path {tmp_path}/w\.pth is not a resnet18 state dict "
                                          rf"\(.*{message}.*\); give a file saved with torch\.save"):
        model_def("resnet18", tmp_path, weights_path="w.pth")


def test_another_models_weights_file(tmp_path):
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "w.pth")
    with pytest.raises(ConfigError, match=r"is not a resnet18 state dict \(missing: .*\(\+\d+ more\); unexpected: "):
        model_def("resnet18", tmp_path, weights_path="w.pth")


@pytest.mark.parametrize("options, message", [
    ({"weights": "IMAGENET_V9"}, r"unknown resnet18 weights 'IMAGENET_V9'; choose one of: DEFAULT, IMAGENET1K_V1"),
    ({"input_size": 0}, r"model\.input_size=0 must be a whole number"),
    ({"input_size": "big"}, r"model 'resnet18': input_size=big is not valid: it must be a valid integer"),
    ({"colour": "red"}, r"model 'resnet18': .*colour"),
])
def test_bad_model_options(tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        model_def("resnet18", tmp_path, **options)


@pytest.mark.parametrize("arch, size", [("convnext_tiny", 16), ("vit_b_16", 40)])
def test_input_size_the_network_cannot_take(tmp_path, arch, size):
    with pytest.raises(ConfigError, match=rf"model\.input_size={size} does not fit {arch} \(.*\); choose another"):
        model_def(arch, tmp_path, input_size=size)
