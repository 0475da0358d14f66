"""The report's figures: matplotlib (Agg, no display), labelled axes with units, one colour per strategy.

Each plot function takes one comparison and returns a `Plot`: a PNG, or the reason there is none.
"""

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import optuna  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution  # noqa: E402
from optuna.trial import TrialState  # noqa: E402
from optuna.visualization.matplotlib import plot_optimization_history, plot_parallel_coordinate  # noqa: E402

from sweep.blocknet import HEAD  # noqa: E402
from sweep.report.palette import Style  # noqa: E402
from sweep.report.records import TrialRecord  # noqa: E402
from sweep.report.summary import BASELINE, Comparison  # noqa: E402
from sweep.report.transfer import TransferCurve  # noqa: E402
from sweep.trace import LR_PREFIX  # noqa: E402

MIN_IMPORTANCE_TRIALS = 5  # finished trials a study needs before fANOVA importances mean anything
DPI = 100
SHORT_NUMBER = ticker.FuncFormatter(lambda value, _: f"{value:.3g}")  # 0.042, not 4.2x10^-2 (log axes)


@dataclass
class Plot:
    name: str
    title: str
    caption: str
    png: bytes | None = None
    note: str = ""  # why there is no figure


def _finish(plot: Plot, fig: Figure, title: str) -> Plot:
    """Title the figure and keep it as PNG bytes (no timestamp in them, so an unchanged plot is an unchanged file)."""
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    plot.png = buffer.getvalue()
    return plot


def _devices(comparison: Comparison) -> str:
    return ", ".join(sorted({t.tags["device"] for t in comparison.trials if "device" in t.tags})) or "device unknown"


def _finished(trials: list[TrialRecord]) -> list[TrialRecord]:
    return [t for t in trials if t.state == "finished" and t.measured]


def _pruned(trials: list[TrialRecord]) -> list[TrialRecord]:
    return [t for t in trials if t.state == "pruned" and t.measured]


def _scatter(ax, trials: list[TrialRecord], x: Callable[[TrialRecord], float], style: Style, label: str) -> None:
    """Finished trials filled, pruned ones hollow (their accuracy is from the epoch they stopped at)."""
    finished, pruned = _finished(trials), _pruned(trials)
    ax.scatter([x(t) for t in finished], [t.metrics["val_accuracy"] for t in finished], color=style.color,
               marker=style.marker, s=45, alpha=0.8, label=label, zorder=3)
    ax.scatter([x(t) for t in pruned], [t.metrics["val_accuracy"] for t in pruned], facecolors="none",
               edgecolors=style.color, marker=style.marker, s=45, zorder=3)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(time, accuracy) points no other point beats on both: less time and at least as much accuracy."""
    front: list[tuple[float, float]] = []
    for time, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or accuracy > front[-1][1]:
            front.append((time, accuracy))
    return front


def pareto(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("pareto", "Accuracy vs training time",
                "Every trial: filled = finished, hollow = pruned. The dashed line is the Pareto front of finished "
                "trials (no other trial is both faster and more accurate); ringed points lie on it.")
    fig, ax = plt.subplots(figsize=(9, 5.2))
    for study in comparison.studies:
        _scatter(ax, study.trials, lambda t: t.metrics["train_time_s"], styles[study.strategy], study.strategy)
    front = pareto_front([(t.metrics["train_time_s"], t.metrics["val_accuracy"])
                          for t in _finished(comparison.trials)])
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="black", linestyle="--",
            linewidth=1, label="Pareto front", zorder=2)
    ax.scatter([p[0] for p in front], [p[1] for p in front], s=160, facecolors="none", edgecolors="black",
               linewidths=1.2, zorder=4)
    ax.set_xlabel(f"training time of the trial (s, device time in training steps on {_devices(comparison)})")
    ax.set_ylabel("validation accuracy at the last epoch (fraction)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _finish(plot, fig, f"Accuracy vs training time: {comparison.title}")


def _measured(trials: list[TrialRecord], key: str, scale: float) -> list[float]:
    return [t.metrics[key] / scale for t in trials if key in t.metrics]


def _bars(ax, comparison: Comparison, styles: dict[str, Style], key: str, scale: float, label: str) -> None:
    strategies = [s.strategy for s in comparison.summaries]
    medians = [(s.value(f"median_{key}") or 0) / scale for s in comparison.summaries]
    ax.barh(strategies, medians, color=[styles[s].color for s in strategies], alpha=0.85)
    for row, study in enumerate(comparison.studies):
        values = _measured(study.trials, key, scale)
        ax.scatter(values, [row] * len(values), color="black", s=10, zorder=3,
                   label="one trial" if row == 0 else None)
    for row, (summary, study) in enumerate(zip(comparison.summaries, comparison.studies)):
        relative = summary.value(f"{key}_vs_{BASELINE}")
        right = max([medians[row], *_measured(study.trials, key, scale)])
        if relative is not None:
            ax.annotate(f"{relative:.2f}x", (right, row), xytext=(6, 0), textcoords="offset points",
                        va="center", fontsize=8)
    ax.margins(x=0.15)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)


def cost(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("cost", "Step time and FLOPs by strategy",
                f"Bars: median over every measured trial (dots); labels: median relative to {BASELINE}. "
                "FLOPs are counted, not timed, so they do not depend on the machine.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(comparison.summaries) + 2.2), sharey=True)
    _bars(left, comparison, styles, "step_time_ms", 1, f"median training-step time (ms, {_devices(comparison)})")
    _bars(right, comparison, styles, "flops_per_step", 1e6, "forward+backward FLOPs per training step (MFLOP)")
    left.legend(fontsize=8, loc="lower right")
    return _finish(plot, fig, f"Cost per training step: {comparison.title}")


def learning_curves(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("learning_curves", "Learning curves of each strategy's best trial",
                "Curves that coincide are drawn on top of each other, the first strategy widest, so identical "
                "mechanisms show as nested lines.")
    best = [s for s in comparison.summaries if s.best is not None]
    if not best:
        plot.note = "no strategy has a finished trial"
        return plot
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for rank, summary in enumerate(best):
        style, trial = styles[summary.strategy], summary.best
        width = 1.2 + 1.0 * (len(best) - 1 - rank)
        for ax, key in ((acc_ax, "val_accuracy"), (loss_ax, "train_loss")):
            curve = trial.curves.get(key, [])
            ax.plot(range(1, len(curve) + 1), curve, color=style.color, marker=style.marker, markersize=4,
                    linewidth=width, alpha=0.85, label=f"{summary.strategy} (trial {trial.number})")
    acc_ax.set_ylabel("validation accuracy (fraction)")
    loss_ax.set_ylabel("mean training loss (cross-entropy)")
    for ax in (acc_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    loss_ax.legend(fontsize=8)
    return _finish(plot, fig, f"Learning curves of the best trials: {comparison.title}")


def _lr_keys(trial: TrialRecord) -> list[str]:
    """The trial's `lr/<block>` traces, the head last."""
    keys = sorted(k for k in trial.traces if k.startswith(LR_PREFIX))
    return sorted(keys, key=lambda k: k == LR_PREFIX + HEAD)


def lr_traces(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("lr_traces", "Learning rate of each param group, as the optimizer held it",
                "Each strategy's best trial (or its first measured one): the largest lr of each block's param groups "
                "at the last step of every epoch, after the scheduler. A frozen block drawn above 0 could be moved by "
                "the optimizer; blocks that keep the lr split's ratios run parallel on the log scale.")
    shown = []
    for summary, study in zip(comparison.summaries, comparison.studies):
        trial = summary.best or next((t for t in study.trials if t.measured and _lr_keys(t)), None)
        if trial is not None and _lr_keys(trial):
            shown.append((summary.strategy, trial))
    if not shown:
        plot.note = "lr traces not recorded (the records predate them)"
        return plot
    columns = min(3, len(shown))
    rows = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns + 1, 3.4 * rows), sharey=True, squeeze=False)
    colors = plt.get_cmap("tab10")
    keys = sorted({k for _, t in shown for k in _lr_keys(t)}, key=lambda k: (k == LR_PREFIX + HEAD, k))
    for ax, (strategy, trial) in zip(axes.flat, shown):
        drawn = _lr_keys(trial)
        for rank, key in enumerate(drawn):  # the first widest, so groups on the same lr show as nested lines
            epochs = sorted(trial.trace(key))
            ax.plot(epochs, [trial.trace(key)[e] for e in epochs], marker="o", markersize=3,
                    linewidth=1 + 0.8 * (len(drawn) - 1 - rank), alpha=0.85, color=colors(keys.index(key) % 10),
                    label=key.removeprefix(LR_PREFIX))
        ax.set_yscale("symlog", linthresh=1e-4)
        ax.set_title(f"{strategy} (trial {trial.number})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(max(trial.trace(k)) for k in drawn) + 0.5)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(shown):]:
        ax.set_visible(False)
    fig.subplots_adjust(hspace=0.55, top=1 - 0.6 / (3.4 * rows))  # room for the title above the first row
    for row in axes:
        row[0].set_ylabel("lr (symlog: linear below 1e-4)")
    axes.flat[len(shown) - 1].legend(fontsize=8, title="param groups", loc="upper left", bbox_to_anchor=(1.02, 1))
    return _finish(plot, fig, f"lr per param group: {comparison.title}")


def _is_log(distribution: object) -> bool:
    return isinstance(distribution, (FloatDistribution, IntDistribution)) and distribution.log


def accuracy_vs_params(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("accuracy_vs_params", "Accuracy against the searched hyperparameters (lr and lr split)",
                "One point per trial (filled = finished, hollow = pruned); log axes where the search was log-scaled.")
    distributions = {path: d for s in comparison.studies for path, d in s.distributions.items()}
    if not distributions:
        plot.note = "nothing was searched: every hyperparameter was fixed on the command line"
        return plot
    paths = sorted(distributions)
    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths) + 1, 4.2), sharey=True, squeeze=False)
    for ax, path in zip(axes[0], paths):
        for study in comparison.studies:
            trials = [t for t in study.trials if path in t.searched]
            _scatter(ax, trials, lambda t: t.searched[path], styles[study.strategy], study.strategy)
        if _is_log(distributions[path]):
            ax.set_xscale("log")
            values = [t.searched[path] for t in comparison.trials if path in t.searched]
            within_a_decade = max(values) < 10 * min(values)  # then only minor ticks fall inside: label them
            ax.xaxis.set_major_formatter(SHORT_NUMBER)
            ax.xaxis.set_minor_formatter(SHORT_NUMBER if within_a_decade else ticker.NullFormatter())
            ax.tick_params(axis="x", which="both", labelrotation=45, labelsize=8)
        ax.set_xlabel(f"{path} ({'log scale' if _is_log(distributions[path]) else 'linear scale'})")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation accuracy at the last epoch (fraction)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return _finish(plot, fig, f"Accuracy vs searched hyperparameters: {comparison.title}")


def importances(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("importances", "Optuna hyperparameter importances",
                "fANOVA importance: the share of the variance of validation accuracy each hyperparameter explains, "
                "per strategy's study.")
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = {}
    for study in comparison.studies:
        finished = study.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if len(finished) >= MIN_IMPORTANCE_TRIALS and len(study.distributions) >= 2:
            found[study.strategy] = optuna.importance.get_param_importances(study.study, evaluator=evaluator)
    if not found:
        plot.note = (f"not enough trials: importances need at least {MIN_IMPORTANCE_TRIALS} finished trials in a "
                     "study and at least 2 searched hyperparameters")
        return plot
    paths = sorted({p for values in found.values() for p in values})
    height = 0.8 / len(found)
    fig, ax = plt.subplots(figsize=(9, 1.1 * len(paths) + 1.5))
    for slot, (strategy, values) in enumerate(found.items()):
        ax.barh([row + slot * height for row in range(len(paths))], [values.get(p, 0) for p in paths],
                height=height, color=styles[strategy].color, label=strategy)
    ax.set_yticks([row + 0.4 - height / 2 for row in range(len(paths))], paths)
    ax.invert_yaxis()
    ax.set_xlabel("importance (fANOVA, fraction of validation-accuracy variance)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(plot, fig, f"Hyperparameter importances: {comparison.title}")


def trial_curves(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("trial_curves", "Learning curves of every trial",
                "One panel per strategy, one line per trial: solid = finished, dashed = pruned (it stopped where "
                "its line ends), thick = the strategy's best trial.")
    studies = [s for s in comparison.studies if any(t.curves.get("val_accuracy") for t in s.trials)]
    if not studies:
        plot.note = "no trial recorded a validation accuracy"
        return plot
    columns = min(3, len(studies))
    rows = -(-len(studies) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns + 1, 3.2 * rows), sharex=True, sharey=True,
                             squeeze=False)
    best = {s.strategy: s.best.number for s in comparison.summaries if s.best is not None}
    for ax, study in zip(axes.flat, studies):
        for trial in study.trials:
            curve = trial.curves.get("val_accuracy", [])
            ax.plot(range(1, len(curve) + 1), curve, color=styles[study.strategy].color, alpha=0.75,
                    linestyle="--" if trial.state == "pruned" else "-",
                    linewidth=2.6 if best.get(study.strategy) == trial.number else 1.0)
        ax.set_title(study.strategy, fontsize=10)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(studies):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy")
    return _finish(plot, fig, f"Every trial's validation accuracy: {comparison.title}")


def _optuna_axes(draw: Callable[[], Axes]) -> Axes:
    """An Optuna matplotlib plot, its style sheet (ggplot) kept to its own figure and its notices silenced
    (its functions are "experimental"; an axis with a single value, e.g. one strategy, makes matplotlib warn)."""
    with plt.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        return draw()


def optimization_history(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("optimization_history", "Optimisation history (Optuna)",
                "optuna.visualization.matplotlib.plot_optimization_history over every strategy's study: each "
                "finished trial's validation accuracy in the order Optuna ran them, and the best so far.")
    studies = [s for s in comparison.studies if s.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not studies:
        plot.note = "no strategy has a finished trial"
        return plot
    multi_objective = len(studies[0].study.directions) > 1  # then Optuna needs to be told which value to plot
    ax = _optuna_axes(lambda: plot_optimization_history(
        [s.study for s in studies], target=(lambda t: t.values[0]) if multi_objective else None,
        target_name="validation accuracy"))
    for study in studies:  # the report's colours, and strategies rather than study names in the legend
        suffix = f" of {study.name}" if len(studies) > 1 else ""  # Optuna names the study only among several
        for artist in [*ax.collections, *ax.lines]:
            label = artist.get_label()
            if not label.startswith("_") and label.endswith(suffix):
                artist.set_color(styles[study.strategy].color)
                artist.set_label(f"{label.removesuffix(suffix)} of {study.strategy}")
    ax.set_title("")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.figure.set_size_inches(9, 5)
    return _finish(plot, ax.figure, f"Optimisation history: {comparison.title}")


def parallel_coordinates(comparison: Comparison, styles: dict[str, Style]) -> Plot:
    plot = Plot("parallel_coordinates", "Parallel coordinates (Optuna)",
                "optuna.visualization.matplotlib.plot_parallel_coordinate over the finished trials of every "
                "strategy, the strategy as one more axis: one line per trial, coloured by validation accuracy.")
    combined = optuna.create_study(directions=["maximize"])  # in memory: every strategy's trials side by side
    strategies = CategoricalDistribution([s.strategy for s in comparison.studies])
    for study in comparison.studies:
        for trial in study.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            combined.add_trial(optuna.trial.create_trial(
                params={"strategy": study.strategy, **trial.params}, value=trial.values[0],
                distributions={"strategy": strategies, **trial.distributions}))
    if not combined.trials:
        plot.note = "no strategy has a finished trial"
        return plot
    ax = _optuna_axes(lambda: plot_parallel_coordinate(combined, target_name="validation accuracy"))
    ax.set_title("")
    ax.figure.set_size_inches(2.2 * (len(combined.best_trial.params) + 1) + 2, 5)
    return _finish(plot, ax.figure, f"Parallel coordinates: {comparison.title}")


def transfer_curve(curve: TransferCurve, styles: dict[str, Style]) -> Plot:
    """Yosinski et al.'s transfer curve when the axis is depth: accuracy and cost per strategy along the grid."""
    plot = Plot("transfer_curve", f"Accuracy and cost against {curve.axis}",
                "One line per strategy. Left: mean test accuracy over the confirmation runs with its 95% confidence "
                f"interval; the dashed line and band are {BASELINE}'s. Right: the side-by-side step time relative to "
                f"{BASELINE}, median with the interquartile range of rounds. Hollow markers: a point that freezes "
                f"nothing, where every strategy is {BASELINE}'s run.")
    fig, (acc_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4.6))
    for rank, (strategy, line) in enumerate(curve.lines.items()):
        style = styles[strategy]
        width = 1.2 + 1.0 * (len(curve.lines) - 1 - rank)  # lines that coincide stay visible, the first widest
        confirmed = [p for p in line if p.summary.confirmation.runs]
        xs = [curve.position(p.point) for p in confirmed]
        estimates = [p.summary.confirmation.accuracy for p in confirmed]
        low = [e.mean - (e.low if e.low is not None else e.mean) for e in estimates]
        high = [(e.high if e.high is not None else e.mean) - e.mean for e in estimates]
        acc_ax.errorbar(xs, [e.mean for e in estimates], yerr=[low, high], color=style.color, marker=style.marker,
                        capsize=3, label=strategy, alpha=0.85, linewidth=width)
        timed = [p for p in line if p.summary.confirmation.side_by_side is not None]
        ratios = [p.summary.confirmation.side_by_side.ratio for p in timed]
        cost_ax.errorbar([curve.position(p.point) for p in timed], [r.median for r in ratios],
                         yerr=[[r.median - r.q1 for r in ratios], [r.q3 - r.median for r in ratios]],
                         color=style.color, marker=style.marker, capsize=3, label=strategy, alpha=0.85,
                         linewidth=width)
        for ax, points, values in ((acc_ax, confirmed, [e.mean for e in estimates]),
                                   (cost_ax, timed, [r.median for r in ratios])):
            stand_ins = [(curve.position(p.point), v) for p, v in zip(points, values) if p.stand_in]
            ax.scatter([x for x, _ in stand_ins], [v for _, v in stand_ins], s=90, facecolors="white",
                       edgecolors=style.color, zorder=4)
    baseline = curve.baseline.confirmation.accuracy if curve.baseline and curve.baseline.confirmation.runs else None
    if baseline is not None:
        acc_ax.axhline(baseline.mean, color="black", linestyle="--", linewidth=1, label=BASELINE)
        if baseline.low is not None:
            acc_ax.axhspan(baseline.low, baseline.high, color="black", alpha=0.08)
    cost_ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    for ax in (acc_ax, cost_ax):
        ax.set_xlabel(curve.axis + ("" if curve.numeric else " (grid points)"))
        if not curve.numeric:
            ax.set_xticks(range(len(curve.grid.points)), [p.short for p in curve.grid.points], rotation=30,
                          ha="right", fontsize=8)
        else:
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    acc_ax.set_ylabel("test accuracy over the repeats (fraction)")
    cost_ax.set_ylabel(f"step time / {BASELINE}'s (side by side)")
    acc_ax.legend(fontsize=8)
    return _finish(plot, fig, f"Transfer curve: {curve.title}")


PLOTS: tuple[Callable[[Comparison, dict[str, Style]], Plot], ...] = (
    pareto, cost, learning_curves, trial_curves, lr_traces, accuracy_vs_params, importances, optimization_history,
    parallel_coordinates)
