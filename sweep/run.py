"""`python -m sweep.run`: run the Optuna studies of one strategy (`+strategy=NAME`) or all of them.

    python -m sweep.run                                   # compare every strategy
    python -m sweep.run +strategy=zero_lr                 # one strategy
    python -m sweep.run -m +strategy=zero_lr,requires_grad model=digits_cnn

This module imports only what parsing the command line needs; the job (torch, Optuna,
MLflow) is imported once there is one to run, so `--help` and mistakes answer at once.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweep.cli import CONF_DIR, check_group_choices, fail_cleanly
from sweep.stages import stage


def explicit_overrides() -> set[str]:
    """Keys the user set on the command line: fixed, never searched."""
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _sweep(cfg: DictConfig) -> None:
    with fail_cleanly(Path(HydraConfig.get().runtime.output_dir)):
        with stage("loading torch, Optuna and MLflow"):
            from sweep import launch  # seconds to import, so only once there is a sweep to run
        launch.run(OmegaConf.to_container(cfg, resolve=True), Path.cwd(), explicit_overrides())


def main() -> None:
    check_group_choices(sys.argv[1:])
    _sweep()


if __name__ == "__main__":
    main()
