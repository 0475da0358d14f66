"""Workers sharing a study write the same records at once, with a real SQLite store.

They end a study together and each writes its summary; they start their first trials together with the same
dataset. MLflow's SQL store reads what it holds and then inserts what is new; a rival worker's write is put
exactly between the two (inside the first worker's insert): the first worker's insert then fails on a duplicate
key, as it did on PostgreSQL in CI, and the write must still complete, each record once.

Drivers claim a confirmation run by creating it and keeping it if it is the earliest; a driver whose clock runs
behind stamps its run earlier though it stores it later, and both keep theirs: the earliest is the one counted.
"""

import time

import mlflow.tracking._tracking_service.client as tracking_service
import pytest
from mlflow.exceptions import MlflowException
from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlParam
from sqlalchemy.orm import Session

from sweep.tracking import CHOSEN_TRIAL, REPEAT, STUDY as STUDY_TAG, Tracker, dataset_input, earliest_of_each

STUDY = "requires_grad"
PARAMS = {"strategy": "requires_grad", "lr_split": "head_backbone", "freeze.selection": "depth=2"}


@pytest.fixture
def workers(tmp_path):
    """Two workers' trackers on one store, and the study's parent run both of them write onto."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first, second = (Tracker(uri, "shared", tmp_path) for _ in range(2))
    with first.study_run(STUDY, {}):
        pass
    return first, second


def rival_inside_insert(monkeypatch, model: type, rival) -> list[int]:
    """Run `rival` once, just before the first insert of `model` rows: after the writer has read the store."""
    fired = []
    add_all = Session.add_all

    def interleaved(session, instances):
        instances = list(instances)
        if not fired and any(isinstance(i, model) for i in instances):
            fired.append(1)
            rival()
        return add_all(session, instances)

    monkeypatch.setattr(Session, "add_all", interleaved)
    return fired


def record(tracker: Tracker, digits_task, params=PARAMS, metrics=None) -> None:
    tracker.record_study(STUDY, metrics or {"best_val_accuracy": 0.9}, params, {"verdict": "stayed"}, {"a": 1},
                         dataset_input(digits_task))


def test_two_workers_recording_a_study_summary_at_once_both_succeed_and_store_it_once(workers, monkeypatch,
                                                                                     digits_task):
    first, second = workers
    fired = rival_inside_insert(monkeypatch, SqlParam, lambda: record(second, digits_task))
    record(first, digits_task, metrics={"best_val_accuracy": 0.9, "trials": 6.0})
    assert fired  # the rival did write between the first worker's read and its insert
    run = first.client.get_run(first.study_run_id(STUDY))
    assert run.data.params == PARAMS
    assert run.data.metrics["trials"] == 6.0  # the first worker's batch went on past its params
    assert run.data.tags["verdict"] == "stayed"
    assert len(run.inputs.dataset_inputs) == 1


def test_two_workers_logging_the_same_dataset_at_once_share_one_dataset(workers, monkeypatch, digits_task):
    first, second = workers
    fired = rival_inside_insert(monkeypatch, SqlDataset, lambda: record(second, digits_task))
    record(first, digits_task)
    assert fired
    run = first.client.get_run(first.study_run_id(STUDY))
    assert [i.dataset.digest for i in run.inputs.dataset_inputs] == [dataset_input(digits_task).dataset.digest]


def test_a_param_another_worker_stored_with_another_value_still_fails(workers, monkeypatch, digits_task):
    first, second = workers
    other = PARAMS | {"lr_split": "uniform"}
    rival_inside_insert(monkeypatch, SqlParam, lambda: record(second, digits_task, params=other))
    with pytest.raises(MlflowException, match="Changing param values is not allowed"):
        record(first, digits_task)


def test_two_drivers_whose_repeat_claims_raced_both_keep_a_run_and_the_earliest_stamped_one_counts(workers,
                                                                                                    monkeypatch):
    first, second = workers
    parent = first.study_run_id(STUDY)
    identity = {STUDY_TAG: STUDY, CHOSEN_TRIAL: "3", REPEAT: "0"}
    kept_first = first.claim_repeat_run(parent, "requires_grad-repeat-0", identity, {})
    behind = int(time.time() * 1000) - 5000  # the second driver's clock, five seconds behind
    monkeypatch.setattr(tracking_service, "get_current_time_millis", lambda: behind)
    kept_second = second.claim_repeat_run(parent, "requires_grad-repeat-0", identity, {})
    assert kept_first is not None and kept_second is not None  # a claim cannot tell: both run the seed
    runs = first.repeat_runs(STUDY)
    assert len(runs) == 2
    assert [run.info.run_id for run in earliest_of_each(runs, (CHOSEN_TRIAL, REPEAT))] == [kept_second]
    monkeypatch.undo()
    assert first.claim_repeat_run(parent, "requires_grad-repeat-0", identity, {}) is None  # a third driver: taken
