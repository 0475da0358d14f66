"""Kills at the moments between two writes (sweep/faults.py), each followed by the same command again.

One sweep is killed at every point in turn, each run resuming what the run
before it left, with its checkpoint cut short on the way; a last run finds
nothing left to do. What each kill left is recorded, and at the end: no RUNNING
trial or MLflow run, exactly one run per trial, no metric step logged twice,
and every trial has the parameters and results of the same study in the
session's uninterrupted sweep (`tiny_sweep`).
"""

import signal
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from sweep.faults import VARIABLE
from sweep.stores import open_journal
from sweep_commands import TINY_BUDGET, Completed, sweep_command

ARGS = ["+strategy=requires_grad", *TINY_BUDGET]
STUDY = "tiny.requires_grad.head_backbone"
POINTS = ["trial-created", "run-created", "checkpoint-saved", "trial-logged", "trials-done"]
CHECKPOINT = Path("checkpoints", STUDY, "trial-0", "checkpoint.pt")


@dataclass
class Records:
    """What the stores hold after one command."""

    command: Completed
    trials: list[FrozenTrial]
    runs: list[Run]
    repeated_steps: dict[str, list[int]]  # run id/metric -> steps logged more than once

    @classmethod
    def read(cls, results_dir: Path, command: Completed) -> "Records":
        study = optuna.load_study(study_name=STUDY, storage=open_journal(results_dir / "optuna.journal"))
        client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
        experiment = client.get_experiment_by_name("tiny")
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        repeated = {}
        for run in runs:
            for key in run.data.metrics:
                steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
                if len(steps) != len(set(steps)):
                    repeated[f"{run.info.run_id}/{key}"] = steps
        return cls(command, study.trials, runs, repeated)

    def role(self, role: str) -> list[Run]:
        return [r for r in self.runs if r.data.tags.get("sweep.role") == role]


def run_sweep(results_dir: Path, fault: str | None = None) -> Records:
    done = sweep_command("sweep.run", *ARGS, f"results_dir={results_dir}", env={VARIABLE: fault} if fault else None)
    assert done.returncode == (-signal.SIGKILL if fault else 0), (fault, done.stderr)
    return Records.read(results_dir, done)


@dataclass
class KilledSweep:
    results_dir: Path
    after: dict[str, Records]  # fault point (or "last": the run that found nothing to do) -> what it left

    def __getitem__(self, point: str) -> Records:
        return self.after[point]


@pytest.fixture(scope="module")
def killed(tmp_path_factory, cache_dir) -> KilledSweep:
    results_dir = tmp_path_factory.mktemp("killed")
    (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)
    after = {}
    for point in POINTS:
        after[point] = run_sweep(results_dir, point)
        if point == "checkpoint-saved":
            checkpoint = (results_dir / CHECKPOINT).read_bytes()
            (results_dir / CHECKPOINT).write_bytes(checkpoint[: len(checkpoint) // 2])  # a disk that filled up
    after["last"] = run_sweep(results_dir)
    return KilledSweep(results_dir, after)


def test_a_kill_right_after_creating_a_trial_leaves_a_trial_that_names_its_worker_and_is_resumed(killed):
    (orphan,) = killed["trial-created"].trials
    assert orphan.state == TrialState.RUNNING and "worker" in orphan.user_attrs
    assert [t.number for t in killed["run-created"].trials] == [0], "the next run resumes it, rather than adding one"
    assert killed["last"].trials[0].state == TrialState.COMPLETE


def test_a_kill_between_creating_a_run_and_linking_it_leaves_no_second_run(killed):
    (trial,), (run,) = killed["run-created"].trials, killed["run-created"].role("trial")
    assert "mlflow_run_id" not in trial.user_attrs and run.info.status == "RUNNING"
    (continued,) = killed["checkpoint-saved"].role("trial")  # the next attempt found that run, made no second
    assert continued.info.run_id == run.info.run_id and continued.data.params  # and described it
    last = killed["last"]
    assert sorted(r.info.run_id for r in last.role("trial")) == sorted(t.user_attrs["mlflow_run_id"]
                                                                       for t in last.trials)


def test_an_unreadable_checkpoint_is_reported_moved_aside_and_its_trial_starts_over(killed):
    warnings = [line for line in killed["trial-logged"].command.stderr.replace("\r", "\n").splitlines()
                if line.startswith("warning: ")]
    assert len(warnings) == 1 and f"checkpoint {killed.results_dir / CHECKPOINT} cannot be read" in warnings[0]
    (aside,) = (killed.results_dir / CHECKPOINT).parent.glob("checkpoint.pt.unreadable-*")
    assert aside.name in warnings[0] and aside.stat().st_size > 0  # kept, not deleted


def test_resumed_and_restarted_trials_log_no_metric_step_twice(killed):
    for records in killed.after.values():
        assert records.repeated_steps == {}, records.repeated_steps
    (trial_run,) = [r for r in killed["last"].role("trial") if r.data.tags["optuna.trial_number"] == "0"]
    assert {"val_accuracy", "train_loss", "test_accuracy"} <= set(trial_run.data.metrics)


def test_a_rerun_that_finds_nothing_to_do_ends_the_parent_run(killed):
    (parent,) = killed["trials-done"].role("study")
    assert parent.info.status == "RUNNING"
    assert [r.info.status for r in killed["last"].role("study")] == ["FINISHED"]


def test_after_the_kills_nothing_is_left_running(killed):
    last = killed["last"]
    assert [t.state for t in last.trials] == [TrialState.COMPLETE] * 2
    assert {r.info.status for r in last.runs} == {"FINISHED"}


def test_trials_get_the_parameters_and_results_of_an_uninterrupted_sweep(killed, tiny_sweep):
    uninterrupted = optuna.load_study(study_name=STUDY, storage=open_journal(tiny_sweep.journal)).trials
    for trial, reference in zip(killed["last"].trials, uninterrupted, strict=True):
        assert trial.number == reference.number
        assert trial.params == reference.params, "pairing: trial i has the same parameters however interrupted"
        assert trial.values == reference.values
        assert trial.user_attrs["test_accuracy"] == reference.user_attrs["test_accuracy"]
