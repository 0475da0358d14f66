"""From the composed Hydra config (as a plain dict) to the engine's objects.

Every check that can fail on a user's config runs here, before any study,
run or file is created, so a mistake ends cleanly with one line.
"""

import copy
from dataclasses import fields
from typing import Any

from sweep.data import Task, make_task
from sweep.errors import ConfigError
from sweep.feature_cache import FeatureCache
from sweep.models import ModelDef, make_model_def
from sweep.optim import OptimizerSpec
from sweep.paths import Workspace
from sweep.phases import Phase, gradual_unfreezing
from sweep.selection import Selection
from sweep.trial import CHECKPOINT_EVERY_S, RunSettings, TrialSpec

Config = dict[str, Any]


def split_name(section: Config, what: str) -> tuple[str, dict]:
    """A config group entry is a `name` plus the builder's options."""
    if not isinstance(section, dict) or "name" not in section:
        raise ConfigError(f"{what} needs a `name`; pick a config, e.g. {what}=<choice>")
    options = dict(section)
    return options.pop("name"), options


def get_path(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            raise KeyError(dotted)
        node = node[key]
    return node


def has_path(cfg: Config, dotted: str) -> bool:
    try:
        get_path(cfg, dotted)
    except KeyError:
        return False
    return True


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """A copy of `cfg` with dotted keys set to `values` (the sampled hyperparameters)."""
    result = copy.deepcopy(cfg)
    for dotted, value in values.items():
        *parents, last = dotted.split(".")
        node = result
        for key in parents:
            node = node[key]
        node[last] = value
    return result


def flatten(cfg: Config, prefix: str = "") -> dict[str, Any]:
    """Dotted keys -> leaf values: how a trial's config is logged as MLflow params."""
    flat = {}
    for key, value in cfg.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _int_or_none(value: Any, what: str) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ConfigError(f"{what}={value!r} must be a whole number")


def selection(freeze: Config) -> Selection:
    names = freeze.get("names") or []
    indices = freeze.get("indices") or []
    if isinstance(names, str):
        names = [names]
    if isinstance(indices, int):
        indices = [indices]
    return Selection(depth=_int_or_none(freeze.get("depth"), "freeze.depth"),
                     names=tuple(str(n) for n in names),
                     indices=tuple(_int_or_none(i, "freeze.indices") for i in indices),
                     regex=freeze.get("regex") or None)


PHASE_KEYS = ("epochs", "freeze", "lr_scale")


def phase_list(cfg: Config, first: Selection, epochs: int) -> tuple[Phase, ...]:
    """`phases`: a list of {epochs, freeze, lr_scale}; or `gradual_unfreezing`: true or {epochs_per_block,
    lr_scale}, ULMFiT-style from freeze.depth over train.epochs. Neither: no phases."""
    listed, gradual = cfg.get("phases") or [], cfg.get("gradual_unfreezing")
    gradual = None if gradual is False else gradual
    if listed and gradual is not None:
        raise ConfigError("give either phases or gradual_unfreezing, not both")
    if gradual is not None:
        try:
            return gradual_unfreezing(first.depth, epochs, **({} if gradual is True else gradual))
        except TypeError as err:
            raise ConfigError(f"gradual_unfreezing: {err}; its keys are epochs_per_block and lr_scale") from None
    phases = []
    for index, phase in enumerate(listed):
        if not isinstance(phase, dict) or "epochs" not in phase or set(phase) - set(PHASE_KEYS):
            raise ConfigError(f"phases[{index}]={phase!r} must be a mapping with epochs and optionally "
                              f"freeze and lr_scale; known keys: {', '.join(PHASE_KEYS)}")
        phases.append(Phase(_int_or_none(phase["epochs"], f"phases[{index}].epochs"),
                            selection(phase.get("freeze") or {}), phase.get("lr_scale", 1.0)))
    return tuple(phases)


def optimizer_spec(section: Config) -> OptimizerSpec:
    known = {f.name for f in fields(OptimizerSpec)}
    unknown = set(section) - known
    if unknown:
        raise ConfigError(f"optimizer has unknown keys {sorted(unknown)}; known: {', '.join(sorted(known))}")
    options = dict(section)
    if "betas" in options:
        options["betas"] = tuple(options["betas"])
    return OptimizerSpec(**options)


def trial_spec(cfg: Config, strategy: str, seed: int) -> TrialSpec:
    lr_split, lr_split_options = split_name(cfg["lr_split"], "lr_split")
    schedule, schedule_options = split_name(cfg["schedule"], "schedule")
    train = cfg["train"]
    epochs = _int_or_none(train["epochs"], "train.epochs")
    batch_size = _int_or_none(train["batch_size"], "train.batch_size")
    if not epochs or epochs < 1 or not batch_size or batch_size < 1:
        raise ConfigError(f"train.epochs={epochs} and train.batch_size={batch_size} must both be >= 1")
    frozen = selection(cfg["freeze"])
    phases = phase_list(cfg, frozen, epochs)
    if phases:  # they decide what is frozen when, and for how long in all
        frozen, epochs = phases[0].freeze, sum(p.epochs for p in phases)
    return TrialSpec(
        strategy=strategy,
        selection=frozen,
        norm_policy=cfg["freeze"].get("norm_policy", "train"),
        lr_split=lr_split,
        lr_split_options=lr_split_options,
        optimizer=optimizer_spec(cfg["optimizer"]),
        schedule=schedule,
        schedule_options=schedule_options,
        epochs=epochs,
        batch_size=batch_size,
        grad_clip_norm=train.get("grad_clip_norm"),
        seed=seed,
        device=cfg["device"],
        phases=phases,
    )


RUN_SETTINGS = ("threads", "checkpoint_every_s")
"""Keys of `train` that say how trials run, not what they compute: a study accepts workers that differ in them."""


def run_settings(train: Config) -> RunSettings:
    """How trials run; sweep/schema.py has checked both values (threads >= 1 or null, seconds >= 0)."""
    return RunSettings(threads=train.get("threads"),
                       checkpoint_every_s=float(train.get("checkpoint_every_s", CHECKPOINT_EVERY_S)))


def without_run_settings(cfg: Config) -> Config:
    return {**cfg, "train": {k: v for k, v in cfg["train"].items() if k not in RUN_SETTINGS}}


def feature_cache(cfg: Config, workspace: Workspace) -> FeatureCache:
    """`cache.max_bytes` of features held in memory; every entry is also kept under results/cache/features/."""
    max_bytes = cfg["cache"]["max_bytes"]
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise ConfigError(f"cache.max_bytes={max_bytes!r} must be a whole number of bytes >= 0 (0: keep nothing in "
                          "memory, read every cache from its file)")
    return FeatureCache(workspace.path("cache", "features"), max_bytes)


def model_and_task(cfg: Config, workspace: Workspace) -> tuple[ModelDef, Task]:
    model_name, model_options = split_name(cfg["model"], "model")
    data_name, data_options = split_name(cfg["data"], "data")
    model_def = make_model_def(model_name, workspace.cache_dir, workspace.base_dir, **model_options)
    return model_def, make_task(data_name, model_def.input_spec, workspace.base_dir, **data_options)
