"""`python -m sweep.report`: a sweep's MLflow and Optuna records turned into a report a person reads.

Writes report.html (one self-contained file), report.md with its plots beside it, trials.csv and
summary.csv into <results_dir>/reports/<experiment>/, and logs them to the experiment in MLflow.

    python -m sweep.report                                  # experiment digits-transfer, records under results/
    python -m sweep.report experiment=X results_dir=D       # the settings mean what they mean for sweep.run
    python -m sweep.report report.experiments=[a,b]         # several experiments side by side
    python -m sweep.report report.out_dir=DIR               # somewhere else
    python -m sweep.report tracking.uri=http://host:5000 search.storage=postgresql://user@host/db
"""

import hashlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sweep.cli import check_group_choices, fail, load_config
from sweep.errors import ConfigError
from sweep.paths import Workspace, default_uri, inside
from sweep.report.folder import check_out_dir, staged

PRIMARY_CONFIG = "report"  # conf/report.yaml: the run command's config plus a `report:` section


@dataclass
class ReportSettings:
    tracking_uri: str
    storage_url: str | None
    results_dir: Path
    experiments: list[str]
    out_dir: Path

    @classmethod
    def from_config(cls, cfg: dict[str, Any], base_dir: Path) -> "ReportSettings":
        results_dir = Workspace.from_config(cfg, base_dir).results_dir
        chosen = cfg["report"]["experiments"] or [cfg["experiment"]]
        # names arrive as numbers from the command line (`experiment=2024`), as in sweep.run
        experiments = [str(e) for e in (chosen if isinstance(chosen, list) else [chosen])]
        if len(set(experiments)) != len(experiments) or not all(experiments):
            raise ConfigError(f"report.experiments={chosen!r} must be distinct experiment names, e.g. [a,b]")
        out_dir = cfg["report"]["out_dir"]
        out_dir = Path(out_dir).expanduser() if out_dir else inside(results_dir, "reports", folder_name(experiments))
        out_dir = out_dir if out_dir.is_absolute() else (base_dir / out_dir).resolve()
        check_out_dir(out_dir)
        return cls(cfg["tracking"]["uri"] or default_uri(results_dir), cfg["search"]["storage"], results_dir,
                   experiments, out_dir)


def folder_name(experiments: list[str]) -> str:
    """`a+b` for a report over experiments a and b; shortened, with a hash to stay unique, when that is long."""
    name = "+".join(experiments)
    return name if len(name) <= 100 else f"{name[:80]}+{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def make_report(settings: ReportSettings, command: str) -> list[str]:
    """Read the records, build every file in a staging folder, log it to MLflow, then move it into place;
    return the experiments the report was attached to in MLflow.

    MLflow, Optuna and matplotlib are imported here, once the settings are known to be good: a mistake
    answers without them."""
    import optuna

    from sweep.report.document import build
    from sweep.report.publish import log_to_mlflow
    from sweep.report.records import Sources, load
    from sweep.report.render import write

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    records = load(Sources(settings.tracking_uri, settings.storage_url, settings.results_dir), settings.experiments)
    document = build(records, command)
    with staged(settings.out_dir) as staging:
        write(document, records, staging)
        attached = log_to_mlflow(settings.tracking_uri, settings.experiments, staging, settings.out_dir.name,
                                 settings.results_dir)
    return attached


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(__doc__.strip())
        return
    check_group_choices(argv)
    try:
        settings = ReportSettings.from_config(load_config(PRIMARY_CONFIG, argv, Path.cwd()), Path.cwd())
        attached = make_report(settings, shlex.join(["python", "-m", "sweep.report", *argv]))
    except ConfigError as err:
        fail(str(err))
    print(f"report: {settings.out_dir / 'report.html'}\n        (with report.md, its plots, trials.csv and summary.csv"
          + (f"; also logged to MLflow experiment{'s' if len(attached) > 1 else ''} {', '.join(attached)})"
             if attached else ")"))
    left_out = [e for e in settings.experiments if e not in attached]
    if left_out:
        print(f"warning: not logged to MLflow experiment{'s' if len(left_out) > 1 else ''} {', '.join(left_out)}: "
              "MLflow would write its artifacts at the absolute path recorded when the experiment was made, outside "
              "this results directory (it was copied or moved, or is not the sweep's); the report files are in place",
              file=sys.stderr)
