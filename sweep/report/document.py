"""What the report says, independent of its format: facts, warnings, findings in words, tables and figures."""

import datetime
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sweep.report.causes import Explanation
from sweep.report.palette import styles
from sweep.report.plots import PLOTS, Plot, transfer_curve
from sweep.report.records import Records, TrialRecord
from sweep.report.setup import facts
from sweep.report.headline import Answer, answer
from sweep.report.confidence import WORSE
from sweep.report.summary import BASELINE, Comparison, StrategySummary, comparisons, distinct
from sweep.report.transfer import TransferCurve, curves
from sweep.report.tables import Table, tables, transfer_tables, trial_table


@dataclass
class Section:
    """One comparison (experiment x lr split): its findings in words and its figures."""

    title: str
    slug: str  # names its image files when a report holds several comparisons
    findings: list[str]
    plots: list[Plot]


@dataclass
class Document:
    title: str
    generated: str
    sources: list[tuple[str, str]]
    answers: list[Answer]  # the headline: one per experiment and lr split, before anything else
    warnings: list[str]
    facts: Table
    tables: list[Table]
    sections: list[Section]
    comparisons: list[Comparison]


def safe_name(text: str) -> str:
    """A file name from an experiment name, which MLflow lets contain anything."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _not_pretrained(experiment: str, trials: list[TrialRecord]) -> str | None:
    if any(t.tags.get("model.pretrained") == "false" for t in trials):
        return (f"Experiment {experiment!r}: the model was NOT pretrained (tag model.pretrained=false). "
                "These numbers compare freezing random weights, not fine-tuning a pretrained network.")
    return None


def _several_devices(experiment: str, trials: list[TrialRecord]) -> str | None:
    devices = sorted({t.tags["device"] for t in trials if "device" in t.tags})
    if len(devices) > 1:
        return (f"Experiment {experiment!r} ran on several devices ({', '.join(devices)}): its times and memory "
                "mix them; compare FLOPs, or rerun on one device.")
    return None


def _still_running(experiment: str, trials: list[TrialRecord]) -> str | None:
    running = sum(t.state == "running" for t in trials)
    if running:
        return (f"Experiment {experiment!r}: {running} trials are still running, or their process died; they are "
                "counted as running and left out of every median.")
    return None


WARNINGS = (_not_pretrained, _several_devices, _still_running)
"""Checks shown above everything else: each says what makes the numbers below mean less than they seem."""


def _warnings(records: Records, found: Sequence[Comparison]) -> list[str]:
    checked = (check(e, [t for t in records.trials if t.experiment == e]) for e in records.experiments
               for check in WARNINGS)
    split = (f"{c.title}: {c.split.finding()}" for c in found if c.split.finding())
    return [warning for warning in (*checked, *split) if warning]


def _names(strategies: Sequence[str]) -> str:
    return ", ".join(strategies) if strategies else "none"


def _frozen(what: str, summaries: Sequence[StrategySummary],
            verdict: Callable[[StrategySummary], tuple[str, Explanation | None]]) -> str:
    """One of the two frozen verdicts in words, each way it moved with its cause."""
    stayed = [s.strategy for s in summaries if verdict(s)[0] == "stayed frozen"]
    moved: dict[str, list[str]] = {}  # cause -> "strategy (moved by x)"
    for summary in summaries:
        words, explanation = verdict(summary)
        if words.startswith("moved"):
            moved.setdefault(explanation.text() if explanation else "unexplained", []).append(
                f"{summary.strategy} ({words})")
    return (f"{what} stayed frozen in: {_names(stayed)}."
            + "".join(f" They MOVED in: {_names(strategies)}" + (f": {cause}." if cause.startswith("unexplained")
                                                                   else f", because {cause}.")
                      for cause, strategies in moved.items()))


def _findings(comparison: Comparison) -> list[str]:
    """The verdicts in plain words: what agreed, what did not, what stayed frozen, what is cheapest."""
    if not any(sum(s.counts.values()) for s in comparison.summaries):
        return ["No search trials ran here (nothing to search: every searched key was fixed), so there are no "
                "paired trials to compare; the confirmation runs carry every figure, in the tables above."]
    verdicts = {s.strategy: s.verdict for s in comparison.summaries}
    reference = next(iter(verdicts.values())).reference
    identical = [s for s, v in verdicts.items() if v.status in ("reference", "identical")]
    findings = [f"Only {reference} ran here: there is nothing to compare it with." if len(verdicts) == 1 else
                f"Identical results on paired trials: {_names(identical)}." if len(identical) > 1 else
                f"No mechanism matched {reference} on paired trials."]
    findings += [f"{s.strategy}: {s.verdict.detail()}." + (f" Cause: {s.cause}." if s.cause else "")
                 for s in comparison.summaries if s.verdict.status in ("differs", "not comparable")]
    findings.append(_frozen("Frozen weights", comparison.summaries, lambda s: (s.weight_verdict, s.weight_drift)))
    findings.append(_frozen("Frozen norm statistics (BatchNorm running mean and variance)", comparison.summaries,
                            lambda s: (s.buffer_verdict, s.buffer_drift)))
    if comparison.split.finding():
        findings.append(comparison.split.finding())
    timed = [s for s in comparison.summaries if s.value("median_step_time_ms") is not None]
    if timed:
        fastest = min(timed, key=lambda s: s.value("median_step_time_ms"))
        step_ms, relative = fastest.value("median_step_time_ms"), fastest.value(f"step_time_ms_vs_{BASELINE}")
        findings.append(f"Fastest median training step: {fastest.strategy}, {step_ms:.2f} ms"
                        + (f" ({relative:.2f}x {BASELINE})." if relative is not None else "."))
    return findings


def _answers(found: Sequence[Comparison]) -> list[Answer]:
    """One answer per experiment and lr split, over every strategy (and grid point) compared there."""
    groups: dict[tuple[str, str], list[StrategySummary]] = {}
    for comparison in found:
        groups.setdefault((comparison.experiment, comparison.lr_split), []).extend(comparison.summaries)
    return [answer(f"{experiment}, lr split {lr_split}", distinct(summaries))
            for (experiment, lr_split), summaries in groups.items()]


def _curve_findings(curve: TransferCurve) -> list[str]:
    """Per strategy: where along the axis it is most accurate, and which points are detectably worse than that."""
    findings = []
    for strategy, line in curve.lines.items():
        best = curve.best_of(strategy)
        if best is None:
            findings.append(f"{strategy}: no confirmation runs recorded along {curve.axis}.")
            continue
        worse = [p.point.short for p in line if (d := curve.versus_best(strategy, p)) is not None and d.verdict == WORSE]
        findings.append(f"{strategy}: most accurate at {best.point.short} "
                        f"({best.summary.confirmation.accuracy.mean:.4f}); detectably worse (paired t-test) at "
                        f"{', '.join(worse) if worse else 'no other point'}.")
    return findings


def build(records: Records, command: str) -> Document:
    found = comparisons(records)
    palette = styles(sorted({s.strategy for s in records.studies}))
    transfer = curves(found)
    sections = [Section(f"Transfer curve: {curve.title}", safe_name(f"{curve.experiment}.{curve.lr_split}.grid"),
                        _curve_findings(curve), [transfer_curve(curve, palette)]) for curve in transfer]
    sections += [Section(c.title, safe_name(f"{c.experiment}.{c.lr_split}" + (f".{c.point.label}" if c.point else "")),
                         _findings(c), [plot(c, palette) for plot in PLOTS]) for c in found]
    sources = [("tracking URI", records.sources.tracking_label), ("Optuna storage", records.sources.storage_label),
               ("regenerate with", command)]
    return Document(f"freeze-sweep report: {', '.join(records.experiments)}",
                    datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), sources,
                    _answers(found), _warnings(records, found), facts(records),
                    [*tables(found, palette), *transfer_tables(transfer, palette),
                     trial_table(found, palette, records.sources.tracking_uri)], sections, found)


def trial_rows(records: Records) -> list[dict[str, object]]:
    """trials.csv: one row per Optuna trial, every metric (recorded and derived) and every param."""
    metric_keys = sorted({k for t in records.trials for k in t.metrics} | {"train_flops_est"})
    param_keys = sorted({k for t in records.trials for k in t.params})

    def row(t: TrialRecord) -> dict[str, object]:
        return {"experiment": t.experiment, "lr_split": t.lr_split, "strategy": t.strategy, "trial": t.number,
                "state": t.state, "mlflow_run_id": t.run_id, "device": t.tags.get("device"),
                "model_pretrained": t.tags.get("model.pretrained"), "epochs_run": t.epochs_run,
                **{k: t.metric(k) for k in metric_keys}, **{f"params.{k}": t.params.get(k) for k in param_keys}}

    return [row(t) for t in records.trials]


def summary_rows(found: Sequence[Comparison]) -> list[dict[str, object]]:
    """summary.csv: one row per (experiment, lr split, strategy)."""
    searched = sorted({path for c in found for path in c.searched})
    return [s.as_row(searched) for c in found for s in c.summaries]
