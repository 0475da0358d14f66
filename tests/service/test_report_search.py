"""The report's view of the search: Optuna's own plots as static images, every trial's curves, and each trial
row leading to its MLflow run when the records come from a tracking server."""

import re
from dataclasses import replace

from sweep.report.document import build
from sweep.report.records import Sources, load
from sweep.report.render import html, markdown

SEARCH_PLOTS = {"optimization_history", "parallel_coordinates", "trial_curves"}


def tiny_records(tiny_sweep, tracking_uri: str | None = None):
    records = load(Sources(tiny_sweep.tracking_uri, None, tiny_sweep.results_dir), ["tiny"])
    return replace(records, sources=replace(records.sources, tracking_uri=tracking_uri)) if tracking_uri else records


def test_optuna_plots_and_every_trials_curves_are_drawn(tiny_sweep):
    (section,) = build(tiny_records(tiny_sweep), "python -m sweep.report").sections
    drawn = {plot.name: plot for plot in section.plots}
    for name in SEARCH_PLOTS:
        assert drawn[name].png is not None and drawn[name].png.startswith(b"\x89PNG"), drawn[name].note


def test_trial_rows_lead_to_their_runs_on_a_tracking_server_only(tiny_sweep):
    records = tiny_records(tiny_sweep, "http://mlflow.example:5000")
    document = build(records, "python -m sweep.report")
    (trials,) = [t for t in document.tables if t.id == "trials"]
    assert len(trials.rows) == len(records.trials)
    page, text = html(document), markdown(document)
    for trial in records.trials:
        url = f"http://mlflow.example:5000/#/experiments/{trial.experiment_id}/runs/{trial.run_id}"
        assert f'<a href="{url}">{trial.run_id}</a>' in page and f"[{trial.run_id}](<{url}>)" in text
    local = html(build(tiny_records(tiny_sweep), "python -m sweep.report"))
    assert not re.search(r'href="http', local)  # a local store has no address a reader could open
