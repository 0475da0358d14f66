"""The README is tested like code: every command in it must still be accepted."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from sweep.cli import CONF_DIR, check_group_choices
from sweep.config import trial_spec
from sweep.strategies import MECHANISMS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
CODE_BLOCKS = re.findall(r"```(?:bash)?\n(.*?)```", README, flags=re.S)
COMMANDS = [line.split(" #")[0].strip() for block in CODE_BLOCKS for line in block.splitlines()
            if line.strip() and not line.startswith("#")]
PRIMARY_CONFIG = {"sweep.run": "config", "sweep.report": "report"}


def overrides_of(command: str) -> list[list[str]]:
    """The override lists a command stands for: one per value of each multirun sweep."""
    args = [a for a in shlex.split(command)[3:] if a != "-m"]
    parsed = OverridesParser.create().parse_overrides(args)
    runs = [args]
    for arg, override in zip(args, parsed):
        if override.is_sweep_override():
            runs = [[f"{override.get_key_element()}={value}" if a == arg else a for a in run]
                    for run in runs for value in override.sweep_string_iterator()]
    return runs


SWEEP_COMMANDS = [c for c in COMMANDS if c.startswith(("python -m sweep.run", "python -m sweep.report"))]


def test_readme_has_the_two_fresh_clone_commands_and_they_exist():
    assert "make run" in COMMANDS[0] and "make test" in COMMANDS[1]
    for target in ("run", "test"):
        dry = subprocess.run(["make", "-n", target], cwd=REPO, capture_output=True, text=True)
        assert dry.returncode == 0, dry.stderr


@pytest.mark.parametrize("command", SWEEP_COMMANDS)
def test_readme_command_composes_and_validates(command):
    module = shlex.split(command)[2]
    for overrides in overrides_of(command):
        check_group_choices(overrides)
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = OmegaConf.to_container(compose(PRIMARY_CONFIG[module], overrides=overrides), resolve=False)
        if module == "sweep.run":
            strategy = cfg.get("strategy", {}).get("name", MECHANISMS.names()[0])
            trial_spec(cfg, strategy, seed=0)


def test_readme_lists_every_strategy_model_and_data_set():
    for group in ("strategy", "model", "data", "optimizer", "lr_split", "schedule"):
        for path in (CONF_DIR / group).glob("*.yaml"):
            assert f"`{path.stem}`" in README or f"={path.stem}" in README, f"README does not mention {group} {path.stem}"
