"""What every command shares: turning user mistakes into one line and exit code 2, with nothing left behind."""

import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from sweep.errors import ConfigError, choice_error

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
USAGE_ERROR = 2


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


def group_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def check_group_choices(args: list[str]) -> None:
    """Unknown config-group choices (`+strategy=bogus`, `model=bogus`) as one line, before Hydra's multi-line error."""
    overrides = [a for a in args if "=" in a and not a.startswith("-") and not a.startswith("hydra")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        fail(str(err).splitlines()[0])
    for override in parsed:
        group = override.key_or_group
        if override.is_delete() or "." in group or not (CONF_DIR / group).is_dir():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if str(value) not in group_choices(group):
                fail(str(choice_error(group, value, group_choices(group))))


def _remove_empty_dirs(path: Path, stop: Path) -> None:
    while path != stop and path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        path = path.parent


@contextmanager
def fail_cleanly(output_dir: Path) -> Iterator[None]:
    """A `ConfigError` becomes one line on stderr and exit 2; the run's own output folder is removed."""
    try:
        yield
    except ConfigError as err:
        shutil.rmtree(output_dir, ignore_errors=True)
        _remove_empty_dirs(output_dir.parent, Path.cwd())
        fail(str(err))
