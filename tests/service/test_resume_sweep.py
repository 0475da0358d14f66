"""A sweep killed mid-trial finishes that trial from its checkpoint when the same command runs again."""

import os
import signal
import subprocess
import sys
import time

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep_commands import REPO, sweep_command

ARGS = ["+strategy=requires_grad", "search.n_trials=1", "train.epochs=8", "experiment=resume",
        "train.checkpoint_every_s=0"]  # a checkpoint after every epoch: the kill comes after the first one
STUDY = "resume.requires_grad.head_backbone"


def only_trial(results_dir) -> optuna.trial.FrozenTrial:
    storage = JournalStorage(JournalFileBackend(str(results_dir / "optuna.journal")))
    (trial,) = optuna.load_study(study_name=STUDY, storage=storage).trials
    return trial


def test_killed_trial_resumes_as_the_same_trial_and_run_with_the_uninterrupted_result(tmp_path, cache_dir):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    for results_dir in (killed, clean):
        results_dir.mkdir()
        (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)

    checkpoint = killed / "checkpoints" / STUDY / "trial-0" / "checkpoint.pt"
    worker = subprocess.Popen([sys.executable, "-m", "sweep.run", *ARGS, f"results_dir={killed}"], cwd=REPO,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert worker.poll() is None, f"the sweep ended before it could be killed: {worker.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    worker.stderr.close()
    interrupted = only_trial(killed)
    assert interrupted.state == TrialState.RUNNING

    resumed = sweep_command("sweep.run", *ARGS, f"results_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = sweep_command("sweep.run", *ARGS, f"results_dir={clean}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    trial, reference = only_trial(killed), only_trial(clean)
    assert trial.state == TrialState.COMPLETE and trial.number == interrupted.number
    assert trial.user_attrs["mlflow_run_id"] == interrupted.user_attrs["mlflow_run_id"]
    assert trial.params == reference.params
    assert trial.values == reference.values
    assert trial.user_attrs["test_accuracy"] == reference.user_attrs["test_accuracy"]
    assert not checkpoint.exists()

    client = MlflowClient(f"sqlite:///{killed / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("resume").experiment_id],
                              "tags.`sweep.role` = 'trial'")
    assert [r.info.run_id for r in runs] == [trial.user_attrs["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"
    history = client.get_metric_history(runs[0].info.run_id, "val_accuracy")
    assert sorted({m.step for m in history}) == list(range(1, 9))
