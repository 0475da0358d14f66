"""Workers share one Optuna study on PostgreSQL and one MLflow store, as on a cluster."""

import optuna
from mlflow.tracking import MlflowClient

from sweep_commands import finish, start_command


def test_workers_started_together_on_fresh_databases_fill_one_study_without_overrunning_it(postgres, tmp_path,
                                                                                         cache_dir):
    (tmp_path / "cache").symlink_to(cache_dir, target_is_directory=True)
    n_trials, n_workers = 6, 4
    args = ["+strategy=requires_grad", f"search.n_trials={n_trials}", "train.epochs=2", "experiment=shared",
            # Quoted: Hydra's override grammar would read the `=` of `?host=` as syntax.
            f"search.storage='{postgres['optuna']}'", f"tracking.uri='{postgres['mlflow']}'", f"results_dir={tmp_path}"]
    elsewhere = tmp_path / "elsewhere"  # where the commands run: nothing of the sweep's belongs there
    elsewhere.mkdir()
    # Started together, as on a cluster, on databases no one has created the schemas of: every worker tries.
    workers = [start_command("sweep.run", *args, cwd=elsewhere) for _ in range(n_workers)]
    for done in map(finish, workers):
        assert done.returncode == 0, done.stderr

    name = "shared.requires_grad.head_backbone"
    trials = optuna.load_study(study_name=name, storage=postgres["optuna"]).trials
    # A worker may finish the trial it was running when the study filled.
    assert n_trials <= len(trials) <= n_trials + n_workers - 1
    assert {t.state for t in trials} <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    assert len({t.user_attrs["worker"] for t in trials}) >= 2, "the workers should have shared the trials"
    client = MlflowClient(postgres["mlflow"])
    experiment = client.get_experiment_by_name("shared")
    runs = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'trial'")
    assert sorted(r.info.run_id for r in runs) == sorted(t.user_attrs["mlflow_run_id"] for t in trials)
    parents = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'study'")
    assert len(parents) == 1 and {r.data.tags["mlflow.parentRunId"] for r in runs} == {parents[0].info.run_id}
    # Artifacts (the parent run's config.yaml) under results_dir, not in MLflow's default ./mlruns where it ran.
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
    assert list(elsewhere.iterdir()) == []
    assert list((tmp_path / "mlartifacts").rglob("config.yaml"))
