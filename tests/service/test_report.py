"""`python -m sweep.report` end to end, through the real command: files, numbers, verdicts, bad input."""

import csv
import re
import statistics
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from sweep_commands import DEFAULT_STRATEGIES, Completed, sweep_command
from sweep.report import main
from sweep.report.document import build
from sweep.report.folder import MARKER, staged
from sweep.report.records import Records, Sources, StudyRecord, TrialRecord
from sweep.report.render import html, markdown
from sweep.strategies import MECHANISMS

FREEZING = [name for name in DEFAULT_STRATEGIES if MECHANISMS.get(name).freezes]
BASELINE = "full_finetune"
STATES = ("finished", "pruned", "failed", "running")
OUTCOME_MEDIANS = ("val_accuracy", "test_accuracy", "train_time_s", "trainable_params", "frozen_params")
STEP_MEDIANS = ("step_time_ms", "samples_per_s", "flops_per_step", "held_bytes", "peak_rss_bytes", "peak_rss_growth_bytes")
TOTALS = ("train_time_s", "wall_time_s", "train_flops_est")
MAXIMA = ("frozen_weight_drift", "frozen_buffer_drift")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def number(cell: str) -> float | None:
    return float(cell) if cell else None


def recorded(rows: list[dict[str, str]], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row[key]]


def assert_one_line_error(done: Completed, message: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], done.stderr


def report_args(results_dir: Path, *extra: str) -> list[str]:
    return [f"results_dir={results_dir}", *extra]


def report_here(capsys: pytest.CaptureFixture, *args: str) -> Completed:
    """The console script's entry point in this process: the same code path without paying for imports again."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    return Completed(code, captured.out, captured.err)


@pytest.fixture(scope="module")
def report(tiny_sweep) -> Path:
    """The tiny sweep's report, at the documented default place: <results_dir>/reports/<experiment>."""
    done = sweep_command("sweep.report", "experiment=tiny", *report_args(tiny_sweep.results_dir))
    assert done.returncode == 0, done.stderr
    return tiny_sweep.results_dir / "reports" / "tiny"


def test_every_file_is_written_and_the_html_is_self_contained(report):
    assert {"report.html", "report.md", "trials.csv", "summary.csv"} <= {p.name for p in report.iterdir()}
    markdown = (report / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(images) >= 4 and all((report / image).is_file() for image in images)
    html = (report / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == len(images)
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    assert not re.search(r'(src|href)="(https?:)?//', html), "the report must open without a network"
    assert [p.name for p in report.parent.iterdir()] == ["tiny"], "no staging folder may be left behind"


def test_summary_numbers_are_those_recomputed_from_trials_csv(report):
    trials, summary = read_csv(report / "trials.csv"), read_csv(report / "summary.csv")
    assert len(trials) == 2 * len(DEFAULT_STRATEGIES)
    assert [row["strategy"] for row in summary] == DEFAULT_STRATEGIES
    baseline = next(row for row in summary if row["strategy"] == BASELINE)
    for row in summary:
        mine = [t for t in trials if (t["strategy"], t["lr_split"]) == (row["strategy"], row["lr_split"])]
        finished = [t for t in mine if t["state"] == "finished"]
        assert {state: int(row[state]) for state in STATES} == {s: sum(t["state"] == s for t in mine) for s in STATES}
        for key in TOTALS:
            assert number(row[f"total_{key}"]) == pytest.approx(sum(recorded(mine, key)), rel=1e-12)
        for key in OUTCOME_MEDIANS:
            assert number(row[f"median_{key}"]) == pytest.approx(statistics.median(recorded(finished, key)))
        for key in STEP_MEDIANS:
            assert number(row[f"median_{key}"]) == pytest.approx(statistics.median(recorded(mine, key)))
        for key in MAXIMA:
            assert number(row[f"max_{key}"]) == (max(recorded(mine, key)) if recorded(mine, key) else None)
        best = max(finished, key=lambda t: (float(t["val_accuracy"]), -int(t["trial"])))
        assert row["best_trial"] == best["trial"]
        assert float(row["best_val_accuracy"]) == float(best["val_accuracy"])
        assert float(row["best_test_accuracy"]) == float(best["test_accuracy"])
        assert float(row["min_test_accuracy"]) == min(recorded(finished, "test_accuracy"))
        assert float(row["max_test_accuracy"]) == max(recorded(finished, "test_accuracy"))
        assert float(row["best.optimizer.lr"]) == float(best["params.optimizer.lr"])
        for key in ("step_time_ms", "flops_per_step"):
            assert float(row[f"{key}_vs_{BASELINE}"]) == pytest.approx(
                float(row[f"median_{key}"]) / float(baseline[f"median_{key}"]))


def test_equivalence_verdict_identical_for_freezing_mechanisms_and_differs_for_full_finetune(report):
    verdicts = {row["strategy"]: row for row in read_csv(report / "summary.csv")}
    assert verdicts["requires_grad"]["equivalence"] == "reference"
    for strategy in FREEZING[1:]:
        assert verdicts[strategy]["equivalence"] == "identical", verdicts[strategy]["equivalence_detail"]
        assert verdicts[strategy]["equivalence_paired_trials"] == "2"
        assert float(verdicts[strategy]["equivalence_max_test_accuracy_diff"]) == 0.0
    assert verdicts[BASELINE]["equivalence"] == "differs"
    assert "trainable params" in verdicts[BASELINE]["equivalence_detail"]
    findings = f"Identical results on paired trials: {', '.join(FREEZING)}."
    assert findings in (report / "report.md").read_text()
    assert findings in (report / "report.html").read_text()


def test_the_report_opens_with_the_answer_and_gives_repeats_with_confidence(report):
    page = (report / "report.md").read_text()
    assert page.index("> Answer for tiny, lr split head_backbone: ") < page.index("## Setup")
    confirmation = page[page.index("## Confirmation runs"):page.index("## Equivalence on the confirmation runs")]
    for strategy in DEFAULT_STRATEGIES:
        (row,) = [line for line in confirmation.splitlines() if f"| {strategy} " in line] or [confirmation]
        assert "| 2 / 0 " in row and "180 (one = 0.0056)" in row, row
    equivalence = page[page.index("## Equivalence on the confirmation runs"):page.index("## Cost measured side by side")]
    for strategy in FREEZING[1:]:
        (row,) = [line for line in equivalence.splitlines() if f"| {strategy} " in line] or [equivalence]
        assert "+0.0000 (95% CI +0.0000 to +0.0000)" in row and "no detectable difference at this budget" in row
    side_by_side = page[page.index("## Cost measured side by side"):page.index("## Summary")]
    assert all(f"| {strategy} " in side_by_side for strategy in DEFAULT_STRATEGIES)
    assert "not recorded" not in side_by_side


def test_the_report_is_logged_to_the_experiment_in_mlflow(report, tiny_sweep):
    client = MlflowClient(tiny_sweep.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'report'")
    assert len(runs) == 1
    logged = {Path(a.path).name for a in client.list_artifacts(runs[0].info.run_id, "reports/tiny")}
    assert {"report.html", "report.md", "trials.csv", "summary.csv"} <= logged
    assert runs[0].info.artifact_uri.startswith(tiny_sweep.results_dir.as_uri()), "artifacts belong beside the db"


@pytest.mark.parametrize(("args", "message"), [
    (["experiment=nope"], "no experiment 'nope'"),
    (["tracking.uri=http://127.0.0.1:9"], "cannot use MLflow tracking URI"),
    (["search.storage=not-a-url"], "no Optuna journal at"),
    (["report.bogus=1"], "report.bogus"),
    (["model=bogus"], "unknown model 'bogus'"),
])
def test_bad_input_is_one_clear_line_and_leaves_the_previous_report_alone(report, tiny_sweep, capsys, args, message):
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    done = report_here(capsys, "experiment=tiny", *report_args(tiny_sweep.results_dir), *args)
    assert_one_line_error(done, message)
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    assert [p.name for p in report.parent.iterdir()] == ["tiny"]


def test_a_results_dir_without_records_is_refused_and_nothing_is_created(tmp_path):
    """Through the real console command: one line on stderr, exit 2, no traceback, no empty database left."""
    done = sweep_command("sweep.report", *report_args(tmp_path / "empty"))
    assert_one_line_error(done, "no MLflow records")
    assert not (tmp_path / "empty").exists()


def test_failed_trials_are_counted_and_an_experiment_with_none_finished_is_refused(tmp_path, cache_dir, capsys):
    (tmp_path / "cache").symlink_to(cache_dir, target_is_directory=True)
    budget = ["search.n_trials=1", "train.epochs=1", "experiment=mixed", f"results_dir={tmp_path}"]
    diverging = sweep_command("sweep.run", "+strategy=requires_grad", "optimizer.lr=1e6", "search.max_failures=1",
                              *budget)  # one failure stops the study, rather than three retries
    assert diverging.returncode == 0, diverging.stderr
    refused = report_here(capsys, "experiment=mixed", *report_args(tmp_path))
    assert_one_line_error(refused, "experiment 'mixed' has no finished trials yet (1 failed)")
    assert not (tmp_path / "reports").exists()

    finishing = sweep_command("sweep.run", "+strategy=zero_lr", *budget)
    assert finishing.returncode == 0, finishing.stderr
    done = report_here(capsys, "experiment=mixed", *report_args(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = {row["strategy"]: row for row in read_csv(tmp_path / "reports" / "mixed" / "summary.csv")}
    assert (rows["requires_grad"]["failed"], rows["requires_grad"]["finished"]) == ("1", "0")
    assert rows["requires_grad"]["best_val_accuracy"] == ""
    assert rows["zero_lr"]["finished"] == "1"
    assert rows["zero_lr"]["equivalence"] == "not comparable"


def one_trial_records(pretrained: str) -> Records:
    """Records as `load` returns them, for one finished trial: what a model without pretrained weights leaves."""
    trial = TrialRecord("scratch", "uniform", "requires_grad", 0, "finished", run_id="run-0",
                        tags={"model.pretrained": pretrained, "device": "cpu"}, params={"train.batch_size": "32"},
                        metrics={"val_accuracy": 0.5, "test_accuracy": 0.5, "train_time_s": 1.0, "step_time_ms": 2.0,
                                 "flops_per_step": 1e6, "samples_per_s": 320.0, "frozen_weight_drift": 0.0},
                        curves={"val_accuracy": [0.5], "train_loss": [1.0]})
    study = StudyRecord("scratch", "uniform", "requires_grad", "scratch.requires_grad.uniform", optuna.create_study(),
                        [trial])
    return Records(Sources("sqlite:////nowhere/mlflow.db", None, Path("/nowhere")), ["scratch"], [study])


def test_a_model_that_was_not_pretrained_is_said_before_any_number():
    page = html(build(one_trial_records("false"), "python -m sweep.report"))
    assert "NOT pretrained" in page
    assert page.index("NOT pretrained") < page.index('id="summary"')
    assert "NOT pretrained" in markdown(build(one_trial_records("false"), "python -m sweep.report"))
    assert "NOT pretrained" not in html(build(one_trial_records("true"), "python -m sweep.report"))


def test_names_from_the_records_stay_text_in_markdown_and_html():
    records = one_trial_records("true")
    records.trials[0].params["freeze.regex"] = "<script>alert(1)</script>[x](javascript:y)|"
    text, page = markdown(build(records, "python -m sweep.report")), html(build(records, "python -m sweep.report"))
    assert "<script>" not in text and "&lt;script&gt;" in text and not re.search(r"(?<!\\)\]\(javascript:", text)
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_a_report_replaces_only_what_a_report_wrote(tmp_path):
    previous = tmp_path / "reports" / "x"
    with staged(previous) as staging:
        for name in ("report.html", "old.png"):
            (staging / name).write_text("old")
    (previous / "notes.txt").write_text("the user's")
    with pytest.raises(RuntimeError), staged(previous) as staging:
        (staging / "report.html").write_text("half")
        raise RuntimeError("rendering failed")
    assert {p.name: p.read_text() for p in previous.iterdir() if p.name != MARKER} == \
        {"report.html": "old", "old.png": "old", "notes.txt": "the user's"}
    with staged(previous) as staging:
        for name in ("report.html", "new.png"):
            (staging / name).write_text("new")
    assert {p.name: p.read_text() for p in previous.iterdir() if p.name != MARKER} == \
        {"report.html": "new", "new.png": "new", "notes.txt": "the user's"}, "the old report's plot goes, the note stays"
    assert [p.name for p in previous.parent.iterdir()] == ["x"]
    with pytest.raises(RuntimeError), staged(tmp_path / "fresh" / "deeper" / "x"):
        raise RuntimeError("rendering failed")
    assert not (tmp_path / "fresh").exists(), "folders made for a report that failed are removed"
