"""Selection: which parameters a depth, block names, indices or a regex freeze, written out by hand."""

import pytest

from sweep.selection import Selection, resolve

CONV = {"0.weight", "1.weight", "1.bias"}  # conv (no bias) + BatchNorm2d
PARAMS = {"conv1": CONV, "conv2": CONV, "conv3": CONV, "fc": {"1.weight", "1.bias"}}


def params_of(*blocks: str) -> set[str]:
    return {f"blocks.{block}.{p}" for block in blocks for p in PARAMS[block]}


@pytest.fixture(scope="module")
def net(digits_model_def):
    return digits_model_def.build(5)


@pytest.mark.parametrize("selection, blocks, params", [
    (Selection(depth=2), ["conv1", "conv2"], params_of("conv1", "conv2")),
    (Selection(depth=4), ["conv1", "conv2", "conv3", "fc"], params_of("conv1", "conv2", "conv3", "fc")),
    (Selection(names=("conv3", "conv1")), ["conv1", "conv3"], params_of("conv1", "conv3")),
    (Selection(indices=(-1,)), ["fc"], params_of("fc")),
    (Selection(indices=(0, -2)), ["conv1", "conv3"], params_of("conv1", "conv3")),
    (Selection(depth=1, names=("conv1", "fc")), ["conv1", "fc"], params_of("conv1", "fc")),  # a union
    (Selection(regex=r"conv[12]\."), ["conv1", "conv2"], params_of("conv1", "conv2")),
    (Selection(regex=r"\.0\.weight$"), [], {f"blocks.conv{i}.0.weight" for i in (1, 2, 3)}),
    (Selection(depth=1, regex=r"conv2\.1\."), ["conv1"], params_of("conv1") | {"blocks.conv2.1.weight",
                                                                               "blocks.conv2.1.bias"}),
    (Selection(), [], set()),
])
def test_selection_freezes_exactly(net, selection, blocks, params):
    frozen = resolve(net, selection)
    assert frozen.param_names == params
    assert frozen.blocks == blocks


@pytest.mark.parametrize("regex", [".*", "head", "weight"])
def test_a_regex_never_freezes_the_head(net, regex):
    assert not {name for name in resolve(net, Selection(regex=regex)).param_names if name.startswith("head.")}


@pytest.mark.parametrize("selection, prefix", [
    (Selection(depth=2), 2),
    (Selection(indices=(0,)), 1),
    (Selection(regex=r"conv[12]\."), 2),
    (Selection(names=("conv2",)), None),
    (Selection(depth=1, regex=r"conv2\.0\."), None),  # a prefix plus part of the next block
])
def test_prefix_length(net, selection, prefix):
    assert resolve(net, selection).prefix_length(net) == prefix


def test_frozen_modules_are_those_whose_own_parameters_are_all_frozen(net):
    frozen = resolve(net, Selection(depth=1, regex=r"conv2\.1\."))
    assert set(frozen.frozen_modules(net)) == {"blocks.conv1.0", "blocks.conv1.1", "blocks.conv2.1"}
