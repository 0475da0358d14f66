"""executor=ray on a real two-node Ray cluster that the tests start on loopback and always stop.

Each node is a `ray start --block` in a session of its own: its raylet, agents and
worker processes all carry that session id, so the fixture (and the node-loss test)
can stop exactly one node's processes, by id, without touching any other Ray on the machine.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sweep_commands import REPO, Completed, sweep_command

RAY = Path(sys.executable).with_name("ray")
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}  # loopback only: no token files in $HOME
NODE_OPTIONS = ["--num-cpus=1", "--object-store-memory=100000000", "--node-ip-address=127.0.0.1",
                "--disable-usage-stats", "--include-log-monitor=false", "--block"]
STARTED = "Ray runtime started"
DONE = (TrialState.COMPLETE, TrialState.PRUNED)
NODE, WORKER = "sweep.node", "sweep.worker"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class RayNode:
    process: subprocess.Popen  # `ray start --block`, the leader of a session that holds all of the node's processes
    temp_dir: Path

    def holds(self, pid: int) -> bool:
        try:
            return os.getsid(pid) == self.process.pid
        except ProcessLookupError:
            return False

    def pids(self) -> list[int]:
        """The node's live processes (zombies excluded: they are gone, only not yet reaped)."""
        live = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                state = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[0]
            except OSError:
                continue
            if state != "Z" and self.holds(int(entry)):
                live.append(int(entry))
        return live

    def kill(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM to `ray start`, which stops the node's processes; SIGKILL whatever is left; remove its files."""
        if self.process.poll() is None:
            self.process.terminate()
        deadline = time.monotonic() + 15
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
        self.kill()
        self.process.wait()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_node(*args: str, env: dict[str, str]) -> RayNode:
    temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    log = temp_dir / "start.log"
    process = subprocess.Popen([str(RAY), "start", *args, *NODE_OPTIONS, f"--temp-dir={temp_dir}"], env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    node = RayNode(process, temp_dir)
    deadline = time.monotonic() + 180
    while STARTED not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            output = log.read_text()
            node.stop()
            raise RuntimeError(f"ray start {' '.join(args)} did not start: {output[-2000:]}")
        time.sleep(0.2)
    return node


@dataclass
class RayCluster:
    address: str
    head: RayNode
    worker: RayNode


@pytest.fixture(scope="module")
def ray_cluster():
    """A head and a worker node with one CPU each; a dead node is noticed within about two seconds."""
    env = {**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1"}
    fast_failure_detection = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                              "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    nodes: list[RayNode] = []
    try:
        port = free_port()
        nodes.append(start_node("--head", f"--port={port}", "--include-dashboard=false",
                                env=env | fast_failure_detection))
        nodes.append(start_node(f"--address=127.0.0.1:{port}", env=env))
        yield RayCluster(f"127.0.0.1:{port}", *nodes)
    finally:
        for node in reversed(nodes):
            node.stop()


def results_dir(tmp_path: Path, cache_dir: Path) -> Path:
    (tmp_path / "cache").symlink_to(cache_dir, target_is_directory=True)
    return tmp_path


def ray_args(cluster: RayCluster, results: Path, *args: str) -> list[str]:
    return ["executor=ray", f"executor.address={cluster.address}", "executor.max_concurrent=2",
            f"results_dir={results}", *args]


def studies_in(results: Path) -> dict[str, optuna.Study]:
    storage = JournalStorage(JournalFileBackend(str(results / "optuna.journal")))
    return {s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
            for s in optuna.get_all_study_summaries(storage)}


def trial_runs(client: MlflowClient, experiment: str, extra: str = "") -> list:
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    return client.search_runs([experiment_id], "tags.`sweep.role` = 'trial'" + extra)


def test_two_studies_run_their_exact_budget_across_both_nodes(ray_cluster, tmp_path, cache_dir):
    results = results_dir(tmp_path, cache_dir)
    done = sweep_command("sweep.run", "-m", *ray_args(ray_cluster, results, "+strategy=requires_grad,zero_lr",
                                                      "search.n_trials=4", "train.epochs=2", "experiment=spread"),
                         env=RAY_ENV)
    assert done.returncode == 0, done.stderr
    assert "| requires_grad" in done.stdout and "| zero_lr" in done.stdout

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


def test_a_lost_worker_node_loses_nothing(ray_cluster, tmp_path, cache_dir):
    """SIGKILL every process of the worker node while it trains a trial past its first checkpoint."""
    results = results_dir(tmp_path, cache_dir)
    args = ray_args(ray_cluster, results, "+strategy=zero_lr", "search.n_trials=3", "train.epochs=12",
                    "search/pruner=none", "experiment=lost")
    driver = subprocess.Popen([sys.executable, "-m", "sweep.run", *args], cwd=REPO,
                              env={**os.environ, **RAY_ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        victim = running_on(ray_cluster.worker, results, driver)
        ray_cluster.worker.kill()
        out, err = driver.communicate(timeout=600)
    finally:
        driver.kill()
    assert driver.returncode == 0, err

    (study,) = studies_in(results).values()
    assert [t.state in DONE for t in study.trials] == [True] * 3
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = {r.info.run_id: r for r in trial_runs(client, "lost")}
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == set(runs)
    assert {r.info.status for r in runs.values()} == {"FINISHED"}

    resumed = runs[victim.info.run_id]
    trial = study.trials[int(victim.data.tags["optuna.trial_number"])]
    assert trial.user_attrs["mlflow_run_id"] == victim.info.run_id
    assert resumed.data.tags[NODE] != victim.data.tags[NODE], "the retry ran on the head node"
    epochs = [m.step for m in client.get_metric_history(victim.info.run_id, "val_accuracy")]
    assert epochs.count(1) == 1, "the retry continued from the checkpoint instead of starting over"
    assert sorted(set(epochs)) == list(range(1, 13))
    assert not list((results / "checkpoints").rglob("checkpoint.pt"))
    assert "Traceback" not in err


def running_on(node: RayNode, results: Path, driver: subprocess.Popen):
    """The MLflow run of a trial that `node` is training and has checkpointed at least once."""
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"the sweep ended before a trial ran on the worker node: {driver.stderr.read()}"
        if (results / "mlflow.db").exists() and client.get_experiment_by_name("lost") is not None:
            for run in trial_runs(client, "lost", " and attributes.status = 'RUNNING'"):
                worker = run.data.tags.get(WORKER)
                checkpoint = (results / "checkpoints" / run.data.tags["optuna.study_name"]
                              / f"trial-{run.data.tags['optuna.trial_number']}" / "checkpoint.pt")
                if worker and node.holds(int(worker.rpartition(":")[2])) and checkpoint.exists():
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
