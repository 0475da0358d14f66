"""search.grid: parsed exactly as users write it, its points and studies, and what its axis does to FLOPs."""

import pytest
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sweep.cli import CONF_DIR
from sweep.errors import ConfigError
from sweep.grid import Grid, GridPoint
from sweep.schema import check_config
from sweep.measure import flops_per_step
from sweep.selection import Selection
from sweep.strategies import MECHANISMS
from sweep.trial import TrialSpec, set_up

FREEZES = {name: MECHANISMS.get(name).freezes for name in MECHANISMS.names()}


def composed(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="grid-test"):
        return OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)


def test_the_depth_grid_as_written_gives_a_study_per_freezing_strategy_and_point_and_one_baseline():
    cfg = composed("search.grid={freeze.depth:[0,1,2,3,4]}")
    grid = Grid.from_config(cfg["search"]["grid"])
    assert [p.label for p in grid.points] == [f"freeze.depth={d}" for d in range(5)]
    assert grid.freezing_nothing(cfg) == [GridPoint((("freeze.depth", 0),))]
    units = grid.units(MECHANISMS.names(), cfg, FREEZES.get, "full_finetune")
    freezing = [name for name, freezes in FREEZES.items() if freezes]
    assert units == [(s, GridPoint((("freeze.depth", d),))) for s in freezing for d in (1, 2, 3, 4)] + [
        ("full_finetune", GridPoint())]


def test_other_freeze_keys_cross_and_keep_their_types():
    cfg = composed("search.grid={freeze.names:[[conv1],[conv1,conv2]],freeze.norm_policy:[train,eval]}")
    grid = Grid.from_config(cfg["search"]["grid"])
    assert [p.short for p in grid.points] == ["names=[conv1],norm_policy=train", "names=[conv1],norm_policy=eval",
                                              "names=[conv1,conv2],norm_policy=train",
                                              "names=[conv1,conv2],norm_policy=eval"]
    assert grid.points[3].apply(cfg)["freeze"] == {**cfg["freeze"], "names": ["conv1", "conv2"], "norm_policy": "eval"}
    assert Grid.from_config(None).points == [GridPoint()] and not Grid.from_config(None)


@pytest.mark.parametrize("grid, message", [
    ("{train.epochs:[1,2]}", "search.grid: 'train.epochs' is not a freeze key a grid can vary; choose among: "
                             "freeze.depth, freeze.names, freeze.indices, freeze.regex, freeze.norm_policy"),
    ("{freeze.depth:[1,two]}", "search.grid: point freeze.depth=two is not valid: it must be a valid integer"),
    ("{freeze.depth:[true]}", "search.grid: point freeze.depth=true is not valid"),
    ("{freeze.depth:[-1]}", "search.grid: point freeze.depth=-1 is not valid: it must be greater than or equal to 0"),
    ("{freeze.names:[[1]]}", "search.grid: point freeze.names"),
    ("{freeze.norm_policy:[frozen]}", "search.grid: point freeze.norm_policy=frozen is not valid: it must be "
                                      "'train' or 'eval'"),
    ("{freeze.depth:3}", "search.grid.freeze.depth=3 is not valid: it must be a valid list"),
    ("{freeze.depth:[]}", "search.grid.freeze.depth is not valid"),
    ("[0,1]", "search.grid is not valid"),
])
def test_a_bad_grid_names_the_key_and_the_point(grid, message):
    with pytest.raises(ConfigError) as raised:
        check_config(composed(f"search.grid={grid}"), "config")
    assert message in str(raised.value)


def test_freezing_three_blocks_costs_requires_grad_and_no_grad_forward_the_same_flops_below_full_finetune(
        digits_model_def, digits_task):
    """Exact counts (FlopCounterMode); the sweep's side-by-side timing (sweep.timing) shows the ordering in time."""
    batch = digits_task.train[:32]
    flops = {}
    for strategy in ("requires_grad", "no_grad_forward", "full_finetune"):
        setup = set_up(TrialSpec(strategy, Selection(depth=3), device="cpu"), digits_task, digits_model_def)
        flops[strategy] = flops_per_step(setup.net, *batch, F.cross_entropy)
    assert flops["requires_grad"] == flops["no_grad_forward"] < flops["full_finetune"]
