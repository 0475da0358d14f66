"""A trial's records reach MLflow in as few writes as `tracking.write_every_s` allows, and each before what needs it.

Counted exactly, with a real SQLite store: a trial of short epochs costs one write for the
attempt's start, one per checkpoint and one for the rest, where one write per epoch used to be the rule.
"""

import math

import pytest
from mlflow.tracking import MlflowClient

from sweep import tracking
from sweep.tracking import ATTEMPT_FIRST_EPOCH, STATE, JobTracking, continue_trial_run, dataset_input
from sweep.train import EpochMetrics
from sweep.trial import TrialResult

EPOCHS = 8
NEVER = math.inf  # write_every_s: write only when flushed


class CountingClient(MlflowClient):
    """MLflow's client, counting its `log_batch` calls (each one store round trip, or more)."""

    batches: list[int] = []

    def log_batch(self, run_id, metrics=(), params=(), tags=(), **kwargs):
        CountingClient.batches.append(len(metrics))
        return super().log_batch(run_id, metrics, params, tags, **kwargs)


@pytest.fixture
def store(tmp_path, monkeypatch, digits_task):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("batches")
    monkeypatch.setattr(tracking, "MlflowClient", CountingClient)
    CountingClient.batches = []

    def new_run() -> str:
        return client.create_run(experiment_id, run_name="trial-0").info.run_id

    return uri, client, new_run, dataset_input(digits_task)


def epoch(number: int) -> EpochMetrics:
    return EpochMetrics(number, train_loss=1.0 / number, val_accuracy=0.5 + number / 100, trace={"grad_norm": 2.0})


def result(epochs: int) -> TrialResult:
    return TrialResult([epoch(e) for e in range(1, epochs + 1)], val_accuracy=0.5 + epochs / 100, test_accuracy=0.6,
                       test_examples=180, train_time_s=1.0, wall_time_s=1.5, step_time_ms=2.0, samples_per_s=100.0,
                       flops_per_step=1000, held_bytes=10, trainable_params=5, frozen_params=7,
                       frozen_weight_drift=0.0, frozen_buffer_drift=0.0, torch_threads=1, torch_interop_threads=1,
                       stopped_early=False, epochs_trained=epochs)


def steps(client: MlflowClient, run_id: str, key: str = "val_accuracy") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def attempt(store, run_id: str, write_every_s: float, epochs: range) -> None:
    """One attempt that trains `epochs` and finishes the trial."""
    uri, _, _, dataset = store
    with continue_trial_run(JobTracking(uri, write_every_s=write_every_s), run_id, {"device": "cpu"},
                            {"optimizer.lr": 0.1}, dataset) as run:
        for number in epochs:
            run.log_epoch(epoch(number))
        run.log_result(result(epochs.stop - 1))


def test_a_trial_of_short_epochs_writes_its_start_and_then_everything_else_in_one_batch(store):
    _, client, new_run, _ = store
    run_id = new_run()
    attempt(store, run_id, NEVER, range(1, EPOCHS + 1))
    start, rest = CountingClient.batches
    assert start == 0  # the attempt's tags and the run's params
    assert rest == 1 + 3 * EPOCHS + len(result(EPOCHS).final_metrics()) - 1  # the attempt's first epoch, each
    #                                                           epoch's three metrics, the final figures but val
    run = client.get_run(run_id)
    assert steps(client, run_id) == steps(client, run_id, "grad_norm") == list(range(1, EPOCHS + 1))
    assert run.data.metrics["val_accuracy"] == epoch(EPOCHS).val_accuracy
    assert run.data.params["optimizer.lr"] == "0.1" and run.data.tags["device"] == "cpu"
    assert run.data.tags[STATE] == "finished" and run.info.status == "FINISHED"
    assert run.inputs.dataset_inputs[0].dataset.name == "digits"


def test_write_every_s_zero_writes_every_epoch_as_it_ends(store):
    _, client, new_run, _ = store
    run_id = new_run()
    attempt(store, run_id, 0.0, range(1, EPOCHS + 1))
    assert len(CountingClient.batches) == 1 + EPOCHS + 1  # the start, each epoch, the final figures
    assert steps(client, run_id) == list(range(1, EPOCHS + 1))


@pytest.mark.parametrize("write_every_s", [0.0, NEVER])
def test_a_checkpoint_waits_for_its_records_and_a_later_attempt_logs_no_step_twice(store, write_every_s):
    uri, client, new_run, dataset = store
    run_id = new_run()
    seen = []
    with pytest.raises(KeyboardInterrupt):  # interrupted after epoch 5; it checkpointed epochs 1-3
        with continue_trial_run(JobTracking(uri, write_every_s=write_every_s), run_id, {}, {}, dataset) as run:
            for number in range(1, 6):
                run.log_epoch(epoch(number))
                if number == 3:  # as Checkpoint.save puts its file in place
                    run.when_recorded(lambda: seen.append(steps(client, run_id)))
            raise KeyboardInterrupt
    assert seen == [[1, 2, 3]]  # put in place right behind the records of the epochs it covers
    assert steps(client, run_id) == [1, 2, 3, 4, 5]  # what it had collected was written as the attempt ended
    assert client.get_run(run_id).info.status == "FAILED"
    attempt(store, run_id, NEVER, range(4, EPOCHS + 1))  # resumed from the epoch-3 checkpoint
    assert steps(client, run_id) == list(range(1, EPOCHS + 1))  # epochs 4 and 5 ran twice, are logged once
    first_epochs = sorted(client.get_metric_history(run_id, ATTEMPT_FIRST_EPOCH), key=lambda m: m.step)
    assert [m.value for m in first_epochs] == [1, 4]
    assert client.get_run(run_id).info.status == "FINISHED"
