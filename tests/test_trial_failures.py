"""What fails a trial, and what only makes it start over: a diverged loss, an unreadable checkpoint."""

import pytest

from sweep.errors import TrialDiverged
from sweep.optim import OptimizerSpec
from sweep.selection import Selection
from sweep.train import DIVERGED_FACTOR
from sweep.trial import RunSettings, TrialSpec, run_trial

EVERY_EPOCH = RunSettings(checkpoint_every_s=0)


def spec(**fields) -> TrialSpec:
    return TrialSpec(**{"strategy": "full_finetune", "selection": Selection(depth=0), "epochs": 2, "device": "cpu",
                        **fields})


def test_a_loss_that_explodes_but_stays_finite_fails_the_trial_as_diverged(digits_task, digits_model_def):
    with pytest.raises(TrialDiverged, match=f"training loss rose from .* \\(over {DIVERGED_FACTOR:g}x\\)"):
        run_trial(spec(optimizer=OptimizerSpec(lr=1e6)), digits_task, digits_model_def)


def test_a_loss_that_goes_nan_fails_the_trial_as_diverged(digits_task, digits_model_def):
    with pytest.raises(TrialDiverged, match="training loss became nan"):
        run_trial(spec(strategy="zero_lr", selection=Selection(depth=2), epochs=1, optimizer=OptimizerSpec(lr=1e6)),
                  digits_task, digits_model_def)


def test_an_unreadable_checkpoint_is_moved_aside_and_the_trial_starts_over(tmp_path, digits_task, digits_model_def,
                                                                          capsys):
    expected = run_trial(spec(), digits_task, digits_model_def)
    checkpoint = tmp_path / "checkpoint.pt"
    checkpoint.write_bytes(b"PK\x03\x04 a zip archive cut short")  # what a full disk leaves of a checkpoint

    result = run_trial(spec(), digits_task, digits_model_def, checkpoint_dir=tmp_path, settings=EVERY_EPOCH)
    assert (result.history, result.test_accuracy) == (expected.history, expected.test_accuracy)  # from scratch
    (warning,) = capsys.readouterr().err.splitlines()
    assert warning.startswith(f"warning: checkpoint {checkpoint} cannot be read")
    (aside,) = tmp_path.glob("checkpoint.pt.unreadable-*")
    assert aside.read_bytes() == b"PK\x03\x04 a zip archive cut short" and aside.name in warning
