"""Optuna, in-process: one study per (experiment, strategy, lr split), the same sampler seed and budget for each."""

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from sweep.config import split_name
from sweep.errors import ConfigError, one_line
from sweep.faults import crash_point
from sweep.paths import inside
from sweep.registry import Registry
from sweep.schema import dimensions
from sweep.stores import open_journal, retry_schema_race
from sweep.workers import WORKER

OBJECTIVES = {False: ["maximize"], True: ["maximize", "minimize"]}  # key: multi_objective
METRIC_NAMES = {False: ["val_accuracy"], True: ["val_accuracy", "train_time_s"]}  # what optuna-dashboard shows

PRUNERS: Registry[type[optuna.pruners.BasePruner]] = Registry("pruner")
PRUNERS.register("median")(optuna.pruners.MedianPruner)
PRUNERS.register("threshold")(optuna.pruners.ThresholdPruner)
PRUNERS.register("none")(optuna.pruners.NopPruner)
DONE_STATES = (TrialState.COMPLETE, TrialState.PRUNED)  # what a study is topped up to n_trials of
WORKER_ATTR = "worker"  # the trial's user attribute naming the process that runs it
RUN_ATTR = "mlflow_run_id"  # the trial's user attribute naming its MLflow run, set once an attempt has run
STATE_NAMES = {TrialState.COMPLETE: "finished", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "running"}  # as MLflow's `sweep.state` says it


@dataclass(frozen=True)
class Dimension:
    """One searched hyperparameter: a config path and its range (checked by `sweep.schema.Dimension`)."""

    path: str
    type: str
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> float | int:
        suggest = {"float": trial.suggest_float, "int": trial.suggest_int}
        return suggest[self.type](self.path, self.low, self.high, log=self.log)


@dataclass
class SearchSettings:
    n_trials: int
    max_failures: int
    sampler_seed: int
    storage: str | None
    multi_objective: bool
    pruner: optuna.pruners.BasePruner
    space: list[Dimension] = field(default_factory=list)
    repeats: int = 1
    repeat_seed_offset: int = 1000

    @classmethod
    def from_config(cls, section: dict[str, Any], cfg_has: Callable[[str], bool], fixed: set[str]) -> "SearchSettings":
        """Keeps only dimensions the config has and the user did not fix on the command line."""
        space = [Dimension(path, **bounds) for path, bounds in dimensions(section.get("space")).items()
                 if path not in fixed and cfg_has(path)]
        multi_objective = section["multi_objective"]
        pruner_name, pruner_options = split_name(section["pruner"], "search.pruner")
        pruner = PRUNERS.build("none" if multi_objective else pruner_name, {} if multi_objective else pruner_options)
        return cls(section["n_trials"], section["max_failures"], section["sampler_seed"], section.get("storage"),
                   multi_objective, pruner, space, section["repeats"], section["repeat_seed_offset"])


def journal_path(results_dir: Path) -> Path:
    return inside(results_dir, "optuna.journal")


def journal_storage(results_dir: Path) -> BaseStorage:
    """The default: a journal file under results_dir, safe for several processes on one host, healed if torn."""
    results_dir.mkdir(parents=True, exist_ok=True)
    return open_journal(journal_path(results_dir))


def is_database_url(storage: str) -> bool:
    return "://" in storage


def journal_file(storage: str, base_dir: Path) -> Path:
    """`search.storage` given as a journal file's path, as optuna-dashboard takes it (relative: to `base_dir`)."""
    path = (base_dir / Path(storage).expanduser()).resolve()
    if path.is_dir() or not path.parent.is_dir():
        problem = "is a directory" if path.is_dir() else f"is in a directory that does not exist ({path.parent})"
        raise ConfigError(f"search.storage={storage!r} {problem}; give the path of an Optuna journal file in an "
                          "existing directory, or a database URL such as postgresql://user@host/db")
    return path


def storage_opener(storage: str | None, results_dir: Path, base_dir: Path) -> Callable[[], BaseStorage]:
    """Check `search.storage` now; what it returns opens the storage once every other check has passed.

    A database is connected to at once, so a bad URL fails before any work; a journal file (the default
    under results_dir, or a path given) is only created when opened.
    """
    if storage is None:
        return lambda: journal_storage(results_dir)
    if is_database_url(storage):
        database = database_storage(storage)
        return lambda: database
    journal = journal_file(storage, base_dir)
    return lambda: open_journal(journal)


def database_storage(url: str) -> BaseStorage:
    """A database shared by workers on many machines; connecting here makes a bad URL fail before any work."""
    def connect() -> BaseStorage:
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna but long-standing and needed here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180)

    try:
        return retry_schema_race(connect)  # workers started together on a fresh database all create its tables
    except Exception as err:  # SQLAlchemy/driver errors of many kinds all mean "cannot use this storage"
        raise ConfigError(f"cannot use Optuna storage {url!r} ({one_line(err)[:200]}); check the URL and that the "
                          "database server is running, or leave search.storage unset for a local journal file") from None


def study_name(experiment: str, strategy: str, lr_split: str, point: str = "") -> str:
    """`point`: a grid point's label (search.grid), one study per point."""
    return f"{experiment}.{strategy}.{lr_split}" + (f"@{point}" if point else "")


def check_study(storage: BaseStorage, name: str, fixed_config: dict[str, Any]) -> None:
    """Refuse, before writing anything, to mix trials of a different fixed configuration into a study."""
    study_id = _study_id(storage, name)
    if study_id is None:
        return
    recorded = recorded_fingerprint(storage.get_study_user_attrs(study_id).get("config"))
    fingerprint = fingerprint_of(fixed_config)
    if recorded is not None and recorded != fingerprint:
        changed = sorted(k for k in recorded.keys() | fingerprint.keys() if recorded.get(k) != fingerprint.get(k))
        raise ConfigError(f"study {name!r} already holds trials run with a different configuration "
                          f"(changed: {', '.join(changed)}); pass experiment=NEW_NAME to start a new comparison")


def open_study(storage: BaseStorage, name: str, settings: SearchSettings,
               fixed_config: dict[str, Any]) -> "WorkerStudy":
    """Create or reopen a study (after `check_study`)."""
    optuna.create_study(storage=storage, study_name=name, directions=OBJECTIVES[settings.multi_objective],
                        load_if_exists=True)
    study = WorkerStudy(name, storage, PairedSampler(settings.sampler_seed), settings.pruner)
    study.set_user_attr("config", fixed_config)  # plain values: optuna-dashboard shows them as they are
    with warnings.catch_warnings():  # "experimental" in Optuna 5, and what names the objectives in the dashboard
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRIC_NAMES[settings.multi_objective])
    return study


class PairedSampler(optuna.samplers.BaseSampler):
    """Trial i's parameters depend on the sampler seed and i alone, drawn at random within the searched ranges.

    So trial i of every strategy's study gets the same ones whatever happened
    before it: interruptions, resumed or failed trials, other workers. (TPE's
    suggestions follow each study's own results, and seeding it by how many
    trials a study held broke pairing on every restart.)
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict) -> dict:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        key = hashlib.sha256(f"{self.seed}/{trial.number}/{param_name}".encode()).digest()  # same in every process
        seed = int.from_bytes(key[:4], "little")
        return optuna.samplers.RandomSampler(seed=seed).sample_independent(study, trial, param_name,
                                                                          param_distribution)


class WorkerStudy(optuna.Study):
    """A study whose new trials name their worker from the moment they exist.

    `Study.ask` creates a trial and only then could the objective say who runs
    it: a worker killed in between left a RUNNING trial that no later run could
    tell was orphaned. Here the trial and its worker are one storage write.
    """

    def ask(self, fixed_distributions: dict | None = None) -> optuna.Trial:
        if fixed_distributions:
            raise ValueError("WorkerStudy.ask takes no fixed distributions")
        template = optuna.trial.create_trial(state=TrialState.RUNNING, user_attrs={WORKER_ATTR: WORKER})
        trial_id = self._storage.create_new_trial(self._study_id, template_trial=template)
        crash_point("trial-created")
        return optuna.Trial(self, trial_id)


def _study_id(storage: BaseStorage, name: str) -> int | None:
    """The study's id, or None when it does not exist yet (one storage round trip)."""
    try:
        return storage.get_study_id_from_name(name)
    except KeyError:
        return None


def done_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=DONE_STATES)


@dataclass
class TrialBudget:
    """How many more trials one session of a study may start.

    The study is topped up to `n_trials` done (finished or pruned): a failed
    trial is replaced, until `max_failures` have failed in this session, so a
    cause that fails every trial does not burn compute forever.
    """

    to_start: int
    max_failures: int
    failures: int = 0

    def take(self) -> bool:
        if self.to_start <= 0:
            return False
        self.to_start -= 1
        return True

    def failed(self) -> bool:
        """Count a failed trial and replace it; True when it was the last failure allowed: no more trials start."""
        self.failures += 1
        if self.failures < self.max_failures:
            self.to_start += 1
            return False
        self.to_start = 0
        return self.failures == self.max_failures


def fingerprint_of(flat_config: dict[str, Any]) -> dict[str, str]:
    """A fixed configuration as comparable texts: each value JSON-encoded, dict keys sorted."""
    return {k: json.dumps(v, sort_keys=True) for k, v in sorted(flat_config.items())}


def recorded_fingerprint(recorded: dict[str, Any] | None) -> dict[str, str] | None:
    """The fingerprint of a study's `config` attribute, in either form it was stored in.

    Now: the plain values. Before: each value already JSON-encoded in a string, which a plain
    configuration never is throughout (train.epochs, for one, is a number), so the old form is
    recognised by every value being a string that decodes as JSON.
    """
    if recorded is None:
        return None
    if all(isinstance(v, str) and _is_json(v) for v in recorded.values()):
        return dict(recorded)
    return fingerprint_of(recorded)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
