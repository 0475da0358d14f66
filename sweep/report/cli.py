"""`python -m sweep.report`: a sweep's MLflow and Optuna records turned into a report a person reads.

Writes report.html (one self-contained file), report.md with its plots beside it, trials.csv and
summary.csv into <results_dir>/reports/<experiment>/, and logs them to the experiment in MLflow.

    python -m sweep.report                                  # experiment digits-transfer, records under results/
    python -m sweep.report experiment=X results_dir=D       # the settings mean what they mean for sweep.run
    python -m sweep.report report.experiments=[a,b]         # several experiments side by side
    python -m sweep.report report.out_dir=DIR               # somewhere else
    python -m sweep.report tracking.uri=http://host:5000 search.storage=postgresql://user@host/db
"""

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweep.cli import CONF_DIR, check_group_choices, fail
from sweep.config import Workspace
from sweep.errors import ConfigError
from sweep.report.document import build, safe_name
from sweep.report.publish import log_to_mlflow, staged
from sweep.report.records import Sources, load
from sweep.report.render import write
from sweep.tracking import default_uri

PRIMARY_CONFIG = "report"  # conf/report.yaml: the run command's config plus a `report:` section


@dataclass
class ReportSettings:
    sources: Sources
    experiments: list[str]
    out_dir: Path

    @classmethod
    def from_config(cls, cfg: dict[str, Any], base_dir: Path) -> "ReportSettings":
        results_dir = Workspace.from_config(cfg, base_dir).results_dir
        sources = Sources(cfg["tracking"]["uri"] or default_uri(results_dir), cfg["search"]["storage"], results_dir)
        chosen = cfg["report"]["experiments"] or [cfg["experiment"]]
        # names arrive as numbers from the command line (`experiment=2024`), as in sweep.run
        experiments = [str(e) for e in (chosen if isinstance(chosen, list) else [chosen])]
        if len(set(experiments)) != len(experiments) or not all(experiments):
            raise ConfigError(f"report.experiments={chosen!r} must be distinct experiment names, e.g. [a,b]")
        out_dir = cfg["report"]["out_dir"]
        out_dir = Path(out_dir).expanduser() if out_dir else results_dir / "reports" / safe_name("+".join(experiments))
        return cls(sources, experiments, out_dir if out_dir.is_absolute() else (base_dir / out_dir).resolve())


def composed_config(argv: list[str]) -> dict[str, Any]:
    """The same conf/ tree and override syntax as `python -m sweep.run`, without Hydra's output folders."""
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="sweep-report"):
            cfg = compose(PRIMARY_CONFIG, overrides=argv)
        return OmegaConf.to_container(cfg, resolve=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(str(err).strip().splitlines()[0]) from None


def make_report(settings: ReportSettings, command: str) -> Path:
    """Read the records, build every file in a staging folder, log it to MLflow, then move it into place."""
    records = load(settings.sources, settings.experiments)
    document = build(records, command)
    with staged(settings.out_dir) as staging:
        write(document, records, staging)
        log_to_mlflow(settings.sources.tracking_uri, settings.experiments, staging, settings.out_dir.name)
    return settings.out_dir


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return
    check_group_choices(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        settings = ReportSettings.from_config(composed_config(argv), Path.cwd())
        out_dir = make_report(settings, shlex.join(["python", "-m", "sweep.report", *argv]))
    except ConfigError as err:
        fail(str(err))
    print(f"report: {out_dir / 'report.html'}\n        (with report.md, its plots, trials.csv and summary.csv; "
          f"also logged to MLflow experiment{'s' if len(settings.experiments) > 1 else ''} "
          f"{', '.join(settings.experiments)})")
