"""A depth grid through the real commands: a study per point, paired repeats, transfer curves in the report."""

from sweep_commands import sweep_command
from test_run import own_sweep
from sweep.report.confidence import WORSE
from sweep.report.records import Sources, load
from sweep.report.summary import comparisons
from sweep.report.transfer import curves

GRID = ["-m", "+strategy=requires_grad,no_grad_forward", "search.grid={freeze.depth:[0,2,4]}", "lr_split=uniform",
        "optimizer.lr=0.05", "train.epochs=2", "search.repeats=3", "timing.rounds=2", "experiment=grid"]


def test_a_depth_grid_runs_a_study_per_point_and_reports_head_only_worse_than_depth_2(tmp_path, cache_dir):
    done, studies, _ = own_sweep(tmp_path, cache_dir, *GRID)
    assert set(studies) == {f"grid.{s}.uniform@freeze.depth={d}" for s in ("requires_grad", "no_grad_forward")
                            for d in (2, 4)} | {"grid.full_finetune.uniform"}, "depth 0 is full_finetune's run"
    assert "Answer for 'grid', lr split 'uniform': " in done.stdout

    (curve,) = curves(comparisons(load(Sources(f"sqlite:///{tmp_path / 'mlflow.db'}", None, tmp_path), ["grid"])))
    assert list(curve.lines) == ["requires_grad", "no_grad_forward"], "one line per strategy"
    for strategy, line in curve.lines.items():
        assert [(p.point.short, p.stand_in) for p in line] == [("depth=0", True), ("depth=2", False),
                                                              ("depth=4", False)]
        assert all(len(p.summary.confirmation.runs) == 3 for p in line)
        by_depth = {p.point.short: p.summary.confirmation for p in line}
        assert by_depth["depth=4"].versus(by_depth["depth=2"]).verdict == WORSE, strategy
        assert by_depth["depth=2"].by_seed().keys() == by_depth["depth=0"].by_seed().keys(), "paired on seeds"

    report = sweep_command("sweep.report", "experiment=grid", f"results_dir={tmp_path}")
    assert report.returncode == 0, report.stderr
    out = tmp_path / "reports" / "grid"
    assert (out / "grid.uniform.grid.transfer_curve.png").stat().st_size > 0
    page = (out / "report.md").read_text()
    table = page[page.index("## Along freeze.depth: grid, lr split uniform"):]
    row = next(line for line in table.splitlines() if line.startswith("| requires_grad ") and "| depth=4 " in line)
    assert "| worse " in row, row
