"""executor=ray on a real two-node Ray cluster that the tests start on loopback and always stop (ray_nodes.py),
so the fixture (and the node-loss test) can stop exactly one node's processes."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from ray_nodes import RAY_ENV, RayNode, start_node
from sweep_commands import REPO, Completed, free_port, sweep_command

DONE = (TrialState.COMPLETE, TrialState.PRUNED)
NODE, WORKER = "sweep.node", "sweep.worker"


@dataclass
class RayCluster:
    """A head and a worker node with one CPU each, on loopback; `worker` is replaced once it has been killed."""

    address: str
    env: dict[str, str]
    nodes: list[RayNode]  # every node started, the dead ones too: all are stopped at the end

    @property
    def worker(self) -> RayNode:
        if self.nodes[-1].process.poll() is not None:
            self.nodes.append(start_node(f"--address={self.address}", env=self.env))
        return self.nodes[-1]


@pytest.fixture(scope="module")
def ray_cluster():
    """The cluster, stopped whatever happens; a dead node is noticed within about two seconds."""
    env = {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1"}
    fast_failure_detection = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                              "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    nodes: list[RayNode] = []
    try:
        port = free_port()
        nodes.append(start_node("--head", f"--port={port}", "--include-dashboard=false",
                                env=env | fast_failure_detection))
        nodes.append(start_node(f"--address=127.0.0.1:{port}", env=env))
        yield RayCluster(f"127.0.0.1:{port}", env, nodes)
    finally:
        for node in reversed(nodes):
            node.stop()


def results_dir(tmp_path: Path, cache_dir: Path) -> Path:
    (tmp_path / "cache").symlink_to(cache_dir, target_is_directory=True)
    return tmp_path


def ray_args(cluster: RayCluster, results: Path, *args: str) -> list[str]:
    return ["executor=ray", f"executor.address={cluster.address}", f"results_dir={results}", *args]


def studies_in(results: Path) -> dict[str, optuna.Study]:
    storage = JournalStorage(JournalFileBackend(str(results / "optuna.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def trial_runs(client: MlflowClient, experiment: str, extra: str = "") -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], "tags.`sweep.role` = 'trial'" + extra)


def test_two_studies_run_their_exact_budget_across_both_nodes(ray_cluster, tmp_path, cache_dir):
    results = results_dir(tmp_path, cache_dir)
    # No executor.max_concurrent: as many trials at once as the cluster's CPUs hold, one each.
    done = sweep_command("sweep.run", "-m", *ray_args(ray_cluster, results, "+strategy=requires_grad,zero_lr",
                                                      "search.n_trials=4", "train.epochs=2", "experiment=spread"),
                         env=RAY_ENV)
    assert done.returncode == 0, done.stderr
    rows = [line.split()[0] for line in done.stdout.splitlines() if line.startswith(("requires_grad ", "zero_lr "))]
    # Each job prints its study's row, then the experiment's answer table (the second job's holds both strategies).
    assert rows[0] == "requires_grad" and rows[-1] == "zero_lr" and set(rows) == {"requires_grad", "zero_lr"}, \
        "each job's end-of-run tables, printed by the driver"

    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = trial_runs(client, "spread")
    studies = studies_in(results)
    assert set(studies) == {"spread.requires_grad.head_backbone", "spread.zero_lr.head_backbone"}
    for name, study in studies.items():
        assert [t.state in DONE for t in study.trials] == [True] * 4, name
        mine = [r for r in runs if r.data.tags["optuna.study_name"] == name]
        assert sorted(int(r.data.tags["optuna.trial_number"]) for r in mine) == [0, 1, 2, 3]
        assert {r.info.run_id for r in mine} == {t.user_attrs["mlflow_run_id"] for t in study.trials}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({r.data.tags[NODE] for r in runs}) == 2, "both nodes ran trials"


@dataclass
class NodeLoss:
    """A sweep whose worker node was SIGKILLed while it trained a trial past its first checkpoint (one per epoch)."""

    done: Completed
    results: Path
    victim: Run  # the MLflow run of that trial, as it was just before the kill
    study: optuna.Study
    runs: dict[str, Run]  # every trial run, by id, after the sweep

    @property
    def trial(self) -> optuna.trial.FrozenTrial:
        return self.study.trials[int(self.victim.data.tags["optuna.trial_number"])]


def lose_the_worker_node(cluster: RayCluster, results: Path, experiment: str, *args: str) -> NodeLoss:
    worker = cluster.worker
    command = [sys.executable, "-m", "sweep.run", *ray_args(cluster, results, "+strategy=zero_lr", "train.epochs=12",
                                                            "train.checkpoint_every_s=0", "executor.max_concurrent=2",
                                                            f"experiment={experiment}", *args)]
    driver = subprocess.Popen(command, cwd=REPO, env={**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        victim = running_on(worker, results, experiment, driver)
        worker.kill()
        out, err = driver.communicate(timeout=600)
    finally:
        driver.kill()
    (study,) = studies_in(results).values()
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = {r.info.run_id: r for r in trial_runs(client, experiment)}
    return NodeLoss(Completed(driver.returncode, out, err), results, victim, study, runs)


def test_a_lost_worker_node_loses_nothing(ray_cluster, tmp_path, cache_dir):
    """Ray runs the trial again on the head node, from its checkpoint, as the same trial and run."""
    loss = lose_the_worker_node(ray_cluster, results_dir(tmp_path, cache_dir), "lost", "search.n_trials=3",
                                "search/pruner=none")
    assert loss.done.returncode == 0, loss.done.stderr
    assert [t.state for t in loss.study.trials] == [TrialState.COMPLETE] * 3
    assert {t.user_attrs["mlflow_run_id"] for t in loss.study.trials} == set(loss.runs)
    assert {r.info.status for r in loss.runs.values()} == {"FINISHED"}

    assert loss.trial.user_attrs["mlflow_run_id"] == loss.victim.info.run_id
    resumed = loss.runs[loss.victim.info.run_id]
    assert resumed.data.tags[NODE] != loss.victim.data.tags[NODE], "the retry ran on the head node"
    client = MlflowClient(f"sqlite:///{loss.results / 'mlflow.db'}")
    attempts = sorted(client.get_metric_history(resumed.info.run_id, "attempt_first_epoch"), key=lambda m: m.step)
    first, retry = (m.value for m in attempts)
    assert first == 1 and retry > 1, "the retry continued from the checkpoint instead of starting over"
    epochs = [m.step for m in client.get_metric_history(resumed.info.run_id, "val_accuracy")]
    assert sorted(epochs) == list(range(1, 13)), "every epoch logged once"
    assert not list((loss.results / "checkpoints").rglob("checkpoint.pt"))
    assert "Traceback" not in loss.done.stderr


def test_a_trial_whose_node_dies_more_often_than_it_may_be_retried_fails_alone(ray_cluster, tmp_path, cache_dir):
    loss = lose_the_worker_node(ray_cluster, results_dir(tmp_path, cache_dir), "failed", "search.n_trials=2",
                                "search/pruner=none", "executor.max_retries=0")
    assert loss.done.returncode == 0, loss.done.stderr
    assert loss.trial.state == TrialState.FAIL
    assert f"zero_lr: trial {loss.trial.number} failed: " in loss.done.stderr
    failed = loss.runs[loss.victim.info.run_id]
    assert failed.info.status == "FAILED" and failed.data.tags["sweep.state"] == "failed"
    others = [t for t in loss.study.trials if t.number != loss.trial.number]
    assert others and all(t.state == TrialState.COMPLETE for t in others), "the sweep went on"
    assert {r.info.status for r in loss.runs.values()} == {"FINISHED", "FAILED"}


def running_on(node: RayNode, results: Path, experiment: str, driver: subprocess.Popen) -> Run:
    """The MLflow run of a trial that `node` is training and has checkpointed at least once."""
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the sweep ended before a trial ran on the worker node: {driver.stderr.read()}"
        # A checkpoint first: by then the driver has created the MLflow database, which this client must not race.
        checkpoints = {path.parent.name for path in results.glob("checkpoints/*/trial-*/checkpoint.pt")}
        for run in trial_runs(client, experiment, " and attributes.status = 'RUNNING'") if checkpoints else ():
            worker = run.data.tags.get(WORKER)
            if (f"trial-{run.data.tags['optuna.trial_number']}" in checkpoints and worker
                    and node.holds(int(worker.rpartition(":")[2]))):
                return run
        time.sleep(0.1)
    raise AssertionError("no trial ran on the worker node")


@pytest.mark.parametrize("args, message", [
    ([f"executor.address=127.0.0.1:{free_port()}"], "no Ray cluster answers at executor.address=127.0.0.1:"),
    (["executor.max_concurrent=0"], "executor.max_concurrent=0 must be a whole number >= 1"),
    (["executor.trial_resources.num_cpus=-1"], "executor.trial_resources.num_cpus=-1 must be a number >= 0"),
    (["+executor.retries=2"], "executor 'ray': got an unexpected keyword argument 'retries'; its options are: "),
], ids=["nothing at the address", "no concurrency", "negative resource", "unknown option"])
def test_a_ray_mistake_is_one_line_and_writes_nothing(tmp_path, args, message):
    done: Completed = sweep_command("sweep.run", "executor=ray", *args, "results_dir=results", cwd=tmp_path,
                                    env=RAY_ENV)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
