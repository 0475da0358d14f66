"""The README is tested like code: every command in it runs, in order, in one working directory, as a reader
following it would, with tiny budgets added; every override of its knobs table is composed and checked.

Each kind of command has a runner below. A command no runner knows fails the test: whoever adds a command to
the README adds the way to run it here. A command's test relies on those before it (a report reads the sweeps
above it), so run this file whole.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ray_nodes import RAY_ENV, RayNode, start_node
from sweep.cli import CONF_DIR, check_group_choices, compose_config, load_config
from sweep_commands import REPO, free_port

README = (REPO / "README.md").read_text()
CODE_BLOCKS = re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S)
COMMANDS = [line.split(" #")[0].strip() for block in CODE_BLOCKS for line in block.splitlines()
            if line.strip() and not line.startswith("#")]
KNOBS_TABLE = re.search(r"### The knobs\n.*?\n((?:\|[^\n]*\n)+)", README, flags=re.S).group(1)
PLACEHOLDER = re.compile(r"=([A-Z][A-Z_:]*)?$")
"""`train.epochs=N`, `results_dir=PATH`, `optimizer.lr=`: a value left for the reader to fill in."""
CONFIG_ROOTS = {*compose_config("config", []), "strategy"}
GROUPS = {str(path.relative_to(CONF_DIR)) for path in CONF_DIR.rglob("*") if path.is_dir()}


def is_override(span: str) -> bool:
    """A config override written out (not Keras' `trainable=False`, nor `train.epochs=N`)."""
    first = shlex.split(span)[0]
    root = re.split(r"[./=]", first.lstrip("+~"), maxsplit=1)[0]
    return root in CONFIG_ROOTS and not PLACEHOLDER.search(first)


def knob_overrides() -> list[str]:
    """Every override of the knobs table as its row reads it: `executor=ray` with `executor.address=auto` is
    checked as `executor=ray executor.address=auto`."""
    found = []
    for row in KNOBS_TABLE.splitlines():
        chosen: dict[str, str] = {}
        for span in filter(is_override, re.findall(r"`([^`]*=[^`]*)`", row)):
            args = shlex.split(span)
            chosen |= {arg.lstrip("+").split("=")[0]: arg for arg in args if arg.lstrip("+").split("=")[0] in GROUPS}
            group = args[0].lstrip("+~").split(".")[0]
            named = any(arg.lstrip("+").startswith(f"{group}=") for arg in args)
            found.append(" ".join([chosen[group], span] if group in chosen and not named else [span]))
    return found


KNOB_OVERRIDES = knob_overrides()
TORCHVISION_MODEL = re.compile(r"\bmodel=(?!digits_cnn)")
TINY_SWEEP = ["search.n_trials=1", "train.epochs=1", "+strategy=requires_grad"]
SERVER_START_S = 180


@dataclass
class Workdir:
    """The reader's working directory with this environment activated (its `python`, `mlflow` and `ray` first on
    the PATH, as after `source .venv/bin/activate`), and the servers started from it (stopped at the end)."""

    path: Path
    postgres: dict[str, str]
    gpus: int
    port: int = 0  # the MLflow server's
    ray_head: str = ""  # HOST:PORT of the Ray head node the README starts
    servers: list[subprocess.Popen] = field(default_factory=list)
    ray_nodes: list[RayNode] = field(default_factory=list)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **RAY_ENV, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}

    def shell(self, command: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", command], cwd=self.path, env=self.env(**env), capture_output=True,
                              text=True, timeout=900)

    def start(self, command: str) -> subprocess.Popen:
        log = (self.path / f"server-{len(self.servers)}.log").open("w")
        self.servers.append(subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.path, env=self.env(),
                                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        return self.servers[-1]

    def stop_servers(self) -> None:
        for server in self.servers:
            if server.poll() is None:
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
        for node in reversed(self.ray_nodes):
            node.stop()


def get(url: str, server: subprocess.Popen, host: str | None = None) -> tuple[int, str]:
    """Status and body of a GET, retried while the server is still starting."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()
        except (urllib.error.URLError, ConnectionError):
            assert server.poll() is None, f"the server exited with {server.returncode}: see {server.args}"
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def sweep_budget(args: list[str]) -> list[str]:
    """Tiny budgets, appended (Hydra keeps the last value): one trial of one epoch and one confirmation run, unless
    the command sets them (its phases set the epochs); one strategy, except in the plain comparison of all of them
    that the reports read; small inputs for torchvision networks."""
    text = " ".join(args)
    budget = ["search.n_trials=1"]
    if "search.repeats=" not in text:
        budget.append("search.repeats=1")
    if "phases=" not in text and "gradual_unfreezing" not in text:
        budget.append("train.epochs=1")
    if args and "+strategy" not in text:
        budget.append("+strategy=requires_grad")
    if TORCHVISION_MODEL.search(text) and "model.input_size" not in text:
        budget.append("model.input_size=32")
    return [*args, *budget]


def run_make(workdir: Workdir, command: str) -> None:
    """`make run` / `make test` are what CI runs already; here their recipes must exist and call what they say."""
    target = command.split()[1]
    dry = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert {"run": "-m sweep.run", "test": "-m pytest"}[target] in dry.stdout


def check_activate(workdir: Workdir, command: str) -> None:
    """The environment the README activates is the one `make` creates."""
    dry = subprocess.run(["make", "-n", "-B", "run"], cwd=REPO, capture_output=True, text=True)
    assert "-m venv .venv" in dry.stdout and command == "source .venv/bin/activate"


def run_sweep(workdir: Workdir, command: str) -> None:
    """With the stand-ins for what this machine lacks: the throwaway PostgreSQL for `db`, the MLflow server
    started above for `tracking-host`, the Ray head started above for `auto`, a folder of the working
    directory for `/shared`, and no GPU per trial on a machine without one."""
    command = command.replace("postgresql://optuna@db/optuna", shlex.quote(f"'{workdir.postgres['optuna']}'"))
    command = command.replace("tracking-host:5000", f"127.0.0.1:{workdir.port}")
    command = command.replace("/shared/", f"{workdir.path}/shared/")
    if not workdir.gpus:
        command = command.replace("num_gpus:1", "num_gpus:0")
    args = sweep_budget(shlex.split(command)[3:])
    cluster = {"RAY_ADDRESS": workdir.ray_head} if workdir.ray_head else {}  # what `auto` finds on a head node
    done = workdir.shell(shlex.join(["python", "-m", "sweep.run", *args]), **cluster)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "Export the report:" in done.stdout


def run_report(workdir: Workdir, command: str) -> None:
    done = workdir.shell(command)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-3000:]
    report = Path(re.search(r"report: (\S+)", done.stdout).group(1))
    assert report.is_file() and report.is_relative_to(workdir.path / "results" / "reports")


def run_mlflow_ui(workdir: Workdir, command: str) -> None:
    port = free_port()
    server = workdir.start(f"{command} --host 127.0.0.1 --port {port}")
    status, body = get(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=100", server)
    assert status == 200 and '"digits-transfer"' in body, body[:500]


def run_optuna_dashboard(workdir: Workdir, command: str) -> None:
    port = free_port()
    server = workdir.start(f"{command} --host 127.0.0.1 --port {port} --quiet")
    status, body = get(f"http://127.0.0.1:{port}/api/studies", server)
    assert status == 200 and '"digits-transfer.requires_grad.head_backbone"' in body, body[:500]


def run_mlflow_server(workdir: Workdir, command: str) -> None:
    """As written, on a free loopback port and the throwaway PostgreSQL; `tracking-host` does not resolve here,
    so the workers reach it as 127.0.0.1, which is added to the allowed hosts."""
    workdir.port = free_port()
    command = (command.replace("postgresql://mlflow@db/mlflow", shlex.quote(workdir.postgres["mlflow"]))
               .replace("0.0.0.0", "127.0.0.1").replace("5000", str(workdir.port)))
    server = workdir.start(f"{command},127.0.0.1:{workdir.port}")
    url = f"http://127.0.0.1:{workdir.port}/api/2.0/mlflow/experiments/search?max_results=1"
    assert get(url, server)[0] == 200
    assert get(url, server, host=f"tracking-host:{workdir.port}")[0] == 200, "the README's host name is allowed"
    assert get(url, server, host=f"elsewhere.example:{workdir.port}")[0] == 403, "and no other"


SCRIPT_BUDGETS = {
    "bench_step.py": ["--rounds", "1", "--warmup-rounds", "0"],
    "bench_workers.py": ["--pairs", "1", "--", *TINY_SWEEP],
    "bench_job.py": ["--rounds", "1", "--", *TINY_SWEEP],
    "bench_startup.py": ["--rounds", "1"],
    "bench_cached_prefix.py": ["--rounds", "1", "--warmup-rounds", "0", "--epochs", "3", "--trial-epochs", "3",
                               "--images", "100", "--image-side", "16"],  # 2 timed epochs: its quartiles need two
}
"""The fewest rounds each benchmark takes (argparse keeps the last value given), and a tiny job for those
that run sweeps."""


def run_script(workdir: Workdir, command: str) -> None:
    """From the reader's directory, where `scripts/` is the repository's; its output file must appear."""
    args = shlex.split(command)
    done = workdir.shell(shlex.join([*args, *SCRIPT_BUDGETS[Path(args[1]).name]]))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (workdir.path / args[args.index("--out") + 1]).is_file()


def start_ray_node(workdir: Workdir, command: str) -> None:
    """`ray start` as written, on a free loopback port, as a node the test stops at the end."""
    args = shlex.split(command)[2:]
    if "--head" in args:
        workdir.ray_head = f"127.0.0.1:{free_port()}"
        args = [f"--port={workdir.ray_head.rpartition(':')[2]}" if a.startswith("--port=") else a for a in args]
        args.append("--include-dashboard=false")
    else:
        args = [f"--address={workdir.ray_head}" if a.startswith("--address=") else a for a in args]
    workdir.ray_nodes.append(start_node(*args, env=workdir.env()))


RUNNERS: list[tuple[str, Callable[[Workdir, str], None]]] = [
    (r"make (run|test)$", run_make),
    (r"source \.venv/bin/activate$", check_activate),
    (r"python -m sweep\.run\b", run_sweep),
    (r"python -m sweep\.report\b", run_report),
    (r"mlflow ui\b", run_mlflow_ui),
    (r"mlflow server\b", run_mlflow_server),
    (r"optuna-dashboard\b", run_optuna_dashboard),
    (r"python scripts/\w+\.py\b", run_script),
    (r"ray start\b", start_ray_node),
]


def runner(command: str) -> Callable[[Workdir, str], None]:
    found = [run for pattern, run in RUNNERS if re.match(pattern, command)]
    assert found, f"no runner for the README command {command!r}: add one to {__file__}"
    return found[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, cache_dir, postgres) -> Iterator[Workdir]:
    """The reader's directory, laid out like the repository's root for the commands (`scripts/` is the
    repository's): the pretrained digits weights (not results), a state-dict file and a folder of photos
    for the commands that name them, and a folder standing for a cluster's shared file system."""
    import torch
    from PIL import Image
    from torchvision.models import resnet18

    path = tmp_path_factory.mktemp("readme")
    (path / "scripts").symlink_to(REPO / "scripts", target_is_directory=True)
    (path / "results").mkdir()
    (path / "results" / "cache").symlink_to(cache_dir, target_is_directory=True)
    (path / "weights").mkdir()
    torch.save(resnet18().state_dict(), path / "weights" / "resnet18.pth")
    for label, color in (("cat", (200, 120, 40)), ("dog", (40, 90, 200))):
        (path / "photos" / label).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (12, 12), tuple(c - 8 * i for c in color)).save(path / "photos" / label / f"{i}.png")
    (path / "shared" / "sweeps").mkdir(parents=True)
    (path / "shared" / "sweeps" / "cache").symlink_to(cache_dir, target_is_directory=True)
    workdir = Workdir(path, postgres, torch.cuda.device_count())
    yield workdir
    workdir.stop_servers()


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs(workdir, command):
    runner(command)(workdir, command)


@pytest.mark.parametrize("overrides", KNOB_OVERRIDES)
def test_readme_knob_composes_and_validates(overrides):
    args = shlex.split(overrides)
    check_group_choices(args)
    load_config("config", args, Path.cwd())


def test_readme_lists_every_strategy_model_and_data_set():
    for group in ("strategy", "model", "data", "optimizer", "lr_split", "schedule"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            assert f"`{path.stem}`" in README or f"={path.stem}" in README, f"README does not mention {group} {path.stem}"
