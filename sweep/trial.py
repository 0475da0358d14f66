"""One trial: build the model, freeze it by the chosen mechanism, train, and measure everything."""

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from sweep.data import Task
from sweep.errors import choice_error
from sweep.lr_split import make_lr_split, param_groups
from sweep.measure import DriftProbe, Timing, flops_per_step, held_bytes, make_timer
from sweep.models import ModelDef
from sweep.optim import OptimizerSpec, make_optimizer
from sweep.schedules import make_schedule
from sweep.selection import FrozenSet, Selection, resolve
from sweep.strategies import MECHANISMS
from sweep.train import EpochCallback, EpochMetrics, Trainer

NORM_POLICIES = ("train", "eval")
NORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


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


@dataclass
class TrialResult:
    history: list[EpochMetrics]
    val_accuracy: float
    test_accuracy: float
    train_time_s: float
    wall_time_s: float
    step_time_ms: float
    samples_per_s: float
    flops_per_step: int
    peak_memory_bytes: int
    trainable_params: int
    frozen_params: int
    frozen_weight_drift: float | None  # None: nothing was frozen
    frozen_buffer_drift: float | None
    stopped_early: bool

    def final_metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k not in ("history", "stopped_early") and v is not None}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def peak_memory(device: torch.device, net: nn.Module, optimizer: torch.optim.Optimizer, extra: int) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return held_bytes(net, optimizer, extra)


def _frozen_buffers(net: nn.Module, frozen: FrozenSet) -> dict[str, torch.Tensor]:
    """Floating-point buffers of frozen modules (running statistics); step counters are not weights."""
    return {f"{m}.{b}": buf for m, module in frozen.frozen_modules(net).items()
            for b, buf in module.named_buffers(recurse=False) if buf.is_floating_point()}


def run_trial(spec: TrialSpec, task: Task, model_def: ModelDef, on_epoch: EpochCallback | None = None) -> TrialResult:
    started = time.perf_counter()
    if spec.norm_policy not in NORM_POLICIES:
        raise choice_error("norm policy", spec.norm_policy, NORM_POLICIES)
    mechanism_cls = MECHANISMS.get(spec.strategy)
    split = make_lr_split(spec.lr_split, **spec.lr_split_options)
    device = resolve_device(spec.device)

    torch.manual_seed(spec.seed)  # the same seed gives the same new head and data order, whatever the mechanism
    net = model_def.build(task.num_classes).to(device)
    frozen = resolve(net, spec.selection) if mechanism_cls.freezes else FrozenSet()
    groups = param_groups(net, frozen, split, spec.optimizer.lr, spec.optimizer.weight_decay,
                          spec.optimizer.no_decay_bias_norm)
    mechanism = mechanism_cls(net, frozen)
    optimizer = make_optimizer(mechanism.optimizer_groups(groups), spec.optimizer)

    train_loader = DataLoader(task.train, batch_size=spec.batch_size, shuffle=True,
                              generator=torch.Generator().manual_seed(spec.seed))
    val_loader = DataLoader(task.val, batch_size=256)
    test_loader = DataLoader(task.test, batch_size=256)
    scheduler = make_schedule(spec.schedule, optimizer, spec.epochs * len(train_loader), spec.optimizer.lr,
                              **spec.schedule_options)

    probe_inputs, probe_targets = next(iter(DataLoader(task.train, batch_size=spec.batch_size)))
    flops = flops_per_step(net, probe_inputs.to(device), probe_targets.to(device), F.cross_entropy)
    weight_probe = DriftProbe({n: p for n, p in net.named_parameters() if n in frozen.param_names})
    buffer_probe = DriftProbe(_frozen_buffers(net, frozen))
    frozen_norms = [m for m in frozen.frozen_modules(net).values() if isinstance(m, NORM_TYPES)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    timer = make_timer(device)
    trainer = Trainer(net, optimizer, mechanism, timer, device, scheduler, spec.grad_clip_norm,
                      eval_mode_modules=frozen_norms if spec.norm_policy == "eval" else ())
    history = trainer.fit(train_loader, val_loader, spec.epochs, on_epoch)
    timing = Timing.from_steps(timer.step_times_s(), samples=len(task.train) * len(history))
    memory = peak_memory(device, net, optimizer, mechanism.held_bytes())
    test_accuracy = trainer.accuracy(test_loader)

    n_frozen = sum(p.numel() for n, p in net.named_parameters() if n in frozen.param_names)
    return TrialResult(
        history=history,
        val_accuracy=history[-1].val_accuracy,
        test_accuracy=test_accuracy,
        train_time_s=timing.train_time_s,
        wall_time_s=time.perf_counter() - started,
        step_time_ms=timing.step_time_ms,
        samples_per_s=timing.samples_per_s,
        flops_per_step=flops,
        peak_memory_bytes=memory,
        trainable_params=sum(p.numel() for p in net.parameters()) - n_frozen,
        frozen_params=n_frozen,
        frozen_weight_drift=weight_probe.max_abs_change() if frozen else None,
        frozen_buffer_drift=buffer_probe.max_abs_change() if frozen else None,
        stopped_early=len(history) < spec.epochs,
    )
