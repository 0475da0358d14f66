"""The statistics of the confirmation runs, on constructed cases and on real paired training runs."""

import math

import pytest
from scipy import stats

from sweep.optim import OptimizerSpec
from sweep.report.confidence import (BETTER, MOST_REPEATS, UNDETECTED, WORSE, Estimate, PairedDifference,
                                     repeats_needed)

SEEDS = (1000, 1001, 1002)


def test_the_mean_and_its_interval_are_student_t_over_the_repeats():
    values = [0.90, 0.95, 0.97]
    estimate = Estimate.of(values)
    mean, sd = sum(values) / 3, math.sqrt(sum((v - sum(values) / 3) ** 2 for v in values) / 2)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert estimate.mean == pytest.approx(mean)
    assert (estimate.low, estimate.high) == pytest.approx((mean - half, mean + half))
    assert Estimate.of([0.9]) == Estimate(0.9, None, None, 1), "one value has no interval"


def test_identical_runs_differ_by_exactly_zero_with_a_zero_width_interval():
    difference = PairedDifference.of([0.9, 0.95, 0.97], [0.9, 0.95, 0.97])
    assert (difference.difference.low, difference.difference.mean, difference.difference.high) == (0, 0, 0)
    assert difference.verdict == UNDETECTED and difference.repeats_needed is None
    assert difference.p_value == 1.0 and difference.wilcoxon_p == 1.0


def test_a_consistent_shift_is_detected_and_a_noisy_one_is_not():
    assert PairedDifference.of([0.5, 0.6, 0.55], [0.9, 0.95, 0.97]).verdict == WORSE
    assert PairedDifference.of([0.9, 0.95, 0.97], [0.5, 0.6, 0.55]).verdict == BETTER
    noisy = PairedDifference.of([0.90, 0.97, 0.93], [0.92, 0.94, 0.93])
    assert noisy.verdict == UNDETECTED
    assert noisy.difference.low < 0 < noisy.difference.high
    assert noisy.p_value == pytest.approx(stats.ttest_rel([0.90, 0.97, 0.93], [0.92, 0.94, 0.93]).pvalue)
    assert noisy.wilcoxon_p == pytest.approx(stats.wilcoxon([-0.02, 0.03], method="exact").pvalue)


def test_repeats_needed_is_the_paired_t_tests_sample_size_for_80_percent_power():
    assert repeats_needed(1.0, 1.0) == 10  # effect size 1 (G*Power, two-sided 5%, 80%: n = 10)
    assert repeats_needed(0.5, 1.0) == 34  # effect size 0.5: n = 34
    assert repeats_needed(0.0, 1.0) is None, "a zero difference has no size to detect"
    assert repeats_needed(1e-4, 1.0) == MOST_REPEATS + 1


def test_on_real_runs_identical_mechanisms_agree_and_a_crippled_lr_is_worse(train):
    """Three paired seeds of each: zero_lr trains the same model as requires_grad; lr 1e-4 barely trains."""

    def accuracies(strategy: str, lr: float) -> list[float]:
        return [train(strategy, seed=seed, optimizer=OptimizerSpec(lr=lr)).result.test_accuracy for seed in SEEDS]

    reference = accuracies("requires_grad", 0.05)
    same = PairedDifference.of(accuracies("zero_lr", 0.05), reference)
    assert same.difference.low == same.difference.high == 0.0 and same.verdict == UNDETECTED
    crippled = PairedDifference.of(accuracies("requires_grad", 1e-4), reference)
    assert crippled.verdict == WORSE, crippled
