"""Why a mechanism's results differ from the reference's, and why frozen weights or norm statistics moved.

Each known cause is a small check over the records of one trial (and, for a
difference, of its partner of the reference mechanism). It returns a sentence
a practitioner understands, with the recorded numbers behind it, or None. A
difference or drift that no check accounts for is said to be unexplained:
the report never guesses.
"""

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sweep.report.records import TrialRecord
from sweep.strategies import MECHANISMS
from sweep.trace import (CLIP_FACTOR, FROZEN_LR, GRAD_NORM_FROZEN, GRAD_NORM_TRAINABLE, UNFROZEN_MOMENTUM,
                         UNMOVABLE_TRAINABLE, is_trace)


@dataclass(frozen=True)
class Cause:
    name: str  # groups the same cause found in several trials
    sentence: str


Check = Callable[[TrialRecord, TrialRecord | None], Cause | None]
"""(trial, its reference partner or None when explaining a drift) -> the cause it finds in the records, or None."""


def first_difference(trial: TrialRecord, partner: TrialRecord) -> int | None:
    """The first epoch at which the two trials' loss or accuracy differ."""
    for key in ("train_loss", "val_accuracy"):
        for epoch, (mine, theirs) in enumerate(zip(trial.curves.get(key, []), partner.curves.get(key, [])), start=1):
            if mine != theirs:
                return epoch
    return None


def grad_clipping(trial: TrialRecord, partner: TrialRecord | None) -> Cause | None:
    """Clipping over every parameter counts frozen gradients where a mechanism lets them exist."""
    clip, frozen, trainable = (trial.trace(k) for k in (CLIP_FACTOR, GRAD_NORM_FROZEN, GRAD_NORM_TRAINABLE))
    if partner is None or not clip or min(clip.values()) >= 1 or not frozen or partner.trace(GRAD_NORM_FROZEN) == frozen:
        return None
    epoch = max(frozen, key=frozen.get)
    mechanism = MECHANISMS.get(trial.strategy) if trial.strategy in MECHANISMS else None
    accumulate = "accumulate and " if mechanism is not None and mechanism.accumulates_frozen_grads else ""
    theirs = partner.trace(CLIP_FACTOR)
    versus = f" vs {statistics.mean(theirs.values()):.3g} for {partner.strategy}" if theirs else ""
    trainable_norm = f" vs trainable {trainable[epoch]:.3g}" if epoch in trainable else ""
    return Cause("grad clipping", f"frozen gradients {accumulate}are counted by grad clipping (frozen grad norm "
                                  f"{frozen[epoch]:.3g}{trainable_norm} at the first step of epoch {epoch}; mean clip "
                                  f"factor {statistics.mean(clip.values()):.3g}{versus})")


def momentum_across_unfreeze(trial: TrialRecord, partner: TrialRecord | None) -> Cause | None:
    """Parameters that sat in the optimizer while frozen bring the momentum they gathered into training."""
    carried = {epoch: norm for epoch, norm in trial.trace(UNFROZEN_MOMENTUM).items() if norm > 0}
    if partner is None or not carried:
        return None
    epoch = min(carried)
    if carried[epoch] <= partner.trace(UNFROZEN_MOMENTUM).get(epoch, 0.0):
        return None
    differ = first_difference(trial, partner)
    if differ is not None and differ < epoch:
        return None  # they parted before anything was unfrozen
    return Cause("momentum", f"momentum accumulated while frozen: the parameters unfrozen at epoch {epoch} brought "
                             f"optimizer momentum of norm {carried[epoch]:.3g} into training, where {partner.strategy} "
                             "starts them with none" + (f"; results first differ at epoch {differ}" if differ else ""))


def frozen_groups_had_lr(trial: TrialRecord, partner: TrialRecord | None) -> Cause | None:
    """The optimizer held frozen parameters in groups whose lr was above 0."""
    lrs = trial.trace(FROZEN_LR)
    peak = max(lrs.values(), default=0.0)
    if peak <= 0 or (partner is not None and partner.trace(FROZEN_LR) == lrs):
        return None
    schedule = trial.params.get("schedule.name", "constant")
    if schedule != "constant":
        return Cause("scheduler lr", f"the {schedule} scheduler raised the lr of its frozen param groups from 0 to "
                                     f"{peak:.3g} (see the lr trace)")
    return Cause("frozen lr", f"its frozen param groups had lr up to {peak:.3g}, so the optimizer could move them "
                              "(see the lr trace)")


def trainable_not_moved(trial: TrialRecord, partner: TrialRecord | None) -> Cause | None:
    stuck = max(trial.trace(UNMOVABLE_TRAINABLE).values(), default=0.0)
    if not stuck:
        return None
    return Cause("unmovable", f"the optimizer could not move {stuck:,.0f} trainable parameters (in no param group "
                              "with lr > 0)")


def nothing_frozen(trial: TrialRecord, partner: TrialRecord | None) -> Cause | None:
    """The baseline trains what the reference keeps frozen: of course it differs."""
    if partner is None or trial.metric("frozen_params") != 0 or not partner.metric("frozen_params"):
        return None
    return Cause("baseline", f"it freezes nothing, so it trains the {partner.metric('frozen_params'):,.0f} parameters "
                             f"{partner.strategy} keeps frozen")


def norm_statistics(trial: TrialRecord, partner: TrialRecord | None) -> Cause | None:
    """BatchNorm in train mode updates its running statistics whatever freezing does to its weights."""
    if trial.params.get("freeze.norm_policy") != "train":
        return None
    return Cause("norm policy", "BatchNorm running statistics keep updating in train mode under "
                                "freeze.norm_policy=train; set freeze.norm_policy=eval to hold them")


DIFFERENCE_CAUSES: tuple[Check, ...] = (nothing_frozen, grad_clipping, momentum_across_unfreeze,
                                        frozen_groups_had_lr, trainable_not_moved)
WEIGHT_DRIFT_CAUSES: tuple[Check, ...] = (frozen_groups_had_lr, trainable_not_moved)
BUFFER_DRIFT_CAUSES: tuple[Check, ...] = (norm_statistics,)


@dataclass
class Explanation:
    """The causes found over several trials (or pairs), and how many of them no cause accounts for."""

    causes: list[Cause] = field(default_factory=list)
    unexplained: int = 0
    of: int = 0  # trials or pairs explained
    traced: bool = True  # the records hold traces at all

    def text(self) -> str:
        found = "; ".join(cause.sentence for cause in self.causes)
        if not self.unexplained:
            return found
        why = "" if self.traced else " (traces not recorded: these records predate them)"
        rest = f"unexplained{why}" if not found else f"{found}; {self.unexplained} of {self.of} unexplained{why}"
        return rest


def explain(cases: Sequence[tuple[TrialRecord, TrialRecord | None]], checks: Sequence[Check]) -> Explanation:
    """Run every check on every case; a cause found in several keeps the sentence of the first."""
    explanation = Explanation(of=len(cases), traced=any(is_trace(k) for trial, _ in cases for k in trial.metrics))
    names = set()
    for trial, partner in cases:
        found = [cause for check in checks if (cause := check(trial, partner)) is not None]
        explanation.unexplained += not found
        for cause in found:
            if cause.name not in names:
                names.add(cause.name)
                explanation.causes.append(cause)
    return explanation


def explain_drift(trials: Sequence[TrialRecord], metric: str, checks: Sequence[Check]) -> Explanation | None:
    """Why `metric` (a frozen drift) is above 0 in the trials where it is; None where it is nowhere."""
    moved = [(t, None) for t in trials if (t.metric(metric) or 0) > 0]
    return explain(moved, checks) if moved else None
