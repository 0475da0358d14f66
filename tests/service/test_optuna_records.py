"""The Optuna side: a journal path as search.storage, read the way optuna-dashboard reads it; metric names;
the fixed configuration as a plain attribute, and stores written before that change still checked."""

import io
import json
import sys

import optuna
import optuna_dashboard
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from sweep_commands import sweep_command
from sweep.errors import ConfigError
from sweep.search import check_study, fingerprint_of


def dashboard_get(journal, path: str) -> dict:
    """A GET on optuna-dashboard's own app (its WSGI callable), as its browser page would make it."""
    status = []
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "wsgi.input": io.BytesIO(),
               "wsgi.errors": sys.stderr, "SERVER_NAME": "localhost", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    body = b"".join(optuna_dashboard.wsgi(str(journal))(environ, lambda s, headers, exc=None: status.append(s)))
    assert status == ["200 OK"]
    return json.loads(body)


def test_a_journal_path_as_search_storage_is_what_optuna_and_optuna_dashboard_open(tmp_path, cache_dir):
    journal = tmp_path / "studies.journal"
    results = tmp_path / "results"
    results.mkdir()
    (results / "cache").symlink_to(cache_dir, target_is_directory=True)
    done = sweep_command("sweep.run", f"search.storage={journal}", "+strategy=zero_lr", "search.n_trials=1",
                         "train.epochs=1", "experiment=dash", f"results_dir={results}")
    assert done.returncode == 0, done.stderr
    assert not (results / "optuna.journal").exists()
    study = optuna.load_study(study_name="dash.zero_lr.head_backbone",
                              storage=JournalStorage(JournalFileBackend(str(journal))))
    assert study.metric_names == ["val_accuracy"] and len(study.trials) == 1
    assert study.user_attrs["config"]["train.epochs"] == 1  # plain values, not JSON in a string
    (summary,) = dashboard_get(journal, "/api/studies")["study_summaries"]
    detail = dashboard_get(journal, f"/api/studies/{summary['study_id']}")
    assert summary["study_name"] == "dash.zero_lr.head_backbone" and detail["objective_names"] == ["val_accuracy"]


@pytest.mark.parametrize("stored", ["plain", "json strings, as before"])
def test_a_study_checks_its_fixed_configuration_in_either_stored_form(stored):
    storage = optuna.storages.InMemoryStorage()
    fixed = {"train.epochs": 8, "optimizer.name": "sgd", "freeze.names": ["conv1"], "freeze.regex": None}
    study = optuna.create_study(storage=storage, study_name="s")
    study.set_user_attr("config", fixed if stored == "plain" else fingerprint_of(fixed))
    check_study(storage, "s", dict(fixed))
    with pytest.raises(ConfigError, match=r"different configuration \(changed: train.epochs\)"):
        check_study(storage, "s", fixed | {"train.epochs": 9})
