"""The one error type a user's mistake turns into.

The command line catches `ConfigError` and prints its message as one line with
exit code 2; everything else is a bug and keeps its traceback.
"""

import difflib
import sys
from collections.abc import Iterable


class ConfigError(ValueError):
    """A configuration or input the user can fix; the message says how."""


def choice_error(what: str, value: object, choices: Iterable[str]) -> ConfigError:
    """An error naming the bad value and listing the valid ones."""
    return ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(sorted(choices))}")


class NotApplicable(ConfigError):
    """A strategy cannot train this configuration exactly (e.g. `cached_prefix` with a prefix whose outputs change).

    Asked for by name, that is the user's mistake; when every strategy is compared, the strategy is left out
    and the message says why.
    """


class TrialDiverged(RuntimeError):
    """The training loss went NaN, infinite, or far above where it started: the trial failed, the sweep goes on."""


def one_line(err: BaseException) -> str:
    """A library's error message folded onto one line, to quote inside a `ConfigError`."""
    return " ".join(str(err).split()) or type(err).__name__


def warn(message: str) -> None:
    """Something the service noticed and repaired or worked around: one line on stderr, around any progress bars."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


def unknown_key(key: str, known: Iterable[str]) -> ConfigError:
    """A config key that does not exist, with the closest existing one and the keys beside it."""
    siblings = sorted(known)
    parent, _, leaf = key.rpartition(".")
    close = difflib.get_close_matches(leaf, siblings, n=1)
    hint = f"did you mean {'.'.join(filter(None, [parent, close[0]]))!r}? " if close else ""
    return ConfigError(f"unknown config key {key!r}; {hint}the keys{f' under {parent}' if parent else ''} are: "
                       f"{', '.join(siblings) or 'none'}")
