"""What MLflow holds after a real sweep: parent runs that summarise their study, trials MLflow can tell apart."""

import json
from pathlib import Path
import mlflow.pytorch
import torch
import yaml
from mlflow.tracking import MlflowClient

from test_run import load_studies, own_sweep

SUMMARY_METRICS = {"trials.finished", "trials.pruned", "trials.failed", "trials.running", "best.val_accuracy",
                   "best.test_accuracy", "median.val_accuracy", "median.test_accuracy", "median.step_time_ms"}


def runs_of(client: MlflowClient, experiment: str, condition: str):
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], condition, max_results=1000)


def test_parent_runs_summarise_their_study(tiny_sweep):
    client = MlflowClient(tiny_sweep.tracking_uri)
    assert client.get_experiment_by_name("tiny").tags["mlflow.experimentKind"] == "custom_model_development"
    studies = load_studies(tiny_sweep.journal)
    for parent in runs_of(client, "tiny", "tags.`sweep.role` = 'study'"):
        strategy, metrics = parent.data.params["strategy"], parent.data.metrics
        study = studies[parent.data.tags["optuna.study_name"]]
        assert SUMMARY_METRICS <= metrics.keys()
        assert metrics["trials.finished"] == 2 and metrics["trials.pruned"] == metrics["trials.failed"] == 0
        assert metrics["best.val_accuracy"] == study.best_value
        skips_frozen_backward = strategy in ("requires_grad", "no_grad_forward")  # FLOPs are counted exactly
        assert (metrics["flops_vs_full_finetune"] < 1) if skips_frozen_backward else (
            metrics["flops_vs_full_finetune"] == 1)
        assert parent.data.params["train.epochs"] == "2" and "optimizer.lr" not in parent.data.params  # searched
        assert parent.data.tags["best.trial"] == str(study.best_trial.number)
        assert float(parent.data.tags["best.optimizer.lr"]) == study.best_trial.params["optimizer.lr"]
        assert parent.data.tags["verdict.frozen_weights"] == ("nothing frozen" if strategy == "full_finetune"
                                                               else "stayed frozen")
        assert {"mlflow.user", "mlflow.source.name"} <= parent.data.tags.keys()
        dataset = parent.inputs.dataset_inputs[0].dataset
        assert dataset.name == "digits" and json.loads(dataset.profile) == {"train": 537, "val": 179, "test": 180,
                                                                            "classes": 5}
        config = yaml.safe_load(Path(client.download_artifacts(parent.info.run_id, "config.yaml")).read_text())
        assert config["experiment"] == "tiny" and config["train"]["epochs"] == 2


def test_a_query_by_strategy_param_finds_that_strategy_s_trials(tiny_sweep):
    client = MlflowClient(tiny_sweep.tracking_uri)
    parents = runs_of(client, "tiny", "tags.`sweep.role` = 'study'")
    (digest_of_parents,) = {p.inputs.dataset_inputs[0].dataset.digest for p in parents}
    strategies = {p.data.params["strategy"] for p in parents}
    assert {"requires_grad", "zero_lr", "full_finetune"} <= strategies
    for strategy in strategies:
        trials = runs_of(client, "tiny", f"params.strategy = '{strategy}' and tags.`sweep.role` = 'trial'")
        assert len(trials) == 2
        for run in trials:
            assert run.data.tags["strategy"] == strategy
            for key in ("lr_split", "freeze.selection"):
                assert run.data.params[key] == run.data.tags[key]
            assert run.data.params["freeze.selection"] == ("nothing" if strategy == "full_finetune" else "depth=2")
            assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [digest_of_parents]


def test_finished_trials_leave_no_checkpoint_folders(tiny_sweep):
    assert not (tiny_sweep.results_dir / "checkpoints").exists()


def test_tracking_log_model_best_logs_the_best_model_of_each_strategy(tmp_path, cache_dir):
    _, studies, client = own_sweep(tmp_path, cache_dir, "tracking.log_model=best", "+strategy=requires_grad",
                                   "search.n_trials=2", "train.epochs=1", "experiment=models")
    study = studies["models.requires_grad.head_backbone"]
    (parent,) = runs_of(client, "models", "tags.`sweep.role` = 'study'")
    best_run = study.best_trial.user_attrs["mlflow_run_id"]
    (model,) = client.search_logged_models([parent.info.experiment_id], f"source_run_id = '{best_run}'")
    assert parent.data.tags["best.model_uri"] == model.model_uri
    net = mlflow.pytorch.load_model(model.artifact_location)  # its files, without a tracking URI to look it up
    images = torch.stack([torch.zeros(1, 8, 8), torch.ones(1, 8, 8)])
    assert net.eval()(images).shape == (2, 5)  # the five target digits
