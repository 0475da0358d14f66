"""The search's bookkeeping: paired parameters, trials that name their worker, and the trial budget."""

import optuna
import pytest
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState

from sweep.search import PairedSampler, TrialBudget, WorkerStudy
from sweep.stores import open_journal
from sweep.workers import WORKER


def sampled(study: optuna.Study, n_trials: int) -> list[dict]:
    for _ in range(n_trials):
        trial = study.ask()
        trial.suggest_float("optimizer.lr", 0.005, 0.2, log=True)
        trial.suggest_float("lr_split.decay", 0.2, 1.0)
        study.tell(trial, trial.params["optimizer.lr"])
    return [t.params for t in study.trials]


def test_trial_i_gets_the_same_parameters_whatever_came_before_it():
    plain = optuna.create_study(sampler=PairedSampler(seed=0))
    params = sampled(plain, 4)
    # Another study: a failed and an abandoned trial first, then the rest (a restart, a retry, another worker).
    other = optuna.create_study(sampler=PairedSampler(seed=0), direction="maximize")
    first = other.ask()
    first.suggest_float("optimizer.lr", 0.005, 0.2, log=True)
    other.tell(first, state=TrialState.FAIL)
    other.ask()
    later = sampled(other, 2)[2:]
    assert later == params[2:4]
    assert len({p["optimizer.lr"] for p in params}) == 4, "trials still differ from each other"
    assert sampled(optuna.create_study(sampler=PairedSampler(seed=1)), 1) != params[:1]


def test_a_new_trial_names_its_worker_in_the_same_write_that_creates_it(tmp_path):
    journal = tmp_path / "optuna.journal"
    optuna.create_study(storage=open_journal(journal), study_name="s")
    study = WorkerStudy("s", open_journal(journal), PairedSampler(0))
    before = journal.read_bytes().count(b"\n")
    trial = study.ask()
    assert journal.read_bytes().count(b"\n") == before + 1
    assert trial.user_attrs == {"worker": WORKER}
    assert study.trials[0].state == TrialState.RUNNING


def test_failed_trials_are_replaced_until_max_failures_have_failed():
    budget = TrialBudget(to_start=2, max_failures=2)
    assert budget.take() and budget.take() and not budget.take()
    assert budget.failed() is False  # the first failure: replaced
    assert budget.take() and not budget.take()
    assert budget.failed() is True  # the last one allowed: nothing more starts
    assert not budget.take()
    assert budget.failed() is False  # a trial still running when the budget ran out: said once only


def test_worker_study_refuses_fixed_distributions():
    optuna.create_study(storage=(storage := InMemoryStorage()), study_name="s")
    with pytest.raises(ValueError):
        WorkerStudy("s", storage, PairedSampler(0)).ask({"x": optuna.distributions.FloatDistribution(0, 1)})
