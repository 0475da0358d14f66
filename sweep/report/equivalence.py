"""Did the mechanisms produce the same model? Paired trials answer it.

Trial i of every strategy's study ran with seed + i and, while the sampler is in
its random start-up, the same hyperparameters. Two such trials with the same
whole configuration, started from the same backbone weights, must give
identical results if their mechanisms are equivalent; any difference is a
finding, and the report says by how much (and, in `causes`, why).
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sweep.report.records import StudyRecord, TrialRecord
from sweep.strategies import MECHANISMS

REFERENCE = "requires_grad"  # the mechanism the others are compared with, when the sweep ran it

COMPARED: dict[str, Callable[[TrialRecord], object]] = {
    "test accuracy": lambda t: t.metric("test_accuracy"),
    "val accuracy curve": lambda t: t.curves.get("val_accuracy") or None,
    "train loss curve": lambda t: t.curves.get("train_loss") or None,
    "trainable params": lambda t: t.metric("trainable_params"),
    "frozen weight drift": lambda t: t.metric("frozen_weight_drift"),
    "frozen buffer drift": lambda t: t.metric("frozen_buffer_drift"),
}
"""What must be equal on a pair for "identical"; a quantity one of the two did not record is not compared."""


Pair = tuple[TrialRecord, TrialRecord]  # (trial, its partner of the reference mechanism)


@dataclass
class Verdict:
    status: str  # reference | identical | differs | not comparable
    reference: str
    paired: int = 0
    unpaired: int = 0
    differing_pairs: int = 0
    differing: list[str] = field(default_factory=list)  # which quantities differed, in COMPARED order
    max_test_diff: float | None = None
    max_val_diff: float | None = None
    other_backbone: list[Pair] = field(default_factory=list)  # same number and config, different starting weights
    backbone_unrecorded: int = 0  # pairs compared although neither recorded its backbone (records before sha256)
    pairs_that_differ: list[Pair] = field(default_factory=list)

    def detail(self) -> str:
        unpaired = f"; {self.unpaired} measured trials had no partner" if self.unpaired else ""
        if self.other_backbone:
            trial, partner = self.other_backbone[0]
            unpaired += (f"; {len(self.other_backbone)} measured trial(s) not compared: they started from another "
                         f"backbone than their {self.reference} partner (sha256 {_short(trial.backbone_sha256)} vs "
                         f"{_short(partner.backbone_sha256)})")
        if self.backbone_unrecorded:
            unpaired += f"; the backbone was not recorded for {self.backbone_unrecorded} of the pairs (assumed the same)"
        return _DETAILS[self.status](self) + unpaired


def _short(sha: str | None) -> str:
    return sha[:12] if sha else "not recorded"


def _differs(v: Verdict) -> str:
    by_how_much = ", ".join(f"{what} by up to {diff:.4f}" for what, diff in
                            (("test accuracy", v.max_test_diff), ("val accuracy", v.max_val_diff)) if diff)
    return (f"differs from {v.reference} on {v.differing_pairs} of {v.paired} paired trials"
            + (f": {by_how_much}" if by_how_much else "") + f" (differing: {', '.join(v.differing)})")


_DETAILS: dict[str, Callable[[Verdict], str]] = {
    "reference": lambda v: "the reference the other mechanisms are compared with",
    "identical": lambda v: f"identical to {v.reference} on {v.paired} paired trials",
    "differs": _differs,
    "not comparable": lambda v: f"no pairs: no trial of {v.reference} has the same number and configuration",
}


def choose_reference(strategies: Sequence[str]) -> str:
    """`requires_grad` if it ran, else the first freezing mechanism, else the first strategy."""
    if REFERENCE in strategies:
        return REFERENCE
    freezing = [s for s in strategies if s in MECHANISMS and MECHANISMS.get(s).freezes]
    return (freezing or list(strategies))[0]


def compare(trials: Sequence[TrialRecord], reference_trials: Sequence[TrialRecord], reference: str) -> Verdict:
    """Pairs: the same trial number, the same whole configuration and the same backbone, both measured."""
    by_number = {t.number: t for t in reference_trials if t.measured}
    verdict = Verdict("not comparable", reference)
    test_diffs, val_diffs, differing = [], [], set()
    for trial in (t for t in trials if t.measured):
        partner = by_number.get(trial.number)
        if partner is None or partner.configuration != trial.configuration:
            verdict.unpaired += 1
            continue
        if trial.backbone_sha256 != partner.backbone_sha256:
            verdict.other_backbone.append((trial, partner))
            continue
        verdict.backbone_unrecorded += trial.backbone_sha256 is None
        verdict.paired += 1
        changed = {what for what, value in COMPARED.items()
                   if None not in (value(trial), value(partner)) and value(trial) != value(partner)}
        verdict.differing_pairs += bool(changed)
        if changed:
            verdict.pairs_that_differ.append((trial, partner))
        differing |= changed
        test_diffs.append(abs(trial.metrics["test_accuracy"] - partner.metrics["test_accuracy"]))
        val_diffs.extend(abs(a - b) for a, b in zip(trial.curves.get("val_accuracy", []),
                                                    partner.curves.get("val_accuracy", [])))
    if verdict.paired:
        verdict.status = "differs" if differing else "identical"
        verdict.differing = [what for what in COMPARED if what in differing]
        verdict.max_test_diff = max(test_diffs)
        verdict.max_val_diff = max(val_diffs, default=None)
    return verdict


def verdicts(studies: Sequence[StudyRecord]) -> dict[str, Verdict]:
    """One verdict per strategy of one comparison (same experiment, same lr split)."""
    by_strategy = {s.strategy: s.trials for s in studies}
    reference = choose_reference(list(by_strategy))
    return {strategy: Verdict("reference", reference) if strategy == reference
            else compare(trials, by_strategy[reference], reference)
            for strategy, trials in by_strategy.items()}
