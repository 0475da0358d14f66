"""The report's Setup: what the trials of each experiment really ran, read from their records.

Configured values can mislead: phases replace `train.epochs` and the freeze
selection, a searched value is no single setting, and "pretrained" depends on
the weights. So Setup shows what ran (phases with their epochs, selections and
parameter counts, epochs trained, the backbone and its sha256) and every fixed
optimizer, schedule and lr-split setting, marking the searched ones.
"""

from collections.abc import Callable, Sequence

from sweep.report.records import Records, TrialRecord
from sweep.report.tables import Table
from sweep.strategies import MECHANISMS
from sweep.tracking import BACKBONE, PHASE_SEPARATOR, PHASES

Summarize = Callable[[list[TrialRecord]], str]
NOT_RECORDED = "not recorded"
SETTINGS = ("optimizer.", "schedule.", "lr_split.")  # every setting under these is listed
FIXED = ("train.batch_size", "train.grad_clip_norm", "freeze.norm_policy", "seed")
CONFIGURED_FREEZING = ("freeze.depth", "freeze.names", "freeze.indices", "freeze.regex", "phases",
                       "gradual_unfreezing", "train.epochs")  # what the phases replace, shown for old records
UNSET = (None, "", "[]", "None")  # how MLflow holds a config key left empty
PRETRAINED_WORDS = {"true": "yes", "false": "NO: not pretrained (random init)"}


def one_value(values: Sequence[str], empty: str = "-") -> str:
    distinct = sorted(set(values))
    return empty if not distinct else distinct[0] if len(distinct) == 1 else "varies: " + ", ".join(distinct)


def each(read: Callable[[TrialRecord], str | None], empty: str = "-") -> Summarize:
    """The one value every trial has, or every value seen."""
    return lambda trials: one_value([v for v in map(read, trials) if v is not None], empty)


def _setting(path: str) -> Callable[[TrialRecord], str | None]:
    return lambda t: "searched" if path in t.searched else t.params.get(path)


def _phases(trial: TrialRecord) -> str | None:
    """`freeze.phases` in words; records before it was recorded say what was configured instead."""
    ran = trial.tags.get(PHASES)
    if ran is None:
        configured = [f"{k}={trial.params[k]}" for k in CONFIGURED_FREEZING if trial.params.get(k) not in UNSET]
        return f"{NOT_RECORDED} (configured: {', '.join(configured)})"
    phases = [phase.split(": ", 1)[-1] for phase in ran.split(PHASE_SEPARATOR)]
    if len(phases) == 1:
        return f"one phase: {phases[0]}"
    return "; ".join(f"phase {number}: {phase}" for number, phase in enumerate(phases, 1))


def _backbones(trials: list[TrialRecord]) -> str:
    shas = sorted({t.backbone_sha256 for t in trials if t.backbone_sha256})
    if not shas:
        return NOT_RECORDED
    if len(shas) == 1:
        return shas[0]
    return f"{len(shas)} different: " + ", ".join(sha[:12] for sha in shas[:3]) + (" ..." if len(shas) > 3 else "")


def _finished(summarize: Summarize) -> Summarize:
    return lambda trials: summarize([t for t in trials if t.state == "finished"])


def _freezing(summarize: Summarize) -> Summarize:
    """Over the strategies that freeze something: the baseline's "nothing" is no variation of the schedule."""
    return lambda trials: summarize([t for t in trials if t.strategy not in MECHANISMS
                                     or MECHANISMS.get(t.strategy).freezes])


def _epochs_in_all(trials: list[TrialRecord]) -> str:
    return f"{sum(t.epochs_run for t in trials)} over {sum(t.epochs_run > 0 for t in trials)} trials"


def rows(trials: list[TrialRecord]) -> list[tuple[str, Summarize]]:
    """(label, summary of one experiment's trials) for every Setup row; settings are those any trial recorded."""
    settings = sorted({k for t in trials for k in t.params if k.startswith(SETTINGS)})
    return [
        ("device", each(lambda t: t.tags.get("device"))),
        ("model", each(lambda t: t.params.get("model.name"))),
        ("backbone", each(lambda t: t.tags.get(BACKBONE), NOT_RECORDED)),
        ("model pretrained", each(lambda t: PRETRAINED_WORDS.get(t.tags.get("model.pretrained", ""))
                                  if "model.pretrained" in t.tags else None, NOT_RECORDED)),
        ("backbone sha256 (the weights trials started from)", _backbones),
        ("data", each(lambda t: t.params.get("data.name"))),
        ("freezing, as run (finished trials of freezing strategies)", _freezing(_finished(each(_phases)))),
        ("epochs trained per finished trial", _finished(each(lambda t: str(t.epochs_run)))),
        ("epochs trained in all", _epochs_in_all),
        *((path, each(_setting(path))) for path in [*settings, *FIXED]),
    ]


def facts(records: Records) -> Table:
    """One column per experiment."""
    by_experiment = [_runs(records, e) for e in records.experiments]
    body = [[label, *map(summarize, by_experiment)] for label, summarize in rows([t for runs in by_experiment
                                                                                 for t in runs])]
    return Table("facts", "Setup", "What the trials ran (the confirmation runs, where nothing was searched), read "
                 "from their records; 'varies' lists every value seen, 'searched' marks what Optuna chose per trial.",
                 ["", *records.experiments], body, [])


def _runs(records: Records, experiment: str) -> list[TrialRecord]:
    """An experiment's trials with records; its confirmation runs when it searched nothing (they ran the same
    configurations)."""
    studies = [s for s in records.studies if s.experiment == experiment]
    trials = [t for s in studies for t in s.trials if t.run_id]
    return trials or [r for s in studies for r in s.repeats if r.run_id]
