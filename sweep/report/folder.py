"""A report's folder: refused when it holds someone's files, filled without harming anything else in it.

Kept free of MLflow and Optuna, so `python -m sweep.report` checks `report.out_dir` at once.
"""

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sweep.errors import ConfigError
from sweep.paths import check_writable_dir, first_missing, inside, remove_empty_dirs

MARKER = ".freeze-sweep-report"
"""Written by every report into its folder, listing the files it put there: the only files a later report
replaces or removes, and the proof that an existing folder holds a report rather than a user's files."""
STAGING_PREFIX = ".report-staging-"
LEGACY_FILES = ("report.html", "report.md", "trials.csv", "summary.csv")
"""A folder holding only these (and plots) is a report made before the marker existed; it is accepted too."""


def check_out_dir(out_dir: Path) -> None:
    """Refuse, before anything is read or written, a folder the report could harm: a file, or a folder of
    someone's own files. A new path, an empty folder and a previous report's folder are fine."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"report.out_dir={out_dir} is a file; pass report.out_dir=DIR with a new or empty "
                          "directory, or a previous report's")
    if out_dir.is_dir() and not (out_dir / MARKER).is_file():
        foreign = sorted(name for name in _entries(out_dir) if not _legacy_report_file(out_dir / name))
        if foreign:
            raise ConfigError(f"report.out_dir={out_dir} holds files no report wrote ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); pass report.out_dir=DIR with a new or empty "
                              "directory, so that nothing of yours is replaced")
    check_writable_dir(out_dir, "report.out_dir")


def _entries(directory: Path) -> list[str]:
    """What is in `directory`, leaving out staging folders that a killed report left behind."""
    return [p.name for p in directory.iterdir() if not p.name.startswith(STAGING_PREFIX)]


def _legacy_report_file(path: Path) -> bool:
    return path.is_file() and (path.name in LEGACY_FILES or path.suffix == ".png")


def written_files(out_dir: Path) -> list[str]:
    """The files the previous report in `out_dir` wrote (a legacy report: those with a report's names)."""
    marker = out_dir / MARKER
    if marker.is_file():
        return json.loads(marker.read_text())["files"]
    return [name for name in _entries(out_dir) if _legacy_report_file(out_dir / name)] if out_dir.is_dir() else []


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """Yield an empty hidden folder inside `target` to build the report in; on success `publish` it.

    On failure the staging folder is removed, and so is `target` (with the folders above it) when this
    report created it: nothing is left, and a previous report stays as it was.
    """
    created = first_missing(target)
    target.mkdir(parents=True, exist_ok=True)
    staging = inside(target, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
    staging.mkdir()
    try:
        yield staging
        publish(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created is not None:
            remove_empty_dirs(target, created)
        raise


def publish(staging: Path, target: Path) -> None:
    """Move every file of `staging` into `target`, each replacing its old version with one atomic rename.

    The marker first lists the old files and the new ones, so a kill half-way leaves nothing a later report
    would not recognise as its own; then files of the previous report that this one does not have are
    removed, and the marker lists exactly the new report. Nothing else in `target` is touched.
    """
    old, new = written_files(target), sorted(p.name for p in staging.iterdir())
    _write_marker(target, sorted({*old, *new}))
    for name in new:
        os.replace(staging / name, inside(target, name))
    for name in set(old) - set(new):
        inside(target, name).unlink(missing_ok=True)
    _write_marker(target, new)
    staging.rmdir()


def _write_marker(target: Path, files: list[str]) -> None:
    partial = inside(target, f"{MARKER}.{os.getpid()}.tmp")
    partial.write_text(json.dumps({"files": files}, indent=1) + "\n")
    os.replace(partial, inside(target, MARKER))
