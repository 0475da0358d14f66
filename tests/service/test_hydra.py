"""The Hydra side of `python -m sweep.run`: its help, what counts as fixed, and no empty log files."""

import yaml

from sweep_commands import REPO, sweep_command
from test_run import own_sweep

SEARCHED = yaml.safe_load((REPO / "conf" / "search" / "default.yaml").read_text())["space"]


def test_help_explains_entry_points_strategies_and_what_is_searched():
    done = sweep_command("sweep.run", "--help")
    assert done.returncode == 0, done.stderr
    for expected in ("python -m sweep.run", "python -m sweep.report", "+strategy=NAME", "--config-dir",
                     "optuna-dashboard", "mlflow ui", *SEARCHED):
        assert expected in done.stdout, expected
    assert "lr: 0.05" not in done.stdout  # no config dump claiming a searched value


def test_a_value_set_in_a_config_file_of_ones_own_is_fixed(tmp_path, cache_dir):
    own = tmp_path / "my-conf"
    own.mkdir()
    (own / "mine.yaml").write_text("defaults: [config, _self_]\noptimizer: {lr: 0.02}\n")
    results = tmp_path / "results"
    results.mkdir()
    _, studies, client = own_sweep(results, cache_dir, "--config-dir", str(own), "--config-name", "mine",
                                   "+strategy=requires_grad", "search.n_trials=1", "train.epochs=1", "experiment=mine")
    (trial,) = studies["mine.requires_grad.head_backbone"].trials
    assert "optimizer.lr" not in trial.params and "lr_split.backbone_ratio" in trial.params
    assert client.get_run(trial.user_attrs["mlflow_run_id"]).data.params["optimizer.lr"] == "0.02"


def test_a_sweep_leaves_no_empty_log_files(tiny_sweep):
    outputs = list((tiny_sweep.results_dir / "hydra").rglob("*"))
    assert outputs and not [p for p in outputs if p.is_file() and p.stat().st_size == 0]
    assert not [p for p in outputs if p.name.endswith(".log")]
