"""`train.threads` and `train.checkpoint_every_s`: how trials run, checked like every other key."""

import pytest

from sweep.config import run_settings, without_run_settings
from sweep.errors import ConfigError
from sweep.trial import CHECKPOINT_EVERY_S, RunSettings


def test_defaults_and_given_values():
    assert run_settings({"epochs": 8}) == RunSettings(threads=None, checkpoint_every_s=CHECKPOINT_EVERY_S)
    assert run_settings({"threads": 3, "checkpoint_every_s": 0}) == RunSettings(threads=3, checkpoint_every_s=0.0)


@pytest.mark.parametrize("train, message", [
    ({"threads": 0}, "train.threads=0 must be >= 1"),
    ({"threads": 1.5}, "train.threads=1.5 must be a whole number"),
    ({"checkpoint_every_s": -1}, "train.checkpoint_every_s=-1 must be a number of seconds >= 0"),
    ({"checkpoint_every_s": "often"}, "train.checkpoint_every_s='often' must be a number of seconds >= 0"),
    ({"checkpoint_every_s": True}, "train.checkpoint_every_s=True must be a number of seconds >= 0"),
    ({"checkpoint_every_s": float("nan")}, "train.checkpoint_every_s=nan must be a number of seconds >= 0"),
])
def test_bad_values_say_what_to_do(train, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        run_settings(train)


def test_run_settings_are_not_part_of_a_trials_config():
    cfg = {"train": {"epochs": 8, "threads": 2, "checkpoint_every_s": 5}, "seed": 0}
    assert without_run_settings(cfg) == {"train": {"epochs": 8}, "seed": 0}
