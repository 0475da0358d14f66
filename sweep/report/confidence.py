"""Statistics for a few seed repeats: means with confidence intervals, paired differences, verdicts.

Every strategy's repeats run with the same seeds, so two strategies are compared
on the differences of their paired repeats. The verdict comes from the paired
t-test (scipy.stats.ttest_rel), whose 95% interval of the mean difference is the
one reported. It is exact for normal differences and keeps its power with 3 to
5 pairs, where the Wilcoxon signed-rank test cannot reach p < 0.05 at all (its
smallest two-sided p-value with n pairs is 2 / 2**n); the exact Wilcoxon p-value
is reported beside it as the distribution-free view. A difference the t-test
cannot separate from 0 reads "no detectable difference at this budget", with the
number of repeats a difference of the observed size would need (80% power).
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
POWER = 0.8
MOST_REPEATS = 1000  # beyond this, "more than 1000 repeats" is the honest answer

ACCURACY_BOUNDS = (0.0, 1.0)
DIFFERENCE_BOUNDS = (-1.0, 1.0)  # of two accuracies

BETTER, WORSE, UNDETECTED = "better", "worse", "no detectable difference at this budget"
TEST = "paired t-test"


@dataclass(frozen=True)
class Estimate:
    """A mean over repeats with its 95% confidence interval (Student's t); no interval from a single value."""

    mean: float
    low: float | None  # mean - margin, clipped to what the quantity can be
    high: float | None
    n: int
    margin: float | None = None  # the interval's half width before clipping

    @classmethod
    def of(cls, values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> "Estimate":
        """`bounds`: what the quantity can be (an accuracy lies in [0, 1]); the interval is clipped to them."""
        mean = float(np.mean(values))
        if len(values) < 2:
            return cls(mean, None, None, len(values))
        sd = float(np.std(values, ddof=1))
        margin = float(stats.t.ppf(1 - (1 - LEVEL) / 2, len(values) - 1)) * sd / math.sqrt(len(values))
        return cls(mean, max(mean - margin, bounds[0]), min(mean + margin, bounds[1]), len(values), margin)


@dataclass(frozen=True)
class PairedDifference:
    """`mine - theirs` over paired repeats (the same seeds): its mean, 95% interval, tests and verdict."""

    difference: Estimate
    p_value: float | None  # the paired t-test's, two-sided
    wilcoxon_p: float | None  # exact Wilcoxon signed-rank, two-sided
    verdict: str
    repeats_needed: int | None  # for 80% power at the observed difference; None where it does not apply

    @classmethod
    def of(cls, mine: Sequence[float], theirs: Sequence[float]) -> "PairedDifference":
        if len(mine) != len(theirs):
            raise ValueError(f"paired samples differ in length: {len(mine)} and {len(theirs)}")
        diffs = [a - b for a, b in zip(mine, theirs)]
        difference = Estimate.of(diffs, DIFFERENCE_BOUNDS)
        if difference.low is None:
            return cls(difference, None, None, UNDETECTED, None)
        verdict = BETTER if difference.low > 0 else WORSE if difference.high < 0 else UNDETECTED
        sd = float(np.std(diffs, ddof=1))
        p_value = float(stats.ttest_rel(mine, theirs).pvalue) if sd > 0 else float(difference.mean == 0)
        needed = repeats_needed(difference.mean, sd) if verdict == UNDETECTED else None
        return cls(difference, p_value, wilcoxon_p(diffs), verdict, needed)


def wilcoxon_p(diffs: Sequence[float]) -> float:
    """Exact two-sided Wilcoxon signed-rank p-value; zero differences carry no sign and are dropped (`wilcox`)."""
    if not any(diffs):
        return 1.0
    return float(stats.wilcoxon(diffs, zero_method="wilcox", method="exact").pvalue)


def repeats_needed(mean: float, sd: float) -> int | None:
    """Smallest number of paired repeats at which the paired t-test detects `mean` with 80% power.

    From the noncentral t distribution, taking the observed mean and spread of the differences
    as the truth. None when the observed difference is exactly 0 (no size to detect);
    `MOST_REPEATS + 1` stands for "more than MOST_REPEATS".
    """
    if mean == 0:
        return None
    if sd == 0:
        return 2
    n = np.arange(2, MOST_REPEATS + 1)
    df = n - 1
    critical = stats.t.ppf(1 - (1 - LEVEL) / 2, df)
    shift = abs(mean) / sd * np.sqrt(n)
    power = stats.nct.sf(critical, df, shift) + stats.nct.cdf(-critical, df, shift)
    enough = np.nonzero(power >= POWER)[0]
    return int(n[enough[0]]) if len(enough) else MOST_REPEATS + 1


def describe_needed(needed: int | None) -> str:
    if needed is None:
        return "-"
    return f"more than {MOST_REPEATS}" if needed > MOST_REPEATS else str(needed)
