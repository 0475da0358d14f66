"""Each known pitfall built through the real command, and the sentence that names its cause in the report and at
the end of the sweep; records made before the traces existed still render."""

import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from sweep_commands import Completed, sweep_command
from sweep.report import main as report_main
from sweep.strategies import MECHANISMS
from sweep.tracking import BACKBONE, BACKBONE_SHA256, PHASES

ONE_TRIAL = ["search.n_trials=1", "train.epochs=2"]
REMEDY = "set freeze.norm_policy=eval to hold them"


@dataclass
class Pitfall:
    sweep: Completed
    results_dir: Path
    report: str  # report.md

    def finding(self, strategy: str) -> str:
        """The Findings line about one strategy's equivalence verdict."""
        found = re.findall(rf"^- {strategy}: (.*)$", self.report, flags=re.M)
        assert len(found) == 1, self.report
        return found[0]

    def metric_history(self, experiment: str, strategy: str, key: str) -> list[float]:
        client = MlflowClient(f"sqlite:///{self.results_dir / 'mlflow.db'}")
        experiment_id = client.get_experiment_by_name(experiment).experiment_id
        run = client.search_runs([experiment_id], f"tags.strategy = '{strategy}' and tags.`sweep.role` = 'trial'",
                                 order_by=["tags.`optuna.trial_number` ASC"])[0]
        return [m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]


def make_report(results_dir: Path, experiment: str) -> str:
    """The report through the command's entry point, in this process (the imports are paid once)."""
    out_dir = results_dir / "reports" / experiment
    try:
        report_main([f"experiment={experiment}", f"results_dir={results_dir}"])
    except SystemExit as exit:
        pytest.fail(f"the report exited with {exit.code}")
    return (out_dir / "report.md").read_text()


def pitfall(tmp_path_factory, cache_dir: Path, experiment: str, *args: str) -> Pitfall:
    results_dir = tmp_path_factory.mktemp(experiment)
    (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)
    done = sweep_command("sweep.run", *args, f"experiment={experiment}", f"results_dir={results_dir}")
    assert done.returncode == 0, done.stderr
    return Pitfall(done, results_dir, make_report(results_dir, experiment))


@pytest.fixture(scope="module")
def clipping(tmp_path_factory, cache_dir) -> Pitfall:
    """Every strategy with clipping small enough to clip every step, and norm statistics held (eval)."""
    return pitfall(tmp_path_factory, cache_dir, "clip", *ONE_TRIAL, "train.grad_clip_norm=0.5",
                   "freeze.norm_policy=eval")


@pytest.fixture(scope="module")
def unfreezing(tmp_path_factory, cache_dir) -> Pitfall:
    """Every strategy, conv2 unfrozen after one epoch under SGD with momentum."""
    return pitfall(tmp_path_factory, cache_dir, "thaw", "search.n_trials=1",
                   "phases=[{epochs:1,freeze:{depth:2}},{epochs:1,freeze:{depth:1}}]")


@pytest.fixture(scope="module")
def onecycle(tmp_path_factory, cache_dir) -> Pitfall:
    """OneCycleLR with its scalar max_lr, two trials each so the searched backbone_ratio takes two values; from
    scratch (model.weights=null), which changes none of its causes and makes each trial's backbone its own."""
    return pitfall(tmp_path_factory, cache_dir, "onecycle", "-m", "+strategy=requires_grad,zero_lr",
                   "schedule=onecycle", "search.n_trials=2", "train.epochs=2", "model.weights=null")


@pytest.mark.parametrize("strategy", ["exclude_from_optimizer", "zero_lr", "weight_restore"])
def test_clipping_that_counts_frozen_gradients_is_named_as_the_cause(clipping, strategy):
    finding = clipping.finding(strategy)
    assert finding.startswith("differs from requires_grad on 1 of 1 paired trials"), finding
    accumulate = "accumulate and " if strategy == "exclude_from_optimizer" else ""
    cause = re.search(rf"Cause: frozen gradients {accumulate}are counted by grad clipping \(frozen grad norm "
                      r"(\S+) vs trainable (\S+) at the first step of epoch (\d); mean clip factor (\S+) vs (\S+) "
                      r"for requires_grad\)\.$", finding)
    assert cause, finding
    frozen = clipping.metric_history("clip", strategy, "grad_norm/frozen")
    epoch = int(cause[3])
    assert float(cause[1]) == pytest.approx(max(frozen), rel=1e-3) and frozen[epoch - 1] == max(frozen)
    assert float(cause[2]) == pytest.approx(clipping.metric_history("clip", strategy, "grad_norm/trainable")[epoch - 1],
                                            rel=1e-3)
    assert float(cause[4]) < 1 and float(cause[5]) < 1


def listed(report: str, prefix: str) -> set[str]:
    """The strategies a Findings line lists after `prefix`, up to its first full stop."""
    found = re.search(rf"^- {re.escape(prefix)} ([^.]*)\.", report, flags=re.M)
    assert found, report
    return set(found[1].split(", "))


def test_without_frozen_gradients_clipping_changes_nothing(clipping):
    assert listed(clipping.report, "Identical results on paired trials:") == {"requires_grad", "no_grad_forward",
                                                                               "cached_prefix"}


def test_norm_statistics_held_under_eval_are_a_verdict_of_their_own(clipping):
    freezing = {name for name in MECHANISMS.names() if MECHANISMS.get(name).freezes}
    held = "Frozen norm statistics (BatchNorm running mean and variance) stayed frozen in:"
    assert listed(clipping.report, held) == freezing
    assert "They MOVED" not in next(line for line in clipping.report.splitlines() if held in line)
    assert "Frozen norm statistics MOVED" not in clipping.sweep.stdout


def test_norm_statistics_moving_under_train_name_the_remedy(tiny_sweep):
    report = make_report(tiny_sweep.results_dir, "tiny")
    line = next(line for line in report.splitlines() if line.startswith("- Frozen norm statistics"))
    assert line.startswith("- Frozen norm statistics (BatchNorm running mean and variance) stayed frozen in: none. "
                           "They MOVED in: requires_grad (moved by "), line
    assert line.endswith("because BatchNorm running statistics keep updating in train mode under "
                         f"freeze.norm_policy=train; {REMEDY}."), line
    assert "- Frozen weights stayed frozen in: requires_grad, exclude_from_optimizer, zero_lr, weight_restore, " \
           "no_grad_forward." in report
    stdout = " ".join(tiny_sweep.first.stdout.split())  # the notes are wrapped to 100 columns
    assert "Frozen norm statistics MOVED in requires_grad, exclude_from_optimizer" in stdout
    assert "Set freeze.norm_policy=eval to hold them" in stdout


@pytest.mark.parametrize("strategy", ["zero_lr", "weight_restore"])
def test_momentum_gathered_while_frozen_is_named_when_unfreezing_makes_results_differ(unfreezing, strategy):
    finding = unfreezing.finding(strategy)
    assert finding.startswith("differs from requires_grad on 1 of 1 paired trials"), finding
    cause = re.search(r"Cause: momentum accumulated while frozen: the parameters unfrozen at epoch 2 brought "
                      r"optimizer momentum of norm (\S+) into training, where requires_grad starts them with none; "
                      r"results first differ at epoch 2\.$", finding)
    assert cause, finding
    carried = unfreezing.metric_history("thaw", strategy, "unfrozen_momentum_norm")
    assert carried[0] == 0 and float(cause[1]) == pytest.approx(carried[1], rel=1e-3) and carried[1] > 0


def test_unfreezing_into_a_fresh_param_group_keeps_mechanisms_identical(unfreezing):
    assert listed(unfreezing.report, "Identical results on paired trials:") == {"requires_grad",
                                                                                 "exclude_from_optimizer",
                                                                                 "no_grad_forward"}


def test_setup_shows_the_phases_that_ran_and_the_epochs_trained(unfreezing):
    assert re.search(r"\| freezing, as run \(finished trials of freezing strategies\) +\| phase 1: 1 epoch, frozen "
                     r"conv1, conv2 \(4,848 frozen / 52,101 trainable params\); phase 2: 1 epoch, frozen conv1 "
                     r"\(176 frozen / 56,773 trainable params\) +\|", unfreezing.report), unfreezing.report
    assert re.search(r"\| epochs trained per finished trial +\| 2 +\|", unfreezing.report)
    assert re.search(r"\| optimizer.momentum +\| 0.9 +\|", unfreezing.report)
    assert re.search(r"\| optimizer.lr +\| searched +\|", unfreezing.report)
    assert re.search(r"\| backbone +\| digits_cnn pretrained on digits 0-4 ", unfreezing.report)
    assert re.search(r"\| backbone sha256 \(the weights trials started from\) +\| [0-9a-f]{64} +\|", unfreezing.report)


def test_onecycle_raising_a_zero_lr_is_named_as_the_cause_of_zero_lr_drift(onecycle):
    moved = re.search(r"^- Frozen weights stayed frozen in: requires_grad\. They MOVED in: zero_lr \(moved by \S+\), "
                      r"because the onecycle scheduler raised the lr of its frozen param groups from 0 to (\S+) "
                      r"\(see the lr trace\)\.$", onecycle.report, flags=re.M)
    assert moved, onecycle.report
    peak = max(onecycle.metric_history("onecycle", "zero_lr", "frozen_lr_max"))
    assert float(moved[1]) == pytest.approx(peak, rel=1e-3) and peak > 0
    assert "Cause: the onecycle scheduler raised the lr of its frozen param groups from 0" in onecycle.finding("zero_lr")
    assert "![Learning rate of each param group, as the optimizer held it](lr_traces.png)" in onecycle.report


def test_a_split_erased_by_onecycle_is_flagged_at_the_end_of_the_sweep_and_in_the_report(onecycle):
    stdout = " ".join(onecycle.sweep.stdout.split())
    assert re.search(r"lr split 'head_backbone' did NOT hold in 2 of 2 trials \(requires_grad\): the groups' lrs "
                     r"departed from its ratios by up to \d+% \(schedule onecycle sets every group's lr from one "
                     r"scalar max_lr\)\. The searched lr_split.backbone_ratio did not set the lrs", stdout), stdout
    flagged = ("The lr split head_backbone did NOT hold in 4 of 4 traced trials: the trainable groups' lrs departed "
               "from its ratios by up to ")
    assert f"> **Warning:** onecycle, lr split head_backbone: {flagged}" in onecycle.report
    assert f"- {flagged}" in onecycle.report
    assert "The searched lr_split.backbone_ratio had no effect on the lrs" in onecycle.report
    best = re.findall(r"^\| (requires_grad|zero_lr) .*\| (\S+) \(no effect\) +\|", onecycle.report, flags=re.M)
    assert [strategy for strategy, _ in best] == ["requires_grad", "zero_lr"], onecycle.report
    backbone, head = (onecycle.metric_history("onecycle", "requires_grad", f"lr/{unit}") for unit in ("conv3", "head"))
    assert backbone == head, "onecycle gives every group the same lr"


def test_a_from_scratch_baseline_says_not_pretrained_at_the_end_of_the_sweep_and_in_the_report(onecycle):
    stdout = " ".join(onecycle.sweep.stdout.split())
    assert stdout.count("model: digits_cnn, not pretrained (random init from each trial's seed)") == 2  # both jobs
    assert "> **Warning:** Experiment 'onecycle': the model was NOT pretrained" in onecycle.report
    assert re.search(r"\| model pretrained +\| NO: not pretrained \(random init\) +\|", onecycle.report)
    assert re.search(r"\| backbone sha256 \(the weights trials started from\) +\| 2 different: [0-9a-f]{12}, "
                     r"[0-9a-f]{12} +\|", onecycle.report), "one random init per trial seed"
    assert onecycle.finding("zero_lr").startswith("differs from requires_grad on 2 of 2 paired trials"), \
        "trials of the same seed start from the same random backbone, so they are still paired"


OLD_METRICS = {"val_accuracy", "train_loss", "test_accuracy", "train_time_s", "wall_time_s", "step_time_ms",
               "samples_per_s", "flops_per_step", "peak_memory_bytes", "trainable_params", "frozen_params",
               "frozen_weight_drift", "frozen_buffer_drift"}
NEW_TAGS = (BACKBONE, BACKBONE_SHA256, PHASES)


def test_a_report_of_records_made_before_the_traces_renders_them_as_not_recorded(clipping, tmp_path):
    """The clipping sweep's stores with every metric and tag this change added taken out: what older code left."""
    for name in ("mlflow.db", "optuna.journal"):
        shutil.copy(clipping.results_dir / name, tmp_path / name)
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        for table in ("metrics", "latest_metrics"):
            db.execute(f"DELETE FROM {table} WHERE key NOT IN ({','.join('?' * len(OLD_METRICS))})", [*OLD_METRICS])
        db.execute(f"DELETE FROM tags WHERE key IN ({','.join('?' * len(NEW_TAGS))})", NEW_TAGS)
    report = make_report(tmp_path, "clip")
    assert re.search(r"\| backbone +\| not recorded +\|", report)
    assert re.search(r"\| backbone sha256 \(the weights trials started from\) +\| not recorded +\|", report)
    assert re.search(r"\| freezing, as run \(finished trials of freezing strategies\) +\| not recorded "
                     r"\(configured: freeze.depth=2, train.epochs=2\) +\|", report), report
    assert "No figure: lr traces not recorded (the records predate them)." in report
    assert ("Cause: unexplained (traces not recorded: these records predate them)."
            in report.split("## Findings")[1]), report
    assert "the backbone was not recorded for 1 of the pairs (assumed the same)" in report
