"""A trial interrupted mid-way and run again ends bitwise identical to one never interrupted.

The trial is stopped in its second phase, after it unfroze two blocks. Checkpointing
after every epoch, the resumed one must rebuild those param groups and the
`requires_grad` map first; checkpointing every so often (and at the end of each
phase), it starts again from the end of the first phase and repeats the epochs
the killed process ran since, the unfreeze included.
"""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sweep.blocknet import BlockNet
from sweep.checkpoint import Checkpoint
from sweep.errors import ConfigError
from sweep.phases import Phase
from sweep.selection import Selection
from sweep.trial import RunSettings, TrialSpec, run_trial

PHASES = (Phase(1, Selection(depth=4)), Phase(3, Selection(depth=2), lr_scale=0.5))
KILL_AFTER_EPOCH = 2  # in phase 2, after the unfreeze
EVERY_EPOCH = RunSettings(checkpoint_every_s=0)
PHASE_ENDS = RunSettings(checkpoint_every_s=1e9)  # never due by time: only the end of each phase is checkpointed
TESTS_DIR = Path(__file__).resolve().parent

WORKER = """
import json, sys, time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import torch

from sweep.data import make_task
from sweep.models import make_model_def
from sweep.trial import RunSettings, run_trial
from test_resume import spec

cache_dir, pretrain, stall_at, every_s, *outs = (Path(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3]),
                                                  float(sys.argv[4]), *sys.argv[5:])
model_def = make_model_def("digits_cnn", cache_dir=cache_dir, base_dir=Path.cwd(), pretrain=pretrain)
task = make_task("digits", model_def.input_spec, Path.cwd())
build, nets = model_def.build, []
model_def.build = lambda num_classes: nets.append(build(num_classes)) or nets[-1]  # keep the trained network

for out in map(Path, outs):  # one trial after the other, each with its own checkpoint directory
    def after_epoch(metrics, out=out):
        (out / f"epoch-{metrics.epoch}.done").touch()
        if stall_at and metrics.epoch == stall_at + 1:
            time.sleep(600)  # epoch stall_at is over (this one's checkpoint would come after the callback): killed here

    result = run_trial(spec("requires_grad", grad_clip_norm=1.0), task, model_def, on_epoch=after_epoch,
                       checkpoint_dir=out / "checkpoint", settings=RunSettings(checkpoint_every_s=every_s))
    torch.save(nets[-1].state_dict(), out / "weights.pt")
    requires_grad = {name: p.requires_grad for name, p in nets[-1].named_parameters()}
    (out / "result.json").write_text(json.dumps({
        "test_accuracy": result.test_accuracy, "requires_grad": requires_grad,
        "history": [asdict(m) for m in result.history], "phases": [asdict(p) for p in result.phases]}))
"""


def spec(strategy: str, **fields) -> TrialSpec:
    return TrialSpec(strategy=strategy, selection=PHASES[0].freeze, epochs=sum(p.epochs for p in PHASES),
                     phases=PHASES, schedule="onecycle", device="cpu", **fields)


@pytest.fixture
def built(monkeypatch, digits_model_def) -> list[BlockNet]:
    """Every network `digits_model_def` builds in this test, so the trained weights can be compared."""
    nets = []
    build = digits_model_def.build
    monkeypatch.setattr(digits_model_def, "build", lambda num_classes: nets.append(build(num_classes)) or nets[-1])
    return nets


class Interrupted(Exception):
    pass


def interrupt_at(epoch: int):
    """Interrupt once `epoch`'s checkpoint is on disk: in the next epoch's callback, which runs before its own."""
    def after_epoch(metrics):
        if metrics.epoch == epoch + 1:
            raise Interrupted

    return after_epoch


@pytest.fixture
def start_worker(tmp_path, digits_model_def):
    """`start(outs, stall_at, settings)`: the trial in a real process, once per directory in `outs`, each with its
    own checkpoint; the process stalls after epoch `stall_at`. Whatever is still running at the end is killed."""
    digits_model_def.backbone_weights()  # pretrained once, into the cache the workers share
    digits_model_def.save_cache()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    started = []

    def start(outs: list[Path], stall_at: int = 0, settings: RunSettings = EVERY_EPOCH) -> subprocess.Popen:
        for out in outs:
            out.mkdir(exist_ok=True)
        args = [str(digits_model_def.cache_dir), json.dumps(asdict(digits_model_def.pretraining)), str(stall_at),
                str(settings.checkpoint_every_s)]
        started.append(subprocess.Popen([sys.executable, str(script), *args, *map(str, outs)], env=env))
        return started[-1]

    yield start
    for worker in started:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def wait_for(path: Path, worker: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert worker.poll() is None, f"the worker ended (code {worker.returncode}) before writing {path.name}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout_s} s"
        time.sleep(0.05)


def outcome(out: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    return json.loads((out / "result.json").read_text()), torch.load(out / "weights.pt", weights_only=True)


@pytest.mark.parametrize("settings, checkpointed", [
    (EVERY_EPOCH, (1, KILL_AFTER_EPOCH)),  # resumed in phase 2 (index 1), from the epoch before the kill
    (PHASE_ENDS, (0, PHASES[0].epochs)),  # killed between checkpoints: resumed from the end of phase 1
], ids=["every-epoch", "between-checkpoints"])
def test_a_killed_trial_resumes_to_the_same_weights_and_accuracy(tmp_path, start_worker, settings, checkpointed):
    killed_dir, uninterrupted_dir = tmp_path / "killed", tmp_path / "uninterrupted"
    killed = start_worker([killed_dir], stall_at=KILL_AFTER_EPOCH, settings=settings)
    wait_for(killed_dir / f"epoch-{KILL_AFTER_EPOCH + 1}.done", killed)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL
    checkpoint = killed_dir / "checkpoint" / "checkpoint.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert (saved["phase"], len(saved["progress"]["history"])) == checkpointed

    # resume with the same settings, then run one through
    assert start_worker([killed_dir, uninterrupted_dir], settings=settings).wait(timeout=600) == 0
    (expected, expected_weights), (result, weights) = outcome(uninterrupted_dir), outcome(killed_dir)
    assert result == expected  # test accuracy, per-epoch history, per-phase drift and flops, requires_grad map
    assert not all(result["requires_grad"].values())  # conv1 and conv2 are still frozen at the end
    assert weights.keys() == expected_weights.keys()
    for name, tensor in weights.items():
        assert torch.equal(tensor, expected_weights[name]), name
    assert not checkpoint.exists()  # a finished trial removes its checkpoint


@pytest.mark.parametrize("strategy", ["exclude_from_optimizer", "zero_lr", "weight_restore", "no_grad_forward"])
def test_every_mechanism_resumes_after_its_unfreeze(tmp_path, digits_model_def, digits_task, built, strategy):
    trial = spec(strategy, grad_clip_norm=1.0)  # clipping sees exclude_from_optimizer's piled-up frozen gradients
    expected = run_trial(trial, digits_task, digits_model_def)
    expected_weights = built[-1].state_dict()
    with pytest.raises(Interrupted):
        run_trial(trial, digits_task, digits_model_def, on_epoch=interrupt_at(KILL_AFTER_EPOCH),
                  checkpoint_dir=tmp_path, settings=EVERY_EPOCH)
    result = run_trial(trial, digits_task, digits_model_def, checkpoint_dir=tmp_path, settings=EVERY_EPOCH)
    assert (result.test_accuracy, result.history, result.phases) == \
        (expected.test_accuracy, expected.history, expected.phases)
    for name, tensor in built[-1].state_dict().items():
        assert torch.equal(tensor, expected_weights[name]), name


def test_a_checkpoint_of_another_trial_is_refused(tmp_path, digits_model_def, digits_task):
    with pytest.raises(Interrupted):
        run_trial(spec("zero_lr"), digits_task, digits_model_def, on_epoch=interrupt_at(1), checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="belongs to another trial"):
        run_trial(spec("zero_lr", seed=1), digits_task, digits_model_def, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("settings, stop_at, saved_after", [
    (EVERY_EPOCH, None, [1, 2, 3, 4]),
    (PHASE_ENDS, None, [1, 4]),
    (RunSettings(checkpoint_every_s=30), None, [1, 3, 4]),  # due at epoch 3: 40 s after the phase-end checkpoint
    (PHASE_ENDS, 2, [1, 2]),  # stopped early (pruned): its last epoch is checkpointed too
], ids=["every-epoch", "phase-ends", "every-30-s", "stopped"])
def test_checkpoints_are_written_when_due_and_at_phase_ends(tmp_path, digits_model_def, digits_task, monkeypatch,
                                                            settings, stop_at, saved_after):
    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr("sweep.checkpoint.time", SimpleNamespace(perf_counter=lambda: clock.now))
    saved, save = [], Checkpoint.save
    monkeypatch.setattr(Checkpoint, "save", lambda self, trainer, shuffling, phase, progress: (
        saved.append(len(progress.history)), save(self, trainer, shuffling, phase, progress)))

    def after_epoch(metrics):
        clock.now += 20  # each epoch takes 20 s of training
        return metrics.epoch == stop_at

    run_trial(spec("zero_lr"), digits_task, digits_model_def, on_epoch=after_epoch, checkpoint_dir=tmp_path,
              settings=settings)
    assert saved == saved_after
