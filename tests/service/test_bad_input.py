"""Every user mistake, through the real commands: one line on stderr, exit 2, no traceback, and every store
byte for byte as it was.

The cases run against the session's populated tiny sweep (journal, MLflow database, cache, Hydra records,
a report), so "nothing written" is checked where it matters: a mistake next to real results. Most cases are
refused by the typed schema before torch is imported; the rest reach the job (an unknown block, a missing
GPU, a store that cannot be reached) and show that Hydra's records of the failed job are taken back too.
"""

import hashlib
import itertools
import os
from pathlib import Path

import pytest

from sweep_commands import sweep_command, tree

LONG_NAME = "x" * 300
CUDA_NOBODY_HAS = "cuda:63"
NAME_RULE = "a name holds only letters, digits"

# (arguments, what the one line must say). <file>, <user_dir>, <one_class>, <corrupt>, <unwritable> and <empty>
# are paths the `places` fixture makes.
RUN_CASES = {
    "unknown key": (["foo=1"], "unknown config key 'foo'"),
    "unknown key appended": (["+foo=1"], "unknown config key 'foo'"),
    "misspelled key": (["optimizer.llr=0.1"], "did you mean 'optimizer.lr'?"),
    "unknown model option": (["model.foo=1"], "unknown config key 'model.foo'"),
    "unknown pruner option": (["search.pruner.bogus=1"], "unknown config key 'search.pruner.bogus'"),
    "unknown phase key": (["phases=[{epochs:1,foo:2}]"], "unknown config key 'phases.0.foo'"),
    "deleted section": (["~train"], "config key 'train' is missing"),
    "boolean lr": (["optimizer.lr=true"], "optimizer.lr=true is not valid: it must be a valid number"),
    "negative lr": (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not valid: it must be greater than 0"),
    "infinite lr": (["optimizer.lr=inf"], "optimizer.lr=inf is not valid: it must be a finite number"),
    "momentum 1.5": (["optimizer.momentum=1.5"], "optimizer.momentum=1.5 is not valid: it must be less than 1"),
    "adam beta 2": (["optimizer=adam", "optimizer.betas=[2,0.999]"], "optimizer.betas.0=2 is not valid"),
    "adam one beta": (["optimizer=adam", "optimizer.betas=[0.9]"], "optimizer.betas is not valid"),
    "multi_objective maybe": (["search.multi_objective=maybe"], "search.multi_objective=maybe is not valid"),
    "no trials": (["search.n_trials=0"], "search.n_trials=0 is not valid: it must be greater than or equal to 1"),
    "negative sampler seed": (["search.sampler_seed=-1"], "search.sampler_seed=-1 is not valid"),
    "no repeats": (["search.repeats=0"], "search.repeats=0 is not valid: it must be greater than or equal to 1"),
    "negative repeats": (["search.repeats=-2"], "search.repeats=-2 is not valid: it must be greater than or equal to 1"),
    "text repeats": (["search.repeats=abc"], "search.repeats=abc is not valid: it must be a valid integer"),
    "negative repeat seed offset": (["search.repeat_seed_offset=-1"], "search.repeat_seed_offset=-1 is not valid"),
    "negative timing rounds": (["timing.rounds=-1"], "timing.rounds=-1 is not valid: it must be greater than or equal "
                                                     "to 0"),
    "no timed steps": (["timing.steps=0"], "timing.steps=0 is not valid"),
    "grid key not a freeze key": (["search.grid={train.epochs:[1,2]}"],
                                  "search.grid: 'train.epochs' is not a freeze key a grid can vary"),
    "grid value of the wrong type": (["search.grid={freeze.depth:[1,two]}"],
                                     "search.grid: point freeze.depth=two is not valid: it must be a valid integer"),
    "grid values not a list": (["search.grid={freeze.depth:3}"], "search.grid.freeze.depth=3 is not valid"),
    "grid value that would name a folder": (["search.grid={freeze.regex:[a/b]}"],
                                            "search.grid: point freeze.regex=a/b: a grid value is part of study"),
    "grid with phases": (["phases=[{epochs:1}]", "search.grid={freeze.depth:[1,2]}"],
                         "search.grid varies what is frozen, but phases=[...] set the selection of every phase"),
    "grid point invalid for a mechanism": (["+strategy=no_grad_forward", "freeze.depth=null",
                                            "search.grid={freeze.names:[[conv1],[conv2]]}"],
                                           "search.grid point freeze.names=[conv2]: strategy 'no_grad_forward' needs "
                                           "the frozen blocks to be a prefix"),
    "searched range upside down": (["search.space.optimizer.lr.low=1"], "search.space.optimizer.lr: needs low < high"),
    "searched type unknown": (["search.space.optimizer.lr.type=cat"], "it must be 'float' or 'int'"),
    "searched int with fractions": (["+search.space.train.batch_size={type:int,low:0.5,high:64}"],
                                    "type int needs whole-number bounds"),
    "text grad clip": (["train.grad_clip_norm=abc"], "train.grad_clip_norm=abc is not valid: it must be a valid number"),
    "no epochs": (["train.epochs=0"], "train.epochs=0 is not valid"),
    "text seed": (["seed=abc"], "seed=abc is not valid: it must be a valid integer"),
    "text system metrics": (["tracking.system_metrics=abc"], "tracking.system_metrics=abc is not valid"),
    "tpu": (["device=tpu"], "device=tpu: choose one of auto, cpu, cuda, cuda:N, mps"),
    "a GPU this machine lacks": ([f"device={CUDA_NOBODY_HAS}"], f"device={CUDA_NOBODY_HAS}, but torch sees"),
    "empty experiment": (["experiment="], f"experiment='': {NAME_RULE}"),
    "experiment climbing out": (["experiment=a/../../../elsewhere"], NAME_RULE),
    "absolute experiment": (["experiment=/tmp/elsewhere"], NAME_RULE),
    "quote in experiment": (["experiment='it\\'s'"], NAME_RULE),
    "unquoted quote in experiment": (["experiment=it's"], "cannot read \"experiment=it's\" as key=value"),
    "300-character experiment": ([f"experiment={LONG_NAME}"], NAME_RULE),
    "results_dir is a file": (["results_dir=<file>"], "is a file"),
    "results_dir under a file": (["results_dir=<file>/sub"], "cannot be created"),
    "results_dir not writable": (["results_dir=<unwritable>/results"], "is not writable"),
    "unknown model": (["model=resnet9000"], "unknown model 'resnet9000'; choose one of:"),
    "unknown optimizer": (["optimizer=lion"], "unknown optimizer 'lion'; choose one of:"),
    "text model width": (["model.width=abc"], "model 'digits_cnn': width=abc is not valid"),
    "image folder with one class": (["data=imagefolder", "data.root=<one_class>", "model=resnet18", "model.weights=null",
                                     "model.input_size=32"], "a classifier needs at least two"),
    "image folder with a corrupt image": (["data=imagefolder", "data.root=<corrupt>", "model=resnet18",
                                           "model.weights=null", "model.input_size=32"], "cannot read image"),
    "unknown strategy": (["+strategy=freeze_harder"], "unknown strategy 'freeze_harder'; choose one of:"),
    "unknown block": (["freeze.names=[conv9]"], "unknown block 'conv9'; choose among: conv1, conv2, conv3, fc"),
    "negative depth": (["freeze.depth=-1"], "freeze.depth=-1 is not valid"),
    "unknown norm policy": (["freeze.norm_policy=frozen"], "it must be 'train' or 'eval'"),
    "cached_prefix with BatchNorm statistics that move": (
        ["+strategy=cached_prefix"], "strategy 'cached_prefix' cannot reuse the frozen prefix's outputs"),
    "negative cache budget": (["cache.max_bytes=-1"], "cache.max_bytes=-1 is not valid"),
    "no_grad_forward on a non-prefix": (["+strategy=no_grad_forward", "freeze.depth=null", "freeze.names=[conv2]"],
                                        "needs the frozen blocks to be a prefix"),
    "phase of no epochs": (["phases=[{epochs:0}]"], "phases.0.epochs=0 is not valid"),
    "an unknown option": (["--bogus"], "unknown option '--bogus'; see the options with --help"),
    "a config path": (["--config-path=<user_dir>", "--config-name=notes"], "pass --config-dir DIR instead"),
    "a flag after the overrides": (["optimizer.lr=0.1", "-m", "optimizer.lr=0.2"], "follows a flag; put the flags"),
    "two values without multirun": (["train.epochs=1,2"], "Ambiguous value for argument 'train.epochs=1,2'"),
    "a multirun with one bad job": (["-m", "optimizer.lr=0.1,true"], "optimizer.lr=true is not valid"),
    "a multirun with an unknown strategy": (["-m", "+strategy=zero_lr,bogus"], "unknown strategy 'bogus'"),
    "unresolvable interpolation": (["train.epochs=${nope}"], "Interpolation key 'nope' not found"),
    "unreachable storage": (["search.storage=postgresql://nobody@127.0.0.1:9/none"], "cannot use Optuna storage"),
    "journal in a missing folder": (["search.storage=no-such-folder/studies.journal"],
                                    "search.storage='no-such-folder/studies.journal' is in a directory that does not "
                                    "exist"),
    "unreachable tracking server": (["tracking.uri=http://127.0.0.1:9"], "cannot use MLflow tracking URI"),
}
REPORT_CASES = {
    "unknown key": (["foo=1"], "unknown config key 'foo'"),
    "unknown report key": (["report.bogus=1"], "unknown config key 'report.bogus'"),
    "out_dir is a file": (["report.out_dir=<file>"], "is a file"),
    "out_dir holds a user's files": (["report.out_dir=<user_dir>"], "holds files no report wrote (notes.txt)"),
    "out_dir not writable": (["report.out_dir=<unwritable>/report"], "is not writable"),
    "no such experiment": (["experiment=nope"], "no experiment 'nope'"),
    "unsafe experiment": (["experiment=../tiny"], NAME_RULE),
    "unsafe experiment in a list": (["report.experiments=[tiny,'a b']"], f"report.experiments.1=a b: {NAME_RULE}"),
    "an experiment twice": (["report.experiments=[tiny,tiny]"], "must be distinct experiment names"),
    "boolean experiments": (["report.experiments=true"], "report.experiments=true is not valid"),
    "text seed": (["seed=abc"], "seed=abc is not valid"),
    "tpu": (["device=tpu"], "device=tpu: choose one of"),
    "results_dir is a file": (["results_dir=<file>"], "is a file"),
    "results_dir without records": (["results_dir=<empty>"], "no MLflow records at"),
}
CASES = [("sweep.run", name, *case) for name, case in RUN_CASES.items()] + \
        [("sweep.report", name, *case) for name, case in REPORT_CASES.items()]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """Paths the cases name: a file, a folder of someone's files, image folders a classifier cannot use..."""
    from PIL import Image

    root = tmp_path_factory.mktemp("bad-input-places")
    (root / "a-file").write_text("not a directory\n")
    (root / "user").mkdir()
    (root / "user" / "notes.txt").write_text("mine\n")
    (root / "empty").mkdir()
    for folder, classes in (("one-class", ["cat"]), ("corrupt", ["cat", "dog"])):
        for label in classes:
            (root / folder / label).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / folder / label / f"{i}.png")
    (root / "corrupt" / "dog" / "4.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    unwritable = root / "read-only"
    unwritable.mkdir(mode=0o555)
    if os.access(unwritable, os.W_OK):  # root may write anywhere its mode says it cannot; not on a read-only fs
        unwritable = Path("/proc/1")
    assert not os.access(unwritable, os.W_OK)
    return {"file": str(root / "a-file"), "user_dir": str(root / "user"), "one_class": str(root / "one-class"),
            "corrupt": str(root / "corrupt"), "unwritable": str(unwritable), "empty": str(root / "empty")}


@pytest.fixture(scope="module")
def before(tiny_sweep) -> dict[str, str]:
    return tree(tiny_sweep.results_dir)


@pytest.mark.parametrize("module, name, args, message", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_a_mistake_is_one_line_and_changes_nothing(tiny_sweep, before, places, tmp_path, module, name, args, message):
    for place, path in places.items():
        args = [arg.replace(f"<{place}>", path) for arg in args]
    flags = list(itertools.takewhile(lambda arg: arg.startswith("-"), args))  # a case's leading flags lead
    done = sweep_command(module, *flags, "experiment=tiny", f"results_dir={tiny_sweep.results_dir}",
                         *args[len(flags):], cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == [], "nothing may be written in the working directory"
    assert tree(tiny_sweep.results_dir) == before, "the results directory must be byte for byte as it was"
    assert tree(Path(places["user_dir"])) == {"notes.txt": hashlib.sha256(b"mine\n").hexdigest()}


def test_a_mistake_on_a_new_results_dir_creates_nothing(tmp_path):
    done = sweep_command("sweep.run", "optimizer.lr=true", f"results_dir={tmp_path / 'new' / 'results'}", cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_mistake_found_after_pretraining_writes_no_pretrained_weights(tmp_path):
    """Checking a freezing selection builds the model, which pretrains it: the weights are cached only once every
    check has passed."""
    results_dir = tmp_path / "new" / "results"
    done = sweep_command("sweep.run", "+strategy=requires_grad", "freeze.names=[nonexistent]",
                         "model.pretrain.epochs=1", f"results_dir={results_dir}", cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "unknown block 'nonexistent'" in lines[0], done.stderr
    assert f"pretraining digits_cnn on digits 0-4, once (cached as {results_dir / 'cache'}" in done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["search.storage=postgresql://nobody@127.0.0.1:9/none"], "cannot use Optuna storage"),
    (["+strategy=cached_prefix"], "strategy 'cached_prefix' cannot reuse the frozen prefix's outputs"),
], ids=["unreachable storage", "strategy that cannot run"])
def test_a_mistake_the_job_finds_takes_back_the_mlflow_database_made_meanwhile(tmp_path, cache_dir, args, message):
    """A fresh results_dir's MLflow database is made by a child process while the job imports and checks
    (sweep/fresh_store.py): a mistake found by then removes it again."""
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)
    done = sweep_command("sweep.run", f"results_dir={results_dir}", *args, cwd=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr
    assert f"creating the MLflow database {results_dir / 'mlflow.db'}: done" in done.stdout  # it was made
    assert tree(results_dir) == {"cache": "dir"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_there_are_at_least_sixty_distinct_bad_inputs():
    assert len({(module, tuple(args)) for module, _, args, _ in CASES}) >= 60
