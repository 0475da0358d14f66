"""The report's tables as formatted text: one definition feeds both the HTML and the Markdown."""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sweep.report.confidence import Estimate, PairedDifference, describe_needed
from sweep.report.headline import interval
from sweep.report.palette import Style
from sweep.report.records import TrialRecord
from sweep.report.summary import BASELINE, Comparison, StrategySummary, distinct
from sweep.report.transfer import CurvePoint, TransferCurve
from sweep.tracking import NOTHING_SEARCHED

Cell = Callable[[StrategySummary], str]
NOT_RECORDED = "not recorded"


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else format(value, spec) + suffix


def si(value: float | None, unit: str) -> str:
    """4.2e9 -> '4.2 G<unit>': FLOP counts span many orders of magnitude."""
    if value is None:
        return "-"
    for prefix, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def _trial_counts(s: StrategySummary) -> str:
    running = f" (+{s.counts['running']} running)" if s.counts["running"] else ""
    return f"{s.counts['finished']} / {s.counts['pruned']} / {s.counts['failed']}{running}"


def _test_range(s: StrategySummary) -> str:
    low, high = s.value("min_test_accuracy"), s.value("max_test_accuracy")
    return "-" if low is None else f"{low:.4f} - {high:.4f} ({s.counts['finished']} trials)"


def _value(key: str, spec: str, suffix: str = "") -> Cell:
    return lambda s: fmt(s.value(key), spec, suffix)


@dataclass(frozen=True)
class Column:
    header: str
    cell: Cell


STRATEGY = Column("strategy", lambda s: s.label)
GROUP = (Column("experiment", lambda s: s.experiment), Column("lr split", lambda s: s.lr_split))

OUTCOME = (
    STRATEGY,
    Column("trials finished / pruned / failed", _trial_counts),
    Column("best val accuracy", _value("best_val_accuracy", ".4f")),
    Column("median val accuracy", _value("median_val_accuracy", ".4f")),
    Column("test accuracy of the best trial", _value("best_test_accuracy", ".4f")),
    Column("test accuracy over finished trials (min - max)", _test_range),
    Column("frozen weights", lambda s: s.weight_verdict),
    Column("frozen norm statistics", lambda s: s.buffer_verdict),
    Column("equivalence", lambda s: s.verdict.status),
)
COST = (
    STRATEGY,
    Column("compute spent: train time (s)", _value("total_train_time_s", ".2f")),
    Column("compute spent: wall time (s)", _value("total_wall_time_s", ".1f")),
    Column("compute spent: training FLOPs (est.)", lambda s: si(s.value("total_train_flops_est"), "FLOP")),
    Column("median step time (ms)", _value("median_step_time_ms", ".2f")),
    Column(f"step time vs {BASELINE}", _value(f"step_time_ms_vs_{BASELINE}", ".2f", "x")),
    Column("median train time (s)", _value("median_train_time_s", ".2f")),
    Column("median samples/s", _value("median_samples_per_s", ",.0f")),
    Column("FLOPs per step", lambda s: si(s.value("median_flops_per_step"), "FLOP")),
    Column(f"FLOPs vs {BASELINE}", _value(f"flops_per_step_vs_{BASELINE}", ".2f", "x")),
    Column("median held memory (MiB)", lambda s: _mib(s, "median_held_bytes")),
    Column("median peak memory the trial added (MiB)",
           lambda s: _mib(s, "median_peak_rss_growth_bytes", "median_peak_cuda_allocated_bytes")),
    Column("median peak RSS of the process (MiB)", lambda s: _mib(s, "median_peak_rss_bytes")),
)
FROZEN = (
    STRATEGY,
    Column("frozen params", _value("median_frozen_params", ",.0f")),
    Column("trainable params", _value("median_trainable_params", ",.0f")),
    Column("frozen weights", lambda s: s.weight_verdict),
    Column("why the weights moved", lambda s: s.weight_drift.text() if s.weight_drift else ""),
    Column("frozen norm statistics (BatchNorm running mean and variance)", lambda s: s.buffer_verdict),
    Column("why the statistics moved", lambda s: s.buffer_drift.text() if s.buffer_drift else ""),
)
EQUIVALENCE = (
    STRATEGY,
    Column("verdict", lambda s: s.verdict.status),
    Column("paired trials", lambda s: "-" if s.verdict.status == "reference" else str(s.verdict.paired)),
    Column("max abs. difference in test accuracy", lambda s: fmt(s.verdict.max_test_diff, ".4f")),
    Column("detail", lambda s: s.verdict.detail()),
    Column("cause", lambda s: s.cause),
)


def _estimate(estimate: Estimate | None) -> str:
    if estimate is None:
        return NOT_RECORDED
    return f"{estimate.mean:.4f}" + ("" if estimate.low is None else f" ({estimate.low:.4f}-{estimate.high:.4f})")


def _test_set(s: StrategySummary) -> str:
    size = s.confirmation.test_examples
    return NOT_RECORDED if size is None else f"{size} (one = {1 / size:.4f})"


def _confirmed(s: StrategySummary) -> str:
    choice = s.confirmation.choice
    return ("none recorded" if choice is None else "the fixed configuration" if choice == NOTHING_SEARCHED
            else f"trial {choice} (best val accuracy)")


def _repeat_counts(s: StrategySummary) -> str:
    return f"{len(s.confirmation.runs)} / {s.confirmation.failed}"


def _paired(read: Callable[[PairedDifference], str], attribute: str = "vs_baseline") -> Cell:
    """A cell of a paired difference; '-' for the reference itself or where no seed was shared."""
    return lambda s: "-" if getattr(s, attribute) is None else read(getattr(s, attribute))


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _ratio(s: StrategySummary) -> str:
    timed = s.confirmation.side_by_side
    if timed is None:
        return NOT_RECORDED
    if s.strategy == BASELINE:
        return "1 (the baseline)"
    return f"{timed.ratio.median:.2f}x ({timed.ratio.q1:.2f}-{timed.ratio.q3:.2f})"


def _crosses(s: StrategySummary) -> str:
    timed = s.confirmation.side_by_side
    if timed is None or s.strategy == BASELINE:
        return "-"
    return "YES: not cheaper or dearer beyond noise" if timed.ratio.crosses(1.0) else "no"


CONFIRMATION = (
    STRATEGY,
    Column("configuration repeated", _confirmed),
    Column("repeats finished / failed", _repeat_counts),
    Column("test accuracy: mean (95% CI)", lambda s: _estimate(s.confirmation.accuracy)),
    Column("test set size (one example =)", _test_set),
    Column(f"difference to {BASELINE}: mean (95% CI)", _paired(lambda d: interval(d.difference))),
    Column("paired t-test p", _paired(lambda d: _p(d.p_value))),
    Column("Wilcoxon signed-rank p", _paired(lambda d: _p(d.wilcoxon_p))),
    Column("verdict", _paired(lambda d: d.verdict)),
    Column("repeats to detect it (80% power)", _paired(lambda d: describe_needed(d.repeats_needed))),
)
REPEAT_EQUIVALENCE = (
    STRATEGY,
    Column("reference", lambda s: s.verdict.reference),
    Column("difference in test accuracy: mean (95% CI)",
           _paired(lambda d: interval(d.difference), "vs_reference")),
    Column("paired t-test p", _paired(lambda d: _p(d.p_value), "vs_reference")),
    Column("verdict", _paired(lambda d: d.verdict, "vs_reference")),
)
SIDE_BY_SIDE = (
    STRATEGY,
    Column("step time (ms): median (IQR)", lambda s: NOT_RECORDED if s.confirmation.side_by_side is None else
           "{0.median:.2f} ({0.q1:.2f}-{0.q3:.2f})".format(s.confirmation.side_by_side.step_ms)),
    Column(f"step time vs {BASELINE}: median (IQR of rounds)", _ratio),
    Column("ratio's spread crosses 1.0", _crosses),
    Column(f"FLOPs vs {BASELINE} (exact, from the repeats)", lambda s: fmt(s.value("confirmed_flops_vs_baseline"),
                                                                          ".2f", "x")),
    Column("timing session", lambda s: (s.confirmation.side_by_side.session or "-") if s.confirmation.side_by_side
           else "-"),
)


def _mib(s: StrategySummary, *keys: str) -> str:
    """The first of `keys` the records hold, in MiB; memory figures older sweeps did not record say so."""
    value = next((v for v in map(s.value, keys) if v is not None), None)
    return NOT_RECORDED if value is None else f"{value / 2**20:.2f}"


def _best_params(searched: Sequence[str]) -> list[Column]:
    def param(path: str) -> Cell:
        return lambda s: (fmt(s.best.searched.get(path) if s.best else None, ".4g")
                          + (" (no effect)" if path in s.no_effect and s.best else ""))

    return [STRATEGY, Column("best trial", lambda s: fmt(s.best.number if s.best else None, "d")),
            Column("its val accuracy", _value("best_val_accuracy", ".4f")),
            *(Column(path, param(path)) for path in searched)]


@dataclass(frozen=True)
class TableSpec:
    id: str
    title: str
    caption: str
    columns: Callable[[Sequence[str]], Sequence[Column]]  # given the searched hyperparameters


TABLES = (
    TableSpec("confirmation", "Confirmation runs: accuracy with confidence",
              "Each strategy's chosen configuration (its best trial by validation accuracy, or the fixed "
              "configuration when nothing was searched) re-run with the same seeds in every strategy (search.repeats). "
              "Mean and 95% confidence interval (Student's t) over finished repeats; differences are paired by "
              f"seed against {BASELINE}. Verdict from the paired t-test at 95%; the exact Wilcoxon signed-rank "
              "p-value is the distribution-free view (with n pairs it cannot go below 2/2^n, so 0.25 with 3). "
              "'Repeats to detect it': paired repeats for 80% power at the observed difference and spread.",
              lambda _: CONFIRMATION),
    TableSpec("repeat-equivalence", "Equivalence on the confirmation runs",
              "Test accuracy minus the reference mechanism's, paired by seed: identical mechanisms give a difference "
              "of exactly 0 with a zero-width interval.", lambda _: REPEAT_EQUIVALENCE),
    TableSpec("side-by-side", "Cost measured side by side",
              "Where each figure comes from: step times here were measured after the search, every study's chosen "
              "configuration timed round-robin on the same batches in one process (timing.rounds rounds of "
              f"timing.steps steps), so machine load hits all alike; the ratio to {BASELINE} is taken within each "
              "round, then its median and interquartile range over rounds. A ratio whose interquartile range "
              "crosses 1.0 is flagged: that strategy is not measurably cheaper or dearer. The Cost table's step "
              "times are per trial, as the trials ran one after another; FLOPs are exact counts.",
              lambda _: SIDE_BY_SIDE),
    TableSpec("summary", "Summary", "Trial counts are Optuna's states. Best = highest validation accuracy among "
              "finished trials; medians and ranges are over finished trials.", lambda _: OUTCOME),
    TableSpec("cost", "Cost", "Compute spent sums every trial, pruned and failed ones included; training FLOPs are "
              "FLOPs per sample (from one counted batch) times the samples trained, plus a cached_prefix cache's "
              "one-off prefix FLOPs in the trial that built it (its build time is in that trial's train time). Per-step medians (step time, "
              "samples/s, FLOPs, memory) cover every measured trial, the train-time median finished trials only. "
              "Times were measured on the device named in the setup. Held memory: parameters, gradients, optimizer "
              "state and the mechanism's copies (exact, no activations). Peak memory the trial added, over its "
              "training passes: on a CPU the growth of the process's resident memory from the trial's start to its "
              "peak (activations, batches and all), on CUDA the most memory tensors held at once. Peak RSS: the "
              "whole process at that peak, interpreter and libraries included.", lambda _: COST),
    TableSpec("frozen", "Did the frozen layers stay frozen?", "Two verdicts: the frozen weights, and the norm "
              "statistics (BatchNorm running mean and variance) of frozen blocks; each is the largest absolute change "
              "over every trial, 0 meaning it really stayed frozen. freeze.norm_policy=eval holds the statistics.",
              lambda _: FROZEN),
    TableSpec("equivalence", "Equivalence of the mechanisms", "Paired trials: the same trial number (same seed), "
              "the same whole configuration and the same backbone weights (sha256). Identical = same test accuracy, "
              "validation and loss curves, trainable-parameter count and drifts on every pair. The cause is read from "
              "the per-epoch traces; what they cannot account for is called unexplained.", lambda _: EQUIVALENCE),
    TableSpec("best-params", "Best hyperparameters", "The searched hyperparameters of each strategy's best trial. "
              "(no effect): the trials' lrs did not depend on this lr-split parameter (see Findings).",
              _best_params),
)


@dataclass
class Table:
    id: str
    title: str
    caption: str
    headers: list[str]
    rows: list[list[str]]
    colors: list[str]  # each row's strategy colour, to match the plots
    links: list[str | None] = field(default_factory=list)  # per row: where the cell in `link_column` points
    link_column: int | None = None


def run_link(tracking_uri: str, trial: TrialRecord) -> str | None:
    """The trial's page in MLflow's UI, when the records come from a tracking server (a local store has no
    address a reader could open)."""
    if not tracking_uri.startswith(("http://", "https://")) or trial.run_id is None:
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{trial.experiment_id}/runs/{trial.run_id}"


def trial_table(comparisons: Sequence[Comparison], styles: dict[str, Style], tracking_uri: str) -> Table:
    """Every trial, each row leading to its MLflow run where the tracking URI is a server."""
    grouped = len(comparisons) > 1
    searched = sorted({path for c in comparisons for path in c.searched})
    trials = [(c, t) for c in comparisons for t in c.trials]
    headers = [*(c.header for c in GROUP if grouped), "strategy", "trial", "state", "epochs", "val accuracy",
               "test accuracy", *searched, "MLflow run"]
    rows = [[*((c.experiment, c.lr_split) if grouped else ()), t.strategy, str(t.number), t.state, str(t.epochs_run),
             fmt(t.metrics.get("val_accuracy"), ".4f"), fmt(t.metrics.get("test_accuracy"), ".4f"),
             *(fmt(t.searched.get(path), ".4g") for path in searched), t.run_id or "-"] for c, t in trials]
    return Table("trials", "Trials", "Every trial of every strategy; the run column leads to the trial's run in MLflow "
                 "when the records come from a tracking server.", headers, rows,
                 [styles[t.strategy].color for _, t in trials], [run_link(tracking_uri, t) for _, t in trials],
                 link_column=len(headers) - 1)


def tables(comparisons: Sequence[Comparison], styles: dict[str, Style]) -> list[Table]:
    """Every comparison's rows in one table each, so several experiments or lr splits read side by side."""
    group = list(GROUP) if len({(c.experiment, c.lr_split) for c in comparisons}) > 1 else []
    searched = sorted({path for c in comparisons for path in c.searched})
    summaries = distinct(s for c in comparisons for s in c.summaries)
    found = []
    for spec in TABLES:
        columns = [*group, *spec.columns(searched)]
        found.append(Table(spec.id, spec.title, spec.caption, [c.header for c in columns],
                           [[c.cell(s) for c in columns] for s in summaries],
                           [styles[s.strategy].color for s in summaries]))
    return found


def _curve_row(curve: TransferCurve, strategy: str, point: CurvePoint) -> list[str]:
    confirmation = point.summary.confirmation
    difference = curve.versus_best(strategy, point)
    timed = confirmation.side_by_side
    flops = point.summary.value("confirmed_flops_vs_baseline")
    return [strategy, point.point.short + (f" (= {BASELINE})" if point.stand_in else ""), str(len(confirmation.runs)),
            _estimate(confirmation.accuracy),
            "the line's most accurate" if difference is None and confirmation.runs else
            "-" if difference is None else interval(difference.difference),
            "-" if difference is None else difference.verdict,
            NOT_RECORDED if timed is None else f"{timed.ratio.median:.2f}x ({timed.ratio.q1:.2f}-{timed.ratio.q3:.2f})",
            fmt(flops, ".2f", "x")]


def transfer_tables(curves: Sequence[TransferCurve], styles: dict[str, Style]) -> list[Table]:
    """A table per grid sweep: every strategy's points along the axis, each against the line's most accurate."""
    headers = ["strategy", "grid point", "repeats", "test accuracy: mean (95% CI)",
               "difference to the strategy's most accurate point (95% CI)", "verdict (paired t-test)",
               f"step time vs {BASELINE}: median (IQR)", f"FLOPs vs {BASELINE}"]
    return [Table(f"transfer-{index}", f"Along {curve.axis}: {curve.title}",
                  "Each strategy's confirmation runs at every grid point; a point is compared, paired by seed, with "
                  "the most accurate point of the same strategy. A point that freezes nothing is "
                  f"{BASELINE}'s run for every strategy. Step times: the side-by-side timing; FLOPs: exact.",
                  headers, [_curve_row(curve, strategy, p) for strategy, line in curve.lines.items() for p in line],
                  [styles[strategy].color for strategy, line in curve.lines.items() for _ in line])
            for index, curve in enumerate(curves)]
