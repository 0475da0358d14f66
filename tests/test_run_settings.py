"""`train.threads` and `train.checkpoint_every_s`: how trials run, checked like every other key."""

import pytest

from sweep.cli import load_config
from sweep.config import run_settings, without_run_settings
from sweep.errors import ConfigError
from sweep.trial import CHECKPOINT_EVERY_S, RunSettings


def test_defaults_and_given_values():
    assert run_settings({"epochs": 8}) == RunSettings(threads=None, checkpoint_every_s=CHECKPOINT_EVERY_S)
    assert run_settings({"threads": 3, "checkpoint_every_s": 0}) == RunSettings(threads=3, checkpoint_every_s=0.0)


@pytest.mark.parametrize("override, message", [
    ("train.threads=0", "train.threads=0 is not valid: it must be greater than or equal to 1"),
    ("train.threads=1.5", "train.threads=1.5 is not valid: it must be a valid integer"),
    ("train.checkpoint_every_s=-1", "train.checkpoint_every_s=-1 is not valid: it must be greater than or equal to 0"),
    ("train.checkpoint_every_s=often", "train.checkpoint_every_s=often is not valid: it must be a valid number"),
    ("train.checkpoint_every_s=true", "train.checkpoint_every_s=true is not valid: it must be a valid number"),
    ("train.checkpoint_every_s=nan", "train.checkpoint_every_s=nan is not valid: it must be a finite number"),
])
def test_bad_values_say_what_to_do(tmp_path, override, message):
    with pytest.raises(ConfigError) as refused:
        load_config("config", [override], tmp_path)
    assert str(refused.value) == message


def test_run_settings_are_not_part_of_a_trials_config():
    cfg = {"train": {"epochs": 8, "threads": 2, "checkpoint_every_s": 5}, "seed": 0}
    assert without_run_settings(cfg) == {"train": {"epochs": 8}, "seed": 0}
