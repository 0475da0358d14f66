"""The report's analysis on hand-made records: pairing by backbone, causes found or said to be unexplained.

The real pitfalls, through the real commands, are in tests/service/test_causes.py; these pin the rules.
"""

from sweep.report.causes import DIFFERENCE_CAUSES, explain
from sweep.report.equivalence import compare
from sweep.report.records import TrialRecord
from sweep.trace import CLIP_FACTOR, FROZEN_LR, GRAD_NORM_FROZEN, GRAD_NORM_TRAINABLE
from sweep.tracking import BACKBONE_SHA256


def record(strategy: str, number: int, sha: str | None = "a" * 64, test_accuracy: float = 0.9,
           traces: dict[str, dict[int, float]] | None = None, **params: str) -> TrialRecord:
    traces = traces or {}
    return TrialRecord("x", "uniform", strategy, number, "finished", run_id=f"{strategy}-{number}",
                       tags={BACKBONE_SHA256: sha} if sha else {}, params={"seed": str(number), **params},
                       metrics={"test_accuracy": test_accuracy, "frozen_params": 100.0,
                                **{k: v[max(v)] for k, v in traces.items()}},
                       curves={"val_accuracy": [0.8, test_accuracy], "train_loss": [1.0, 0.5]}, traces=traces)


def test_only_trials_that_started_from_the_same_backbone_are_paired():
    reference = [record("requires_grad", 0), record("requires_grad", 1, sha="b" * 64)]
    verdict = compare([record("zero_lr", 0), record("zero_lr", 1, sha="c" * 64, test_accuracy=0.1)], reference,
                      "requires_grad")
    assert verdict.status == "identical" and verdict.paired == 1
    assert "1 measured trial(s) not compared: they started from another backbone than their requires_grad partner " \
           f"(sha256 {'c' * 12} vs {'b' * 12})" in verdict.detail()


def test_records_without_a_backbone_are_paired_and_say_so():
    verdict = compare([record("zero_lr", 0, sha=None)], [record("requires_grad", 0, sha=None)], "requires_grad")
    assert verdict.status == "identical"
    assert "the backbone was not recorded for 1 of the pairs (assumed the same)" in verdict.detail()


def test_a_difference_no_trace_accounts_for_is_unexplained():
    traced = {GRAD_NORM_TRAINABLE: {1: 1.0, 2: 1.0}}
    pair = (record("zero_lr", 0, test_accuracy=0.5, traces=traced), record("requires_grad", 0, traces=traced))
    assert explain([pair], DIFFERENCE_CAUSES).text() == "unexplained"
    untraced = (record("zero_lr", 0, test_accuracy=0.5), record("requires_grad", 0))
    assert explain([untraced], DIFFERENCE_CAUSES).text() == ("unexplained (traces not recorded: these records "
                                                             "predate them)")


def test_several_causes_in_one_pair_are_all_named():
    clipped = {CLIP_FACTOR: {1: 0.4, 2: 0.5}, GRAD_NORM_FROZEN: {1: 0.8, 2: 1.6}, GRAD_NORM_TRAINABLE: {1: 2.0, 2: 1.0},
               FROZEN_LR: {1: 0.01, 2: 0.02}}
    pair = (record("zero_lr", 0, test_accuracy=0.5, traces=clipped, **{"schedule.name": "constant"}),
            record("requires_grad", 0, traces={CLIP_FACTOR: {1: 0.6, 2: 0.6}}))
    text = explain([pair], DIFFERENCE_CAUSES).text()
    assert text == ("frozen gradients are counted by grad clipping (frozen grad norm 1.6 vs trainable 1 at the first "
                    "step of epoch 2; mean clip factor 0.45 vs 0.6 for requires_grad); its frozen param groups had lr "
                    "up to 0.02, so the optimizer could move them (see the lr trace)")


def test_pairs_a_cause_does_not_cover_are_counted_as_unexplained():
    clipped = {CLIP_FACTOR: {1: 0.4}, GRAD_NORM_FROZEN: {1: 0.8}, GRAD_NORM_TRAINABLE: {1: 2.0}}
    explained = (record("exclude_from_optimizer", 0, test_accuracy=0.5, traces=clipped), record("requires_grad", 0))
    other = (record("exclude_from_optimizer", 1, test_accuracy=0.5, traces={GRAD_NORM_TRAINABLE: {1: 2.0}}),
             record("requires_grad", 1))
    text = explain([explained, other], DIFFERENCE_CAUSES).text()
    assert text.startswith("frozen gradients accumulate and are counted by grad clipping (frozen grad norm 0.8 vs "
                           "trainable 2 at the first step of epoch 1; mean clip factor 0.4)")
    assert text.endswith("; 1 of 2 unexplained")
