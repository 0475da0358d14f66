"""One trial: build the model, freeze it by the chosen mechanism, train phase by phase, and measure everything."""

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from sweep.blocknet import BlockNet
from sweep.checkpoint import Checkpoint, Progress, WhenRecorded, at_once
from sweep.data import Task
from sweep.errors import ConfigError, choice_error
from sweep.faults import crash_point
from sweep.feature_cache import FeatureCache
from sweep.feeds import EVAL_BATCH_SIZE, Feed, FeedContext
from sweep.lr_split import make_lr_split, param_groups
from sweep.measure import Timing, flops_per_step, held_bytes, make_peak_memory, make_timer
from sweep.models import ModelDef
from sweep.optim import OptimizerSpec, make_optimizer
from sweep.phases import GroupsFor, Phase, PhaseDrift, PhasePlan, PhaseResult
from sweep.schedules import Horizon, Schedule
from sweep.selection import FrozenSet, Selection
from sweep.strategies import MECHANISMS, Mechanism
from sweep.threads import intra_op_threads
from sweep.trace import SPLIT_DEVIATION, UNFROZEN_MOMENTUM, Tracer, invariant_holds, momentum_norm
from sweep.train import EpochCallback, EpochMetrics, Trainer

NORM_POLICIES = ("train", "eval")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
NOT_METRICS = ("history", "stopped_early", "phases", "peak_memory", "feed_metrics", "backbone_sha256")  # of a result
PHASE_METRICS = ("epochs", "frozen_params", "trainable_params", "flops_per_step", "frozen_weight_drift",
                 "frozen_buffer_drift")


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines a trial's result."""

    strategy: str
    selection: Selection = Selection(depth=2)
    norm_policy: str = "train"
    lr_split: str = "uniform"
    lr_split_options: dict = field(default_factory=dict)
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: str = "constant"
    schedule_options: dict = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 32
    grad_clip_norm: float | None = None
    seed: int = 0
    device: str = "auto"
    phases: tuple[Phase, ...] = ()
    """Progressive unfreezing; empty: one phase freezing `selection` for `epochs`. When given, `epochs`
    must be their total and `selection` the first one's freeze, so both keep their meaning for trackers."""

    def __post_init__(self) -> None:
        if not self.phases:
            return
        total = sum(p.epochs for p in self.phases)
        if self.epochs != total:
            raise ConfigError(f"epochs={self.epochs} but the phases add up to {total} epochs; they must agree")
        if self.selection != self.phases[0].freeze:
            raise ConfigError(f"selection={self.selection} but the first phase freezes {self.phases[0].freeze}; "
                              "they must agree")

    def phase_list(self) -> tuple[Phase, ...]:
        return self.phases or (Phase(self.epochs, self.selection),)


CHECKPOINT_EVERY_S = 30.0  # a few hundred ms of writing per half minute of training; a kill loses at most that


@dataclass(frozen=True)
class RunSettings:
    """How a trial runs, not what it computes: kept out of its checkpoint key, its study's fingerprint and params."""

    threads: int | None = None  # torch's intra-op threads during the trial; None: as the process has them
    checkpoint_every_s: float = CHECKPOINT_EVERY_S  # and at the end of every phase; 0: after every epoch


@dataclass
class TrialResult:
    history: list[EpochMetrics]
    val_accuracy: float
    test_accuracy: float
    test_examples: int  # the test set's size: one example is worth 1 / test_examples of accuracy
    train_time_s: float
    wall_time_s: float
    step_time_ms: float
    samples_per_s: float
    flops_per_step: int  # mean over the training steps when phases differ
    held_bytes: int  # params, grads, optimizer state and the mechanism's copies at the end: exact, no activations
    trainable_params: int  # at the start (first phase)
    frozen_params: int
    frozen_weight_drift: float | None  # max over phases; None: nothing was frozen
    frozen_buffer_drift: float | None
    torch_threads: int  # intra-op threads torch ran the trial with, read inside it
    torch_interop_threads: int
    stopped_early: bool
    phases: list[PhaseResult] = field(default_factory=list)
    peak_memory: dict[str, int] = field(default_factory=dict)  # over the training passes: `sweep.measure.PeakMemory`
    feed_metrics: dict[str, float] = field(default_factory=dict)  # what feeding the network cost: cached_prefix's cache
    epochs_trained: int = 0
    max_lr_split_deviation: float | None = None  # over the epochs; None: fewer than two trainable groups
    invariant_failed_epochs: int = 0  # epochs in which the optimizer could move a frozen or not a trainable param
    backbone_sha256: str = ""  # of the backbone's state before training: which weights the trial started from

    def final_metrics(self) -> dict[str, float]:
        """Flat metrics for the trackers; a trial of several phases adds `phase<N>.<metric>` for each."""
        final = {k: v for k, v in asdict(self).items() if k not in NOT_METRICS and v is not None}
        final |= self.peak_memory | self.feed_metrics
        if len(self.phases) > 1:
            final |= {f"phase{p.phase}.{key}": getattr(p, key) for p in self.phases for key in PHASE_METRICS
                      if getattr(p, key) is not None}
        return final


def resolve_device(name: str) -> torch.device:
    """`auto` is CUDA when there is a GPU; a device named explicitly must exist on this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    available = {"cuda": torch.cuda.device_count() if torch.cuda.is_available() else 0,
                 "mps": int(torch.backends.mps.is_available())}
    if (device.index or 0) >= available.get(device.type, 1):
        raise ConfigError(f"device={name}, but torch sees {available[device.type]} {device.type} device(s) here; "
                          "pass device=cpu, or device=auto to use a GPU when there is one")
    return device


@dataclass
class TrialSetup:
    """A trial's model, phases, mechanism, optimizer and schedule, ready to train."""

    net: BlockNet
    frozen: FrozenSet  # what the first phase freezes
    mechanism: Mechanism
    optimizer: torch.optim.Optimizer
    device: torch.device
    feed: Feed
    plan: PhasePlan
    groups_for: GroupsFor
    schedule: Schedule
    scheduler: LRScheduler
    backbone_sha256: str  # before any training


def set_up(spec: TrialSpec, task: Task, model_def: ModelDef) -> TrialSetup:
    """Everything that can reject a configuration happens here, before any training."""
    if spec.norm_policy not in NORM_POLICIES:
        raise choice_error("norm policy", spec.norm_policy, NORM_POLICIES)
    mechanism_cls = MECHANISMS.get(spec.strategy)
    split = make_lr_split(spec.lr_split, **spec.lr_split_options)
    device = resolve_device(spec.device)

    torch.manual_seed(spec.seed)  # the same seed gives the same new head and data order, whatever the mechanism
    net = model_def.build(task.num_classes).to(device)
    backbone_sha256 = net.backbone_sha256()
    plan = PhasePlan(net, spec.phase_list(), mechanism_cls.freezes)
    frozen = plan.frozen[0]
    groups_for = partial(param_groups, net, split=split, lr=spec.optimizer.lr,
                         weight_decay=spec.optimizer.weight_decay, no_decay_bias_norm=spec.optimizer.no_decay_bias_norm)
    mechanism = mechanism_cls(net, frozen)
    plan.check(mechanism)
    always_frozen = plan.frozen[-1]  # phases only unfreeze
    feed = mechanism.feed(FeedContext(task, always_frozen, held_norms(spec, net, always_frozen), spec.norm_policy,
                                      device))
    optimizer = make_optimizer(mechanism.optimizer_groups(groups_for(frozen)), spec.optimizer)
    steps_per_epoch = math.ceil(len(task.train) / spec.batch_size)
    schedule = Schedule(spec.schedule, Horizon(spec.epochs * steps_per_epoch, steps_per_epoch), spec.optimizer.lr,
                        spec.schedule_options)
    return TrialSetup(net, frozen, mechanism, optimizer, device, feed, plan, groups_for, schedule,
                      schedule.build(optimizer), backbone_sha256)


def held_norms(spec: TrialSpec, net: nn.Module, frozen: FrozenSet) -> list[nn.Module]:
    """Norm policy `eval`: the norm layers of frozen blocks stay in eval mode while training."""
    if spec.norm_policy != "eval":
        return []
    return [m for m in frozen.frozen_modules(net).values() if isinstance(m, NORM_TYPES)]


@dataclass
class PhasedRun:
    """The epoch hooks of a trial: enter each phase, record progress and drift, checkpoint."""

    spec: TrialSpec
    setup: TrialSetup
    trainer: Trainer
    probe_batch: tuple[torch.Tensor, ...]
    shuffling: torch.Generator  # the training loader's: its state is the data order to come
    checkpoint: Checkpoint | None
    started: float  # perf_counter at the start of this process's part of the trial
    progress: Progress = field(default_factory=Progress)

    def __post_init__(self) -> None:
        self.drift = PhaseDrift(self.setup.net, self.setup.plan)  # snapshot before any training, resumed or not
        self._carried_momentum = 0.0  # by what the current epoch's phase unfroze

    def enter_phase(self, index: int) -> None:
        """Unfreeze for phase `index`; the scheduler is rebuilt to cover the new groups at the step it had reached."""
        setup, trainer = self.setup, self.trainer
        setup.plan.unfreeze(index, setup.mechanism, setup.optimizer, setup.groups_for)
        trainer.scheduler = setup.schedule.build(setup.optimizer, steps_done=trainer.scheduler.last_epoch)
        trainer.eval_mode_modules = held_norms(self.spec, setup.net, setup.plan.frozen[index])

    def resume(self) -> None:
        """Continue from the checkpoint if there is one: rebuild its phase's param groups, then load the states."""
        saved = self.checkpoint.load() if self.checkpoint is not None else None
        if saved is None:
            return
        for index in range(1, saved["phase"] + 1):
            self.enter_phase(index)
        self.progress = self.checkpoint.restore(saved, self.trainer, self.shuffling)

    def start_epoch(self, epoch: int) -> None:
        plan = self.setup.plan
        self._carried_momentum = 0.0
        if not plan.starts_phase(epoch):
            return
        index = plan.index_of(epoch)
        if index:
            self._carried_momentum = momentum_norm(self.setup.optimizer, plan.thawed_params(index))
            self.enter_phase(index)
        device = self.setup.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # measuring must not
            flops = flops_per_step(self.setup.net, *self.probe_batch, F.cross_entropy)  # shift the training RNG
        self.progress.phases.append(PhaseResult(index + 1, plan.frozen_params(index), flops,
                                                trainable_params=plan.trainable_params(index),
                                                frozen=plan.describe_frozen(index),
                                                lr_scale=plan.phases[index].lr_scale))

    def end_epoch(self, metrics: EpochMetrics, on_epoch: EpochCallback | None) -> bool:
        index = self.setup.plan.index_of(metrics.epoch)
        if len(self.setup.plan.phases) > 1:  # what unfreezing carried over, 0.0 in epochs that unfroze nothing
            metrics.trace[UNFROZEN_MOMENTUM] = self._carried_momentum
        phase = self.progress.phases[-1]
        phase.epochs += 1
        phase.frozen_weight_drift, phase.frozen_buffer_drift = self.drift.of(index)
        self.progress.history.append(metrics)
        # Report, then checkpoint: the trackers get every epoch at least once. A kill before the next
        # checkpoint repeats the epochs since the last one identically; the other order could lose their records.
        stop = bool(on_epoch is not None and on_epoch(metrics))
        crash_point(f"epoch-{metrics.epoch}-reported")
        ends_phase = self.setup.plan.starts_phase(metrics.epoch + 1) or metrics.epoch == self.spec.epochs
        if self.checkpoint is not None and (stop or ends_phase or self.checkpoint.due()):
            self.checkpoint.save(self.trainer, self.shuffling, index, self.progress_so_far())
        return stop

    def step_times_s(self) -> list[float]:
        return self.progress.earlier_step_times_s + self.trainer.timer.step_times_s()

    def wall_time_s(self) -> float:
        return self.progress.earlier_wall_time_s + time.perf_counter() - self.started

    def peak_memory(self) -> dict[str, int]:
        """The peaks of this process and of the earlier ones that ran this trial."""
        earlier, now = self.progress.earlier_peak_memory, self.trainer.memory.readings()
        return {key: max(earlier.get(key, 0), now.get(key, 0)) for key in earlier.keys() | now.keys()}

    def progress_so_far(self) -> Progress:
        return replace(self.progress, earlier_step_times_s=self.step_times_s(), earlier_wall_time_s=self.wall_time_s(),
                       earlier_peak_memory=self.peak_memory())


def _max_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def run_trial(spec: TrialSpec, task: Task, model_def: ModelDef, on_epoch: EpochCallback | None = None,
              checkpoint_dir: Path | None = None, settings: RunSettings = RunSettings(),
              feature_cache: FeatureCache | None = None, when_recorded: WhenRecorded = at_once,
              on_trained: Callable[[nn.Module, "TrialResult"], None] | None = None) -> TrialResult:
    """Run one trial. With `checkpoint_dir`, it checkpoints there at the end of an epoch once
    `settings.checkpoint_every_s` have passed since the last checkpoint, at the end of every phase and when it
    stops early, and, when it finds a checkpoint there, continues from it (repeating the epochs a killed process
    ran after its last checkpoint); the checkpoint is deleted once the trial finishes. `feature_cache` holds
    derived data trials share (cached_prefix's features); None: the trial keeps its own.

    `when_recorded` runs a step once what `on_epoch` handed to trackers so far is stored: a checkpoint is put
    in place (replacing the last one) by it, so a checkpoint never claims an epoch whose records could be lost.
    `on_trained` gets the trained network and the result before the network is dropped (to log the model).
    """
    with intra_op_threads(settings.threads):
        return _run(spec, task, model_def, on_epoch, checkpoint_dir, settings.checkpoint_every_s, feature_cache,
                    when_recorded, on_trained)


def _run(spec: TrialSpec, task: Task, model_def: ModelDef, on_epoch: EpochCallback | None,
         checkpoint_dir: Path | None, checkpoint_every_s: float, feature_cache: FeatureCache | None,
         when_recorded: WhenRecorded,
         on_trained: Callable[[nn.Module, "TrialResult"], None] | None) -> TrialResult:
    started = time.perf_counter()
    memory = make_peak_memory(resolve_device(spec.device))  # first: it hands back what earlier trials freed
    setup = set_up(spec, task, model_def)
    net, mechanism, optimizer, device = setup.net, setup.mechanism, setup.optimizer, setup.device

    fed = setup.feed.open(feature_cache)
    shuffling = torch.Generator().manual_seed(spec.seed)
    train_loader = fed.loader(fed.train, spec.batch_size, shuffling)
    val_loader = fed.loader(fed.val, EVAL_BATCH_SIZE)
    test_loader = fed.loader(fed.test, EVAL_BATCH_SIZE)
    probe_batch = tuple(t.to(device) for t in next(iter(fed.loader(fed.train, spec.batch_size))))

    timer = make_timer(device)
    trainer = Trainer(net, optimizer, mechanism, timer, device, setup.scheduler, spec.grad_clip_norm,
                      eval_mode_modules=held_norms(spec, net, setup.frozen), memory=memory,
                      tracer=Tracer(net, optimizer, mechanism, spec.grad_clip_norm))
    trainer.measure_starting_loss(*probe_batch)  # before resuming: the same untrained model in every process
    checkpoint = (Checkpoint(checkpoint_dir, repr(spec), checkpoint_every_s, when_recorded)
                  if checkpoint_dir is not None else None)
    run = PhasedRun(spec, setup, trainer, probe_batch, shuffling, checkpoint, started)
    run.resume()

    trainer.fit(train_loader, val_loader, range(len(run.progress.history) + 1, spec.epochs + 1),
                on_epoch=lambda metrics: run.end_epoch(metrics, on_epoch), on_epoch_start=run.start_epoch)
    history, phases = run.progress.history, run.progress.phases
    timing = Timing.from_steps(run.step_times_s(), samples=len(task.train) * len(history), extra_s=fed.build_s)
    test_accuracy = trainer.accuracy(test_loader)
    if checkpoint is not None:
        checkpoint.discard()

    n_frozen = phases[0].frozen_params
    deviations = [m.trace[SPLIT_DEVIATION] for m in history if SPLIT_DEVIATION in m.trace]
    result = TrialResult(
        history=history,
        val_accuracy=history[-1].val_accuracy,
        test_accuracy=test_accuracy,
        test_examples=len(task.test),
        train_time_s=timing.train_time_s,
        wall_time_s=run.wall_time_s(),
        step_time_ms=timing.step_time_ms,
        samples_per_s=timing.samples_per_s,
        flops_per_step=round(sum(p.flops_per_step * p.epochs for p in phases) / len(history)),
        held_bytes=held_bytes(net, optimizer, mechanism.held_bytes() + fed.resident_bytes),
        trainable_params=sum(p.numel() for p in net.parameters()) - n_frozen,
        frozen_params=n_frozen,
        frozen_weight_drift=_max_or_none([p.frozen_weight_drift for p in phases]),
        frozen_buffer_drift=_max_or_none([p.frozen_buffer_drift for p in phases]),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        stopped_early=len(history) < spec.epochs,
        phases=phases,
        peak_memory=run.peak_memory(),
        feed_metrics=fed.metrics,
        epochs_trained=len(history),
        max_lr_split_deviation=max(deviations, default=None),
        invariant_failed_epochs=sum(not invariant_holds(m.trace) for m in history),
        backbone_sha256=setup.backbone_sha256,
    )
    if on_trained is not None:
        on_trained(net, result)
    return result
