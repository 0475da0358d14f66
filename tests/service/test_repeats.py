"""Confirmation runs through the real command: paired seeds, top-ups that never duplicate, resumed after a kill."""

import collections
import signal

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from sweep.faults import VARIABLE
from sweep.launch import TIMING_STAGE
from sweep.report.records import Sources, load
from sweep_commands import DEFAULT_STRATEGIES, sweep_command
from test_run import load_studies, own_sweep

FIXED = ["lr_split=uniform", "optimizer.lr=0.05", "train.epochs=1"]  # nothing left to search: repeats only


def repeat_runs(client: MlflowClient, experiment: str) -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], "tags.`sweep.role` = 'repeat'")


def parent_runs(client: MlflowClient, experiment: str) -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], "tags.`sweep.role` = 'study'")


def seeds_by_strategy(runs) -> dict[str, list[str]]:
    found = collections.defaultdict(list)
    for run in runs:
        assert run.data.tags["sweep.state"] == "finished" and run.info.status == "FINISHED"
        found[run.data.tags["strategy"]].append(run.data.tags["sweep.seed"])
    return {strategy: sorted(seeds) for strategy, seeds in found.items()}


def test_every_strategy_repeats_with_the_same_seeds_and_a_rerun_tops_up_without_duplicates(tmp_path, cache_dir):
    done, studies, client = own_sweep(tmp_path, cache_dir, *FIXED, "search.repeats=1", "experiment=paired")
    assert all(not study.trials for study in studies.values()), "nothing to search: the search is skipped"
    seeds = seeds_by_strategy(repeat_runs(client, "paired"))
    assert seeds == {strategy: ["1000"] for strategy in DEFAULT_STRATEGIES}
    for run in repeat_runs(client, "paired"):
        parent = client.get_run(run.data.tags["mlflow.parentRunId"])
        assert parent.data.tags["sweep.role"] == "study"
        assert parent.data.tags["optuna.study_name"] == run.data.tags["optuna.study_name"]
        assert run.data.tags["sweep.chosen_trial"] == "none" and run.data.params["optimizer.lr"] == "0.05"

    more = sweep_command("sweep.run", *FIXED, "search.repeats=2", "experiment=paired", f"results_dir={tmp_path}")
    assert more.returncode == 0, more.stderr
    timed = {run.info.run_id: run.data.tags["timing.session"] for run in parent_runs(client, "paired")}
    again = sweep_command("sweep.run", *FIXED, "search.repeats=2", "experiment=paired", f"results_dir={tmp_path}")
    assert again.returncode == 0, again.stderr
    assert "repeats" not in again.stderr, "a rerun with nothing missing runs no repeat"
    assert [c.stdout.count(f"{TIMING_STAGE} ...") for c in (done, more, again)] == [1, 1, 0], \
        "timed once by each command that ran repeats, and not again by one that ran nothing"
    assert {run.info.run_id: run.data.tags["timing.session"] for run in parent_runs(client, "paired")} == timed
    seeds = seeds_by_strategy(repeat_runs(client, "paired"))
    assert seeds == {strategy: ["1000", "1001"] for strategy in DEFAULT_STRATEGIES}
    assert all(not study.trials for study in load_studies(tmp_path / "optuna.journal").values())

    # Two drivers whose claims raced (one's clock behind) both ran repeat 0: the report counts it once, the
    # earliest-stamped run, as the claim would have picked.
    original = next(run for run in repeat_runs(client, "paired") if run.data.tags["sweep.repeat"] == "0")
    twin = client.create_run(original.info.experiment_id, start_time=original.info.start_time - 5000,
                             tags=original.data.tags).info.run_id
    client.log_batch(twin, metrics=[Metric(key, value, 0, 0) for key, value in original.data.metrics.items()])
    records = load(Sources(f"sqlite:///{tmp_path / 'mlflow.db'}", None, tmp_path), ["paired"])
    counted = sorted((s.strategy, r.number, r.run_id) for s in records.studies for r in s.repeats)
    assert [c[:2] for c in counted] == sorted((strategy, r) for strategy in DEFAULT_STRATEGIES for r in (0, 1))
    assert twin in {c[2] for c in counted} and original.info.run_id not in {c[2] for c in counted}


def test_a_repeat_killed_mid_run_resumes_as_the_same_run(tmp_path, cache_dir):
    (tmp_path / "cache").symlink_to(cache_dir, target_is_directory=True)
    args = ["+strategy=requires_grad", "lr_split=uniform", "optimizer.lr=0.05", "train.epochs=3", "search.repeats=1",
            "timing.rounds=0", "train.checkpoint_every_s=0", "experiment=killed", f"results_dir={tmp_path}"]
    killed = sweep_command("sweep.run", *args, env={VARIABLE: "checkpoint-saved"})  # after the repeat's first epoch
    assert killed.returncode == -signal.SIGKILL
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (interrupted,) = repeat_runs(client, "killed")
    assert "sweep.state" not in interrupted.data.tags

    resumed = sweep_command("sweep.run", *args)
    assert resumed.returncode == 0, resumed.stderr
    (run,) = repeat_runs(client, "killed")
    assert run.info.run_id == interrupted.info.run_id
    assert run.data.tags["sweep.state"] == "finished" and run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
    assert not (tmp_path / "checkpoints" / "killed.requires_grad.uniform" / "repeat-0-of-trial-none" /
                "checkpoint.pt").exists()
