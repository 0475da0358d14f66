"""What every command shares: composing and checking the config, and turning user mistakes into one line and
exit code 2, with nothing left behind."""

import datetime
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep.errors import ConfigError, choice_error, unknown_key
from sweep.paths import Workspace, remove_empty_dirs
from sweep.schema import check_config

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
USAGE_ERROR = 2


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def override(key: str, value: object) -> str:
    """`key=value` that Hydra reads back as the string `value`: quoted when its grammar would read it otherwise."""
    text = str(value)
    try:
        if OverridesParser.create().parse_override(f"{key}={text}").value() == text:
            return f"{key}={text}"
    except HydraException:
        pass
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"{key}='{escaped}'"


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_choices(args: list[str]) -> None:
    """Unknown config-group choices (`+strategy=bogus`, `model=bogus`) as one line, before Hydra's multi-line error."""
    overrides = [a for a in args if "=" in a and not a.startswith("-") and not a.startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        fail(str(unreadable(err)))
    for override in parsed:
        group = override.key_or_group
        if override.is_delete() or "." in group or not (CONF_DIR / group).is_dir():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if str(value) not in group_choices(group):
                fail(str(choice_error(group, value, group_choices(group))))


def unreadable(err: HydraException) -> ConfigError:
    """An override Hydra's grammar cannot read (`experiment=it's`)."""
    unread = str(err).splitlines()[0].split(": ", 1)[-1]
    return ConfigError(f"cannot read {unread!r} as key=value; quote a value that holds "
                       "spaces, quotes or brackets, e.g. key='a value' (Hydra's override syntax)")


def compose_config(config_name: str, overrides: list[str], own_dir: Path | None = None) -> dict[str, Any]:
    """conf/ composed with Hydra's override syntax into a plain dict, without Hydra's output folders."""
    try:
        return _compose(config_name, overrides, own_dir)
    except (HydraException, OmegaConfBaseException) as err:
        cause = err.__cause__
        if "not in struct" in str(cause) and getattr(cause, "full_key", None):
            raise _unknown_key(config_name, overrides, own_dir, cause.full_key) from None
        reasons = [_without_location(e) for e in (err, cause) if e is not None]
        raise ConfigError("; ".join(dict.fromkeys(reasons))) from None


def _without_location(err: BaseException) -> str:
    """OmegaConf's message on one line, without the `full_key:` / `object_type=` lines it appends."""
    lines = [line.strip() for line in str(err).strip().splitlines()]
    return " ".join(line for line in lines if not line.startswith(("full_key:", "object_type=")))


def _composed(config_name: str, overrides: list[str], own_dir: Path | None, with_hydra: bool = False) -> DictConfig:
    """`own_dir`: the user's `--config-dir`, whose primary config may build on conf/ (`defaults: [config]`)."""
    config_dir, search = (CONF_DIR, []) if own_dir is None else (own_dir, [f"hydra.searchpath=[file://{CONF_DIR}]"])
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3", job_name=config_name):
        return compose(config_name, overrides=[*overrides, *search], return_hydra_config=with_hydra)


def _compose(config_name: str, overrides: list[str], own_dir: Path | None = None) -> dict[str, Any]:
    return OmegaConf.to_container(_composed(config_name, overrides, own_dir), resolve=True)


def _unknown_key(config_name: str, overrides: list[str], own_dir: Path | None, key: str) -> ConfigError:
    """Hydra refused to override `key`: name the keys that do exist where it was looked for."""
    def related(override: str) -> bool:
        other = override.split("=", 1)[0].lstrip("+~") + "."
        return other.startswith(key + ".") or (key + ".").startswith(other)

    parent = key.rpartition(".")[0]
    try:
        node: Any = _compose(config_name, [o for o in overrides if not related(o)], own_dir)
        for part in filter(None, parent.split(".")):
            node = node[part]
        known = list(node)
    except (HydraException, OmegaConfBaseException, KeyError, TypeError):
        known = []
    return unknown_key(key, known)


def load_config(config_name: str, overrides: list[str], base_dir: Path, schema: str | None = None,
                own_dir: Path | None = None) -> dict[str, Any]:
    """The composed config, checked against its schema (by default the one named like the config) and with a
    usable results_dir, or one `ConfigError` line."""
    cfg = compose_config(config_name, overrides, own_dir)
    check_config(cfg, schema or config_name)
    Workspace.from_config(cfg, base_dir).check()
    return cfg


@dataclass
class CommandLine:
    """`python -m sweep.run`'s arguments as Hydra reads them."""

    overrides: list[str]
    config_name: str
    own_dir: Path | None  # --config-dir
    multirun: bool
    runs_jobs: bool  # False when Hydra only prints something (--help, --cfg job, --info, ...)

    @classmethod
    def parse(cls, argv: list[str], config_name: str) -> "CommandLine":
        from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

        args, unknown = get_args_parser().parse_known_args(argv)
        if unknown and unknown[0].startswith("-"):
            fail(f"unknown option {unknown[0]!r}; see the options with --help")
        if unknown:
            fail(f"{unknown[0]!r} follows a flag; put the flags (-m, --cfg, ...) before every key=value override")
        if args.config_path:
            fail("--config-path replaces the sweep's own conf/ (its strategies, models and data sets); pass "
                 "--config-dir DIR instead, which adds DIR's configs to them")
        prints = args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
        own_dir = Path(args.config_dir).expanduser().absolute() if args.config_dir else None
        return cls(args.overrides, args.config_name or config_name, own_dir, args.multirun, not prints)

    def jobs(self) -> list[list[str]]:
        """The override list of every job: one per combination of a multirun's sweeps."""
        if not self.multirun:
            return [self.overrides]
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        try:
            parsed = OverridesParser.create().parse_overrides(self.overrides)
        except HydraException as err:
            raise unreadable(err) from None
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def check_command_line(argv: list[str], config_name: str, base_dir: Path) -> list[dict[str, Any]]:
    """Compose and check the config of every job the command line stands for, before Hydra writes anything."""
    check_group_choices(argv)
    command_line = CommandLine.parse(argv, config_name)
    if not command_line.runs_jobs:
        return []
    try:
        return [load_config(command_line.config_name, job, base_dir, config_name, command_line.own_dir)
                for job in command_line.jobs()]
    except ConfigError as err:
        fail(str(err))


STARTED = datetime.datetime.now()
OmegaConf.register_new_resolver("started", STARTED.strftime, replace=True)
"""`${started:%H-%M-%S}`: the time this process started, the same however often the config is composed, so the
folder Hydra will create for a run is known (and can be taken back) before Hydra creates it."""


def hydra_output_dir(argv: list[str], config_name: str) -> Path:
    """The folder Hydra will create for this command's records: the run's, or a multirun's sweep folder."""
    command_line = CommandLine.parse(argv, config_name)
    cfg = _composed(command_line.config_name, command_line.jobs()[0], command_line.own_dir, with_hydra=True)
    return Path(cfg.hydra.sweep.dir if command_line.multirun else cfg.hydra.run.dir).absolute()


@contextmanager
def fail_cleanly(new_dir: Path | None) -> Iterator[None]:
    """A `ConfigError` in a job becomes one line on stderr and exit 2, and what Hydra wrote for the job is taken
    back: its records, then the directories under `new_dir` (the outermost one Hydra created) left empty."""
    try:
        yield
    except ConfigError as err:
        if new_dir is not None:
            take_back_hydra_output(new_dir)
        fail(str(err))


def take_back_hydra_output(new_dir: Path) -> None:
    hydra = HydraConfig.get()
    output_dir = Path(hydra.runtime.output_dir)
    if not output_dir.is_relative_to(new_dir):
        return
    records = [output_dir / f"{hydra.job.name}.log"]
    if hydra.output_subdir is not None:
        records += [output_dir / hydra.output_subdir / f for f in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    for path in records:
        path.unlink(missing_ok=True)
        remove_empty_dirs(path.parent, new_dir)
    sweep_dir = output_dir.parent
    if hydra.mode == RunMode.MULTIRUN and not any(p.is_dir() for p in sweep_dir.iterdir()):  # no job ran before
        (sweep_dir / "multirun.yaml").unlink(missing_ok=True)
        remove_empty_dirs(sweep_dir, new_dir)
