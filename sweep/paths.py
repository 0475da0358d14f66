"""Where the service may write, and the proof that it writes nowhere else.

Every path a writer creates (checkpoints, caches, the journal, the MLflow database and artifacts,
reports) is built with `inside`, which refuses a path that would leave the directory the user named
(`results_dir`, or `report.out_dir`). Names that become path components (experiments, studies) are
validated by the schema, so `inside` failing means a bug, and it fails loudly instead of writing elsewhere.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.errors import ConfigError


def inside(root: Path, *parts: str | Path) -> Path:
    """`root / parts`, refused unless it stays under `root` (compared lexically: `..` and absolute parts
    cannot escape; a symlink the user placed inside `root` is theirs to place)."""
    path = Path(os.path.normpath(root.joinpath(*parts)))
    if not path.is_relative_to(os.path.normpath(root)):
        raise ConfigError(f"refusing to write {path}: it is outside {root}")
    return path


def default_uri(results_dir: Path) -> str:
    """The MLflow tracking URI when none is given: a SQLite database in results_dir."""
    return f"sqlite:///{inside(results_dir, 'mlflow.db')}"


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` tracking URI; None for any other store."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def first_missing(path: Path) -> Path | None:
    """The outermost directory that creating `path` would create, or None when `path` exists."""
    missing = None
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return missing
        missing = candidate
    return missing


def schema_lock(database: Path) -> Path:
    """The file lock beside a SQLite store that serialises creating its schema among this host's processes."""
    return Path(f"{database}.lock")


def remove_empty_dirs(path: Path, top: Path) -> None:
    """Remove `path` and then its parents, up to and including `top`, as long as each is an empty directory."""
    while path.is_relative_to(top) and path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
        path.rmdir()
        if path == top:
            return
        path = path.parent


def check_writable_dir(path: Path, key: str) -> None:
    """`path` is a directory this process can write in, or one it can create: otherwise one line saying which."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise ConfigError(f"{key}={path} {what}; pass {key}=DIR with a directory (or a new path)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} is not writable ({existing} does not allow it); "
                          f"pass {key}=DIR with a directory you can write to")


@dataclass
class Workspace:
    """Where a sweep reads and writes: absolute paths, anchored at the user's working directory."""

    base_dir: Path
    results_dir: Path

    @classmethod
    def from_config(cls, cfg: dict[str, Any], base_dir: Path) -> "Workspace":
        results = Path(cfg["results_dir"]).expanduser()
        return cls(base_dir, results if results.is_absolute() else (base_dir / results).resolve())

    def check(self) -> None:
        check_writable_dir(self.results_dir, "results_dir")

    def tracking_uri(self, configured: str | None) -> str:
        """tracking.uri as given, or by default a SQLite database in results_dir."""
        return configured or default_uri(self.results_dir)

    def path(self, *parts: str) -> Path:
        """A path under results_dir, proven to stay there."""
        return inside(self.results_dir, *parts)

    @property
    def cache_dir(self) -> Path:
        return self.path("cache")

    def study_checkpoints(self, study: str) -> Path:
        return self.path("checkpoints", study)

    def checkpoint_dir(self, study: str, trial_number: int) -> Path:
        return inside(self.study_checkpoints(study), f"trial-{trial_number}")
