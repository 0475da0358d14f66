"""`python -m sweep.run` end to end, through the real command in a subprocess."""

import re

import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep_commands import DEFAULT_STRATEGIES, TINY_BUDGET, Completed, sweep_command
from sweep.strategies import MECHANISMS

FREEZING = [name for name in DEFAULT_STRATEGIES if MECHANISMS.get(name).freezes]
TRIAL_TAGS = {"strategy", "lr_split", "device", "sweep.role", "optuna.study_name", "optuna.trial_number", "sweep.state"}
FINAL_METRICS = {"val_accuracy", "train_loss", "test_accuracy", "train_time_s", "wall_time_s", "step_time_ms",
                 "samples_per_s", "flops_per_step", "held_bytes", "peak_rss_bytes", "peak_rss_growth_bytes",
                 "trainable_params", "frozen_params", "torch_threads", "torch_interop_threads"}
DRIFT_METRICS = {"frozen_weight_drift", "frozen_buffer_drift"}


def load_studies(journal) -> dict[str, optuna.Study]:
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def own_sweep(tmp_path, cache_dir, *args: str) -> tuple[Completed, dict[str, optuna.Study], MlflowClient]:
    """A sweep into its own results_dir (sharing the pretrained weights) that must exit 0, and its records."""
    (tmp_path / "cache").symlink_to(cache_dir, target_is_directory=True)
    done = sweep_command("sweep.run", *args, f"results_dir={tmp_path}")
    assert done.returncode == 0, done.stderr
    return done, load_studies(tmp_path / "optuna.journal"), MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_every_strategy_gets_a_full_study_and_tracked_runs(tiny_sweep):
    studies = load_studies(tiny_sweep.journal)
    assert set(studies) == {f"tiny.{s}.head_backbone" for s in DEFAULT_STRATEGIES}
    client = MlflowClient(tiny_sweep.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    for name, study in studies.items():
        strategy = name.split(".")[1]
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
        parents = client.search_runs([experiment.experiment_id],
                                     f"tags.`sweep.role` = 'study' and tags.`optuna.study_name` = '{name}'")
        assert len(parents) == 1
        children = client.search_runs([experiment.experiment_id],
                                      f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}' "
                                      "and tags.`sweep.role` = 'trial'")
        assert len(children) == 2
        for run in children:
            assert TRIAL_TAGS <= run.data.tags.keys()
            assert run.data.tags["sweep.role"] == "trial" and run.data.tags["strategy"] == strategy
            expected = FINAL_METRICS | (DRIFT_METRICS if strategy != "full_finetune" else set())
            assert expected <= run.data.metrics.keys()
            assert run.data.params["optimizer.name"] == "sgd"
            history = client.get_metric_history(run.info.run_id, "val_accuracy")
            assert [m.step for m in history] == [1, 2]
            trial = study.trials[int(run.data.tags["optuna.trial_number"])]
            assert trial.user_attrs["mlflow_run_id"] == run.info.run_id
            assert trial.values[0] == run.data.metrics["val_accuracy"]


def test_paired_trials_of_freezing_mechanisms_agree_exactly(tiny_sweep):
    studies = load_studies(tiny_sweep.journal)
    for number in range(2):
        paired = [studies[f"tiny.{s}.head_backbone"].trials[number] for s in FREEZING]
        assert len({tuple(sorted(t.params.items())) for t in paired}) == 1, "paired trials must share hyperparameters"
        assert len({t.user_attrs["test_accuracy"] for t in paired}) == 1
        assert all(t.user_attrs["frozen_weight_drift"] == 0.0 for t in paired)


def test_running_again_adds_no_trials(tiny_sweep):
    before = {name: len(s.trials) for name, s in load_studies(tiny_sweep.journal).items()}
    again = sweep_command("sweep.run", *TINY_BUDGET, f"results_dir={tiny_sweep.results_dir}")
    assert again.returncode == 0, again.stderr
    assert {name: len(s.trials) for name, s in load_studies(tiny_sweep.journal).items()} == before
    client = MlflowClient(tiny_sweep.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    assert len(client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'study'")) == len(before)


def test_a_study_refuses_trials_of_a_different_fixed_configuration(tiny_sweep):
    before = {name: len(s.trials) for name, s in load_studies(tiny_sweep.journal).items()}
    changed = sweep_command("sweep.run", *TINY_BUDGET, "train.epochs=3", f"results_dir={tiny_sweep.results_dir}")
    assert changed.returncode == 2
    assert "already holds trials run with a different configuration (changed: train.epochs)" in changed.stderr
    assert "pass experiment=NEW_NAME" in changed.stderr
    assert {name: len(s.trials) for name, s in load_studies(tiny_sweep.journal).items()} == before


def test_the_answer_a_table_and_next_steps_are_printed_within_100_columns(tiny_sweep):
    out = tiny_sweep.first.stdout
    lines = out.splitlines()
    rule = next(line for line in lines if line.startswith("----"))  # under the table's header, as wide as the table
    assert len(rule) <= 100, "the table fits 100 columns"
    for strategy in DEFAULT_STRATEGIES:
        row = next(line for line in lines if line.startswith(f"{strategy} "))
        assert len(re.split(r"\s{2,}", row.strip())) == 8, row  # strategy, trials, 2 accuracies, step time, FLOPs,
        # and the two frozen verdicts: weights and norm statistics
        assert len(row) <= len(rule)
    answer = out[out.index("Answer for 'tiny', lr split 'head_backbone': "):out.index("Browse the runs:")].splitlines()
    for strategy in DEFAULT_STRATEGIES:
        assert any(line.startswith(f"{strategy} ") for line in answer), strategy
    assert max(len(line) for line in answer) <= 100
    assert "mlflow ui --backend-store-uri" in out
    assert "python -m sweep.report" in out


def test_diverged_trials_fail_and_are_replaced_until_max_failures_stops_the_study(tmp_path, cache_dir):
    """A loss that explodes but stays finite (lr 1e6 under full_finetune) once 'finished' at chance accuracy."""
    done, studies, client = own_sweep(tmp_path, cache_dir, "+strategy=full_finetune", "optimizer.lr=1e6",
                                      "search.n_trials=1", "search.max_failures=2", "train.epochs=2",
                                      "experiment=diverge")
    assert "Traceback" not in done.stderr  # own_sweep checked exit 0: the sweep goes on to the next strategy
    lines = done.stderr.replace("\r", "\n").splitlines()
    assert sum("failed: TrialDiverged: training loss rose from " in line for line in lines) == 2, done.stderr
    (stop,) = [line for line in lines if line.startswith("warning: ")]
    assert stop.startswith("warning: full_finetune: no more trials after 2 failed in this run "
                           "(search.max_failures=2); the study holds 0 of 1")
    trials = studies["diverge.full_finetune.head_backbone"].trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # the first failure was replaced, the second stopped it
    assert all(t.user_attrs["error"].startswith("TrialDiverged: training loss rose from") for t in trials)
    experiment = client.get_experiment_by_name("diverge")
    runs = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'trial'")
    assert sorted((r.info.status, r.data.tags["sweep.state"]) for r in runs) == [("FAILED", "failed")] * 2
    assert sorted(r.info.run_name for r in runs) == ["full_finetune-0 (failed)", "full_finetune-1 (failed)"]


def test_an_explicit_override_is_fixed_and_two_objectives_are_recorded(tmp_path, cache_dir):
    _, studies, client = own_sweep(tmp_path, cache_dir, "+strategy=requires_grad", "optimizer.lr=0.02",
                                   "search.multi_objective=true", "search.n_trials=2", "train.epochs=1",
                                   "experiment=pareto")
    study = studies["pareto.requires_grad.head_backbone"]
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        assert "optimizer.lr" not in trial.params and "lr_split.backbone_ratio" in trial.params
        assert trial.values == [trial.user_attrs["val_accuracy"], trial.user_attrs["train_time_s"]]
        params = client.get_run(trial.user_attrs["mlflow_run_id"]).data.params
        assert params["optimizer.lr"] == "0.02"
        assert float(params["lr_split.backbone_ratio"]) == trial.params["lr_split.backbone_ratio"]


def test_pruned_trials_are_pruned_in_optuna_and_tagged_in_mlflow(tmp_path, cache_dir):
    _, studies, client = own_sweep(tmp_path, cache_dir, "+strategy=zero_lr", "search/pruner=threshold",
                                   "search.pruner.lower=1.01", "search.n_trials=2", "train.epochs=3", "experiment=pruned")
    study = studies["pruned.zero_lr.head_backbone"]
    for trial in study.trials:  # no accuracy reaches 1.01: every trial is pruned after its first epoch
        assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["sweep.state"] == "pruned" and run.info.status == "FINISHED"
        assert run.info.run_name == f"zero_lr-{trial.number} (pruned)"  # what MLflow's runs table shows
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1]
