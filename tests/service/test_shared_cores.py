"""`train.threads` through the real command: it reaches torch in the trial process, and workers may differ in it."""

from mlflow.tracking import MlflowClient

from sweep_commands import sweep_command

ARGS = ["+strategy=requires_grad", "train.epochs=1", "experiment=threads"]


def test_train_threads_reaches_the_trials_and_does_not_split_the_study(tmp_path, cache_dir):
    (tmp_path / "cache").symlink_to(cache_dir, target_is_directory=True)
    # The commands run with OMP_NUM_THREADS=1: a trial on 2 threads got them from train.threads.
    for n_trials, threads in ((1, 2), (2, 1)):  # the second worker tops the same study up with another count
        done = sweep_command("sweep.run", *ARGS, f"search.n_trials={n_trials}", f"train.threads={threads}",
                             f"results_dir={tmp_path}")
        assert done.returncode == 0, done.stderr

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("threads").experiment_id], "tags.`sweep.role` = 'trial'",
                              order_by=["attributes.start_time ASC"])
    assert [r.data.metrics["torch_threads"] for r in runs] == [2, 1]
    assert all("train.threads" not in r.data.params for r in runs)  # how it ran, not what it computed
    assert not [p for p in (tmp_path / "workers").rglob("*") if p.is_file()]  # both workers removed their entries


def test_a_bad_thread_count_is_one_line(tmp_path):
    done = sweep_command("sweep.run", *ARGS, "train.threads=0", f"results_dir={tmp_path / 'results'}")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: train.threads=0 is not valid: it must be greater than or equal to 1"]
    assert not (tmp_path / "results").exists()
