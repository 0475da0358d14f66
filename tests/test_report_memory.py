"""The report's memory columns: held, the trial's peak and the process's peak; older sweeps' records say "not recorded"."""

from sweep.report.equivalence import Verdict
from sweep.report.summary import StrategySummary
from sweep.report.tables import COST

MIB = 2**20


def cost_row(values: dict[str, float]) -> dict[str, str]:
    summary = StrategySummary("e", "uniform", "zero_lr", {"finished": 1}, values, None, Verdict("reference", "zero_lr"),
                              confirmation=None)  # no repeats: the memory columns read the trials' figures only
    return {column.header: column.cell(summary) for column in COST if "memory" in column.header or "RSS" in column.header}


def test_a_cpu_trial_shows_held_bytes_the_growth_and_the_process_peak():
    row = cost_row({"median_held_bytes": 3 * MIB, "median_peak_rss_growth_bytes": 40 * MIB,
                    "median_peak_rss_bytes": 900 * MIB})
    assert list(row.values()) == ["3.00", "40.00", "900.00"]


def test_a_cuda_trial_shows_the_allocated_peak_as_the_trial_peak():
    row = cost_row({"median_held_bytes": 3 * MIB, "median_peak_cuda_allocated_bytes": 50 * MIB})
    assert list(row.values()) == ["3.00", "50.00", "not recorded"]


def test_records_from_before_the_memory_figures_read_not_recorded():
    row = cost_row({"median_step_time_ms": 1.0})  # an old sweep logged peak_memory_bytes, which is none of these
    assert list(row.values()) == ["not recorded"] * 3
