"""cached_prefix through the real commands: left out of the default comparison with its reason; in a sweep
with norm_policy=eval, identical to requires_grad in the report, its cache built once for all trials and re-runs."""

import pytest
from mlflow.tracking import MlflowClient

from sweep_commands import sweep_command
from sweep.report.equivalence import verdicts
from sweep.report.records import Sources, load

EVAL_SWEEP = ["search.n_trials=2", "train.epochs=2", "experiment=cached", "freeze.norm_policy=eval"]


def test_the_default_comparison_says_in_one_line_why_cached_prefix_is_left_out(tiny_sweep):
    lines = [line for line in tiny_sweep.first.stdout.splitlines() if "cached_prefix" in line]
    assert len(lines) == 1, tiny_sweep.first.stdout
    assert lines[0].startswith("not compared: strategy 'cached_prefix' cannot reuse the frozen prefix's outputs: ")
    assert "freeze.norm_policy=train" in lines[0] and "pass freeze.norm_policy=eval" in lines[0]


@pytest.fixture(scope="module")
def eval_sweep(tmp_path_factory, cache_dir):
    """requires_grad and cached_prefix in one Hydra multirun, then cached_prefix topped up to 3 trials by a re-run."""
    results_dir = tmp_path_factory.mktemp("cached-sweep")
    (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)
    first = sweep_command("sweep.run", "-m", "+strategy=requires_grad,cached_prefix", *EVAL_SWEEP,
                          f"results_dir={results_dir}")
    assert first.returncode == 0, first.stderr
    rerun = sweep_command("sweep.run", "+strategy=cached_prefix", *EVAL_SWEEP, "search.n_trials=3",
                          f"results_dir={results_dir}")
    assert rerun.returncode == 0, rerun.stderr
    return results_dir


def cached_trials(results_dir) -> list[dict[str, float]]:
    client = MlflowClient(f"sqlite:///{results_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cached")
    runs = client.search_runs([experiment.experiment_id], "tags.`sweep.role` = 'trial' and tags.strategy = 'cached_prefix'")
    return [run.data.metrics for run in sorted(runs, key=lambda r: int(r.data.tags["optuna.trial_number"]))]


def test_the_cache_is_built_once_for_every_trial_and_the_rerun(eval_sweep):
    trials = cached_trials(eval_sweep)
    assert [t["cache_built"] for t in trials] == [1.0, 0.0, 0.0]  # trial 2 ran in a new process: read from disk
    assert trials[0]["cache_build_s"] > 0 and [t["cache_build_s"] for t in trials[1:]] == [0.0, 0.0]
    assert trials[0]["train_time_s"] > trials[0]["cache_build_s"]
    assert len({t["cache_bytes"] for t in trials}) == 1 and all(t["cache_spilled"] == 0.0 for t in trials)
    assert len(list((eval_sweep / "cache" / "features").glob("*/manifest.json"))) == 1


def test_the_reports_equivalence_verdict_finds_cached_prefix_identical_to_requires_grad(eval_sweep):
    """The verdict the report prints, from the records it reads (without rendering its plots)."""
    records = load(Sources(f"sqlite:///{eval_sweep / 'mlflow.db'}", None, eval_sweep), ["cached"])
    found = verdicts(records.studies)
    assert found["requires_grad"].status == "reference"
    assert found["cached_prefix"].status == "identical", found["cached_prefix"].detail()
    assert (found["cached_prefix"].paired, found["cached_prefix"].unpaired) == (2, 1)  # the re-run's third trial
