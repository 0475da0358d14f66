"""`python -m sweep.run`: run the Optuna studies of one strategy (`+strategy=NAME`) or all of them.

    python -m sweep.run                                   # compare every strategy
    python -m sweep.run +strategy=zero_lr                 # one strategy
    python -m sweep.run -m +strategy=zero_lr,requires_grad model=digits_cnn

This module imports only what parsing the command line needs; the job (torch, Optuna,
MLflow) is imported once there is one to run, so `--help` and mistakes answer at once.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from sweep.cli import CONF_DIR, check_command_line, fail_cleanly, hydra_output_dir
from sweep.fresh_store import made_meanwhile
from sweep.paths import Workspace, first_missing
from sweep.quick_exit import QuickExit
from sweep.stages import stage

PRIMARY_CONFIG = "config"  # conf/config.yaml


def fixed_keys() -> set[str]:
    """Keys you set yourself, fixed and never searched: on the command line, or in a config file of your own
    (the primary config named by --config-name, found in a --config-dir of yours)."""
    hydra_config = HydraConfig.get()
    keys = {override.split("=", 1)[0].lstrip("+~") for override in hydra_config.overrides.task}
    for source in hydra_config.runtime.config_sources:
        own = source.provider in ("main", "command-line") and Path(source.path).resolve() != CONF_DIR
        primary = Path(source.path) / f"{hydra_config.job.config_name}.yaml"
        if own and primary.is_file():
            content = OmegaConf.to_container(OmegaConf.load(primary))
            content.pop("defaults", None)
            keys |= set(dotted_keys(content))
    return keys


def dotted_keys(node: dict, prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict):
            yield from dotted_keys(value, f"{prefix}{key}.")


def main() -> None:
    argv = sys.argv[1:]
    checked = check_command_line(argv, PRIMARY_CONFIG, Path.cwd())  # before Hydra writes its run folder
    new_dir = first_missing(hydra_output_dir(argv, PRIMARY_CONFIG)) if checked else None

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=PRIMARY_CONFIG)
    def sweep(cfg: DictConfig) -> None:
        with fail_cleanly(new_dir):
            plain = OmegaConf.to_container(cfg, resolve=True)
            tracking_uri = Workspace.from_config(plain, Path.cwd()).tracking_uri(plain["tracking"]["uri"])
            with made_meanwhile(tracking_uri):  # a fresh MLflow store is created while torch is imported
                with stage("loading torch, Optuna and MLflow"):
                    from sweep import launch  # seconds to import, so only once there is a sweep to run
                launch.run(plain, Path.cwd(), fixed_keys())

    sweep()


if __name__ == "__main__":
    QuickExit().run(main)
