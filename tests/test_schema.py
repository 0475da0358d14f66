"""The typed config layer: every key in conf/ is declared in sweep/schema.py, paths cannot leave their root, and
printed overrides read back as written."""

from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from sweep.cli import CONF_DIR, compose_config, load_config, override
from sweep.errors import ConfigError
from sweep.paths import inside
from sweep.schema import check_config, dimensions

GROUP_CHOICES = [(group.name, choice.stem) for group in sorted(CONF_DIR.iterdir()) if group.is_dir()
                 for choice in sorted(group.glob("*.yaml"))]


@pytest.mark.parametrize("group, choice", GROUP_CHOICES, ids=[f"{g}={c}" for g, c in GROUP_CHOICES])
def test_every_choice_of_every_group_passes_the_schema(group, choice):
    """A key added to a yaml file but not to the schema fails here (as an unknown key)."""
    prefix = "+" if group == "strategy" else ""
    check_config(compose_config("config", [f"{prefix}{group.replace('/', '.')}={choice}"]), "config")


def test_the_report_config_passes_its_schema():
    check_config(compose_config("report", []), "report")


def test_the_searched_space_is_nested_by_config_path():
    cfg = load_config("config", ["search.space.optimizer.lr.high=0.5"], Path.cwd())
    space = dimensions(cfg["search"]["space"])
    assert set(space) == {"optimizer.lr", "lr_split.backbone_ratio", "lr_split.decay"}
    assert space["optimizer.lr"]["high"] == 0.5


def test_a_wrong_type_is_refused_where_a_lax_parser_would_convert_it():
    cfg = compose_config("config", [])
    cfg["optimizer"]["lr"] = "0.1"  # a quoted number stays a string in Hydra: refused, not read as 0.1
    with pytest.raises(ConfigError, match=r"^optimizer.lr=0.1 is not valid: it must be a valid number$"):
        check_config(cfg, "config")


@pytest.mark.parametrize("parts", [("..", "elsewhere"), ("/etc",), ("a", "..", "..", "b"), ("cache", "/abs")])
def test_a_path_that_would_leave_its_root_is_refused(tmp_path, parts):
    with pytest.raises(ConfigError, match="outside"):
        inside(tmp_path / "results", *parts)


def test_a_path_inside_its_root_is_kept_as_written(tmp_path):
    assert inside(tmp_path, "checkpoints", "a..b", "trial-0") == tmp_path / "checkpoints" / "a..b" / "trial-0"


@pytest.mark.parametrize("value", ["plain", "/tmp/a b/c", "it's", "a\\b", "end\\", "x; touch F", "a,b", "2024", "true",
                                   "null", "a=b", "postgresql://u@/db?host=/var/run/postgresql"])
def test_a_printed_override_reads_back_as_the_same_string(value):
    assert OverridesParser.create().parse_override(override("results_dir", value)).value() == value
