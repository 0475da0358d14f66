"""`python -m sweep.run`: run the Optuna studies of one strategy (`+strategy=NAME`) or all of them.

    python -m sweep.run                                   # compare every strategy
    python -m sweep.run +strategy=zero_lr                 # one strategy
    python -m sweep.run -m +strategy=zero_lr,requires_grad model=digits_cnn
"""

import sys
from pathlib import Path

import hydra
import optuna
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweep.cli import CONF_DIR, check_group_choices, fail_cleanly
from sweep.config import Workspace, has_path, model_and_task, run_settings, trial_spec, without_run_settings
from sweep.search import SearchSettings, database_storage, journal_storage
from sweep.strategies import MECHANISMS
from sweep.study import StrategyStudy, StudyPlan, print_summary
from sweep.threads import share_cores, threads_for
from sweep.tracking import Tracker, check_reachable, default_uri
from sweep.trial import set_up
from sweep.workers import WorkerRegistry

NOT_TRIAL_CONFIG = ("search", "tracking", "results_dir", "experiment", "strategy")


def explicit_overrides() -> set[str]:
    """Keys the user set on the command line: fixed, never searched."""
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def plan(cfg: dict, base_dir: Path, fixed: set[str]) -> StudyPlan:
    """Validate everything and open every store, before a single study or run is created."""
    workspace = Workspace.from_config(cfg, base_dir)
    runtime = run_settings(cfg["train"])
    workers = WorkerRegistry(workspace.results_dir)
    share_cores(threads_for(runtime.threads, workers.live()))  # before any torch work: checks build models
    strategies = [cfg["strategy"]["name"]] if "strategy" in cfg else MECHANISMS.names()
    for name in strategies:
        MECHANISMS.get(name)
    settings = SearchSettings.from_config(cfg["search"], lambda path: has_path(cfg, path), fixed)
    model_def, task = model_and_task(cfg, workspace)
    for strategy in strategies:
        set_up(trial_spec(cfg, strategy, cfg["seed"]), task, model_def)

    tracking_uri = cfg["tracking"]["uri"] or default_uri(workspace.results_dir)
    shared_storage = database_storage(settings.storage) if settings.storage is not None else None
    workspace.results_dir.mkdir(parents=True, exist_ok=True)
    check_reachable(tracking_uri)
    storage = shared_storage or journal_storage(workspace.results_dir)
    trial_config = {k: v for k, v in without_run_settings(cfg).items() if k not in NOT_TRIAL_CONFIG}
    experiment = str(cfg["experiment"])  # `experiment=nan` or `=2024` arrive as numbers from the command line
    study_plan = StudyPlan(experiment, strategies, settings, storage, trial_config, cfg["seed"], model_def,
                           task, Tracker(tracking_uri, experiment, cfg["tracking"]["system_metrics"]),
                           workspace, runtime, workers)
    study_plan.check_studies()
    workers.register()
    return study_plan


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _sweep(cfg: DictConfig) -> None:
    with fail_cleanly(Path(HydraConfig.get().runtime.output_dir)):
        container = OmegaConf.to_container(cfg, resolve=True)
        study_plan = plan(container, Path.cwd(), explicit_overrides())
        studies = [StrategyStudy(study_plan, strategy) for strategy in study_plan.strategies]
        for study in studies:
            study.run()
        print_summary(study_plan, studies)


def main() -> None:
    check_group_choices(sys.argv[1:])
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # progress bar and summary say it; failures get one line each
    _sweep()


if __name__ == "__main__":
    main()
