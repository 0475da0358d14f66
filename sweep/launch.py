"""What `python -m sweep.run` launches: validate and open everything, then run every strategy's study.

Kept apart from `sweep.run`, which only parses the command line, so that `--help` and a mistyped
config group answer without importing torch, MLflow or scikit-learn.
"""

from pathlib import Path

import optuna

from sweep.config import (Workspace, feature_cache, has_path, model_and_task, run_settings, split_name, trial_spec,
                          without_run_settings)
from sweep.errors import ConfigError, NotApplicable
from sweep.executors import make_executor
from sweep.grid import Grid, GridPoint
from sweep.job import TrialInputs
from sweep.parent_run import record_studies
from sweep.paths import first_missing, remove_empty_dirs
from sweep.repeats import Repeats
from sweep.search import SearchSettings, storage_opener
from sweep.stages import stage
from sweep.step_timing import TimingSettings
from sweep.stores import outage_is_one_line
from sweep.strategies import MECHANISMS
from sweep.study import BASELINE, StrategyStudy, StudyPlan, print_next_steps, print_summary
from sweep.threads import share_cores, threads_for
from sweep.timing import is_timed, time_studies
from sweep.tracking import Tracker, check_reachable
from sweep.trial import set_up
from sweep.workers import WorkerRegistry

TIMING_STAGE = "timing each strategy's chosen configuration side by side"
NOT_TRIAL_CONFIG = ("search", "tracking", "results_dir", "experiment", "strategy", "executor", "cache", "timing")


def plan(cfg: dict, base_dir: Path, fixed: set[str]) -> StudyPlan:
    """Validate everything and open every store, before a single study or run is created. A mistake found after
    results_dir was made for the stores removes it again while it is empty (a SQLite MLflow store made meanwhile
    is taken back by `sweep.fresh_store`); pretrained weights are cached only once every check has passed."""
    workspace = Workspace.from_config(cfg, base_dir)
    new_results = first_missing(workspace.results_dir)
    try:
        return checked_plan(cfg, base_dir, fixed, workspace)
    except ConfigError:
        if new_results is not None:
            remove_empty_dirs(workspace.results_dir, new_results)
        raise


def checked_plan(cfg: dict, base_dir: Path, fixed: set[str], workspace: Workspace) -> StudyPlan:
    runtime = run_settings(cfg["train"])
    workers = WorkerRegistry(workspace.results_dir)
    share_cores(threads_for(runtime.threads, workers.live()))  # before any torch work: checks build models
    chosen = "strategy" in cfg
    strategies = [cfg["strategy"]["name"]] if chosen else MECHANISMS.names()
    for name in strategies:
        MECHANISMS.get(name)
    settings = SearchSettings.from_config(cfg["search"], lambda path: has_path(cfg, path), fixed)
    timing = TimingSettings.from_config(cfg["timing"])
    executor = make_executor(*split_name(cfg["executor"], "executor"))
    executor.check()
    cache = feature_cache(cfg, workspace)
    model_def, task = model_and_task(cfg, workspace)
    grid = Grid.from_config(cfg["search"]["grid"])
    if grid and cfg.get("phases"):
        raise ConfigError("search.grid varies what is frozen, but phases=[...] set the selection of every phase: "
                          "drop one of them")
    left_out = {}
    units = []
    for strategy, point in grid.units(strategies, cfg, lambda s: MECHANISMS.get(s).freezes, BASELINE):
        try:
            set_up(trial_spec(point.apply(cfg), strategy, cfg["seed"]), task, model_def)
        except NotApplicable as err:  # asked for by name: the user's mistake; among all: left out, saying why
            if chosen:
                raise at_point(point, err) from None
            left_out[f"{strategy} {point.short}".strip()] = str(at_point(point, err))
        except ConfigError as err:
            raise at_point(point, err) from None
        else:
            units.append((strategy, point))
    strategies = [s for s in strategies if any(s == strategy for strategy, _ in units)]

    tracking_uri = workspace.tracking_uri(cfg["tracking"]["uri"])
    open_storage = storage_opener(settings.storage, workspace.results_dir, base_dir)
    workspace.results_dir.mkdir(parents=True, exist_ok=True)
    check_reachable(tracking_uri)
    storage = open_storage()
    trial_config = {k: v for k, v in without_run_settings(cfg).items() if k not in NOT_TRIAL_CONFIG}
    experiment = str(cfg["experiment"])  # `experiment=nan` or `=2024` arrive as numbers from the command line
    tracking = cfg["tracking"]
    tracker = Tracker(tracking_uri, experiment, workspace.results_dir, tracking["system_metrics"],
                      tracking["log_model"], tracking["write_every_s"])
    study_plan = StudyPlan(experiment, strategies, settings, storage, trial_config, cfg["seed"], model_def,
                           task, tracker, workspace, runtime, workers, executor, timing, units, grid, cache, left_out)
    study_plan.check_studies()
    model_def.save_cache()  # the checks built the model: pretrained weights are written only now
    workers.register()
    return study_plan


def at_point(point: GridPoint, err: ConfigError) -> ConfigError:
    """An error of one grid point says which: `search.grid point freeze.names=[conv2]: ...`."""
    return type(err)(f"search.grid point {point.label}: {err}") if point else err


def print_end_of_run(study_plan: StudyPlan) -> None:
    """The report's answer and table for this sweep, then where to look next."""
    from sweep.report.records import Sources  # the report's pipeline: imported only once the sweep is done
    from sweep.report.terminal import end_of_run

    sources = Sources(study_plan.tracker.uri, study_plan.settings.storage, study_plan.workspace.results_dir)
    print()
    print(end_of_run(sources, study_plan.experiment, study_plan.lr_split))
    print_next_steps(study_plan)


def run(cfg: dict, base_dir: Path, fixed: set[str]) -> None:
    """Every strategy's study, then their confirmation runs (both run by the executor), the side-by-side timing
    and the answer."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress bar and summary say it; failures get one line each
    study_plan = plan(cfg, base_dir, fixed)
    for reason in study_plan.left_out.values():
        print(f"not compared: {reason}")
    studies = [StrategyStudy(study_plan, strategy, point) for strategy, point in study_plan.units]
    inputs = TrialInputs(study_plan.model_def, study_plan.task, study_plan.dataset, study_plan.feature_cache)
    repeats = [Repeats(study) for study in studies]
    with outage_is_one_line():
        study_plan.executor.run(studies, inputs)
        study_plan.executor.run(repeats, inputs)
        timings = {}  # by study; none: the parent runs keep the figures measured with their current choices
        retime = any(r.ran for r in repeats) or not all(is_timed(study_plan, study) for study in studies)
        if study_plan.timing.rounds and retime:
            with stage(TIMING_STAGE):
                timings = time_studies(study_plan, studies, study_plan.timing)
        record_studies(study_plan, studies, cfg, timings)
    if study_plan.workers.live() == 1:  # no other worker of this host is about to hand out a trial in them
        for study in studies:  # each folder kept while anything is in it
            remove_empty_dirs(study.checkpoints_dir, study_plan.workspace.path("checkpoints"))
    if study_plan.settings.space:  # a search ran: its table and notes
        print_summary(study_plan, studies)
    print_end_of_run(study_plan)
