"""Optuna, in-process: one study per (experiment, strategy, lr split), the same sampler seed and budget for each."""

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweep.config import split_name
from sweep.errors import ConfigError, one_line
from sweep.registry import Registry
from sweep.stores import open_journal, retry_schema_race

OBJECTIVES = {False: ["maximize"], True: ["maximize", "minimize"]}  # key: multi_objective

PRUNERS: Registry[type[optuna.pruners.BasePruner]] = Registry("pruner")
PRUNERS.register("median")(optuna.pruners.MedianPruner)
PRUNERS.register("threshold")(optuna.pruners.ThresholdPruner)
PRUNERS.register("none")(optuna.pruners.NopPruner)
FINAL_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: a config path and its range."""

    path: str
    type: str
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> float | int:
        suggest = {"float": trial.suggest_float, "int": trial.suggest_int}
        if self.type not in suggest:
            raise ConfigError(f"search.space.{self.path}.type={self.type!r}; choose one of: float, int")
        return suggest[self.type](self.path, self.low, self.high, log=self.log)


@dataclass
class SearchSettings:
    n_trials: int
    sampler_seed: int
    storage: str | None
    multi_objective: bool
    pruner: optuna.pruners.BasePruner
    space: list[Dimension] = field(default_factory=list)

    @classmethod
    def from_config(cls, section: dict[str, Any], cfg_has: Callable[[str], bool], fixed: set[str]) -> "SearchSettings":
        """Keeps only dimensions the config has and the user did not fix on the command line."""
        n_trials = section["n_trials"]
        if not isinstance(n_trials, int) or n_trials < 1:
            raise ConfigError(f"search.n_trials={n_trials!r} must be a whole number >= 1")
        space = []
        for path, bounds in (section.get("space") or {}).items():
            if path in fixed or not cfg_has(path):
                continue
            try:
                dim = Dimension(path, **bounds)
            except TypeError as err:
                raise ConfigError(f"search.space.{path}: {err}; give type, low, high and optionally log") from None
            if not dim.low < dim.high or (dim.log and dim.low <= 0):
                raise ConfigError(f"search.space.{path}: need low < high (and low > 0 with log), got {bounds}")
            space.append(dim)
        multi_objective = bool(section["multi_objective"])
        pruner_name, pruner_options = split_name(section["pruner"], "search.pruner")
        pruner = PRUNERS.build("none" if multi_objective else pruner_name, {} if multi_objective else pruner_options)
        return cls(n_trials, section["sampler_seed"], section.get("storage"), multi_objective, pruner, space)


def journal_path(results_dir: Path) -> Path:
    return results_dir / "optuna.journal"


def journal_storage(results_dir: Path) -> BaseStorage:
    """The default: a journal file under results_dir, safe for several processes on one host, healed if torn."""
    results_dir.mkdir(parents=True, exist_ok=True)
    return open_journal(journal_path(results_dir))


def database_storage(url: str) -> BaseStorage:
    """A database shared by workers on many machines; connecting here makes a bad URL fail before any work."""
    if "://" not in url:
        raise ConfigError(f"search.storage={url!r} is not a database URL; "
                          "use e.g. postgresql://user:password@host/db, or leave it unset")
    def connect() -> BaseStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna but long-standing and needed here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)

    try:
        return retry_schema_race(connect)  # workers started together on a fresh database all create its tables
    except Exception as err:  # SQLAlchemy/driver errors of many kinds all mean "cannot use this storage"
        raise ConfigError(f"cannot use Optuna storage {url!r} ({one_line(err)[:200]}); check the URL and that the "
                          "database server is running, or leave search.storage unset for a local journal file") from None


def study_name(experiment: str, strategy: str, lr_split: str) -> str:
    return f"{experiment}.{strategy}.{lr_split}"


def check_study(storage: BaseStorage, name: str, fingerprint: dict) -> None:
    """Refuse, before writing anything, to mix trials of a different fixed configuration into a study."""
    study_id = _study_id(storage, name)
    if study_id is None:
        return
    recorded = storage.get_study_user_attrs(study_id).get("config")
    if recorded is not None and recorded != fingerprint:
        changed = sorted(k for k in recorded.keys() | fingerprint.keys() if recorded.get(k) != fingerprint.get(k))
        raise ConfigError(f"study {name!r} already holds trials run with a different configuration "
                          f"(changed: {', '.join(changed)}); pass experiment=NEW_NAME to start a new comparison")


def open_study(storage: BaseStorage, name: str, settings: SearchSettings, fingerprint: dict) -> optuna.Study:
    """Create or reopen a study (after `check_study`).

    The sampler seed is offset by the trials already there, so a top-up run does
    not replay the first suggestions, and every strategy's study still gets the same ones.
    """
    study_id = _study_id(storage, name)
    existing = len(storage.get_all_trials(study_id)) if study_id is not None else 0
    sampler = optuna.samplers.TPESampler(seed=settings.sampler_seed + existing)
    study = optuna.create_study(storage=storage, study_name=name, sampler=sampler, pruner=settings.pruner,
                                directions=OBJECTIVES[settings.multi_objective], load_if_exists=True)
    study.set_user_attr("config", fingerprint)
    return study


def _study_id(storage: BaseStorage, name: str) -> int | None:
    """The study's id, or None when it does not exist yet (one storage round trip)."""
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def finished_trials(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False) if t.state in FINAL_STATES]


def fingerprint_of(flat_config: dict[str, Any]) -> dict[str, str]:
    """JSON-safe, order-independent record of a study's fixed configuration."""
    return {k: json.dumps(v, sort_keys=True) for k, v in sorted(flat_config.items())}
