"""A sweep killed mid-trial, between two checkpoints, finishes that trial when the same command runs again.

The trial checkpoints at the end of its first phase (epoch 2) and is killed after
it has logged epoch 4 (SWEEP_FAULT, sweep/faults.py): the rerun continues it from
epoch 2 as the same Optuna trial and MLflow run, repeats epochs 3 and 4 without
logging them again, and ends with the result of a sweep never interrupted.
"""

import optuna
import torch
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep.faults import VARIABLE
from sweep_commands import sweep_command

ARGS = ["+strategy=requires_grad", "search.n_trials=1", "search.repeats=1", "experiment=resume",
        "phases=[{epochs:2,freeze:{depth:3}},{epochs:6,freeze:{depth:2}}]",  # default checkpoint_every_s: 30
        "tracking.write_every_s=0"]  # every epoch is written as it ends, so epochs 3 and 4 are before the kill
STUDY = "resume.requires_grad.head_backbone"
KILLED_AFTER = 4


def only_trial(results_dir) -> optuna.trial.FrozenTrial:
    storage = JournalStorage(JournalFileBackend(str(results_dir / "optuna.journal")))
    (trial,) = optuna.load_study(study_name=STUDY, storage=storage).trials
    return trial


def test_a_trial_killed_between_checkpoints_resumes_as_the_same_trial_and_run_with_the_uninterrupted_result(
        tmp_path, cache_dir):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for results_dir in (killed, clean):
        results_dir.mkdir()
        (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)

    died = sweep_command("sweep.run", *ARGS, f"results_dir={killed}", env={VARIABLE: f"epoch-{KILLED_AFTER}-reported"})
    assert died.returncode == -9, died.stderr
    checkpoint = killed / "checkpoints" / STUDY / "trial-0" / "checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["phase"], len(saved["progress"]["history"])) == (0, 2)  # the end of phase 1, not epoch 3 or 4
    interrupted = only_trial(killed)
    assert interrupted.state == TrialState.RUNNING

    resumed = sweep_command("sweep.run", *ARGS, f"results_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = sweep_command("sweep.run", *ARGS, f"results_dir={clean}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    trial, reference = only_trial(killed), only_trial(clean)
    assert trial.state == TrialState.COMPLETE and trial.number == interrupted.number
    assert trial.params == reference.params
    assert trial.values == reference.values
    assert trial.user_attrs["test_accuracy"] == reference.user_attrs["test_accuracy"]
    assert not checkpoint.exists()

    runs = {}
    for results_dir in (killed, clean):
        client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
        (run,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                                    "tags.`sweep.role` = 'trial'")
        assert run.info.status == "FINISHED"
        history = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
        runs[results_dir] = run.info.run_id, [(m.step, m.value) for m in history]
    (run_id, history), (_, reference_history) = runs[killed], runs[clean]
    assert run_id == trial.user_attrs["mlflow_run_id"]
    assert [step for step, _ in history] == list(range(1, 9))  # epochs 3 and 4 ran twice, were logged once
    assert history == reference_history
