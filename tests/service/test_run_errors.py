"""Every user mistake at the command line: one line on stderr, exit 2, no traceback, nothing written."""

import pytest

from sweep_commands import sweep_command

BAD_INPUTS = {
    "unknown strategy": (["+strategy=freeze_harder"], "unknown strategy 'freeze_harder'; choose one of:"),
    "unknown model": (["model=resnet9000"], "unknown model 'resnet9000'; choose one of:"),
    "unknown data set": (["data=imagenet22k"], "unknown data 'imagenet22k'; choose one of:"),
    "unknown optimizer": (["optimizer=lion"], "unknown optimizer 'lion'; choose one of:"),
    "unknown block": (["freeze.names=[conv9]"], "unknown block 'conv9'; choose among: conv1, conv2, conv3, fc"),
    "selection freezes nothing": (["+strategy=zero_lr", "freeze.depth=0"],
                                  "strategy 'zero_lr' needs something to freeze"),
    "no_grad_forward on a non-prefix": (["+strategy=no_grad_forward", "freeze.depth=null", "freeze.names=[conv2]"],
                                        "needs the frozen blocks to be a prefix"),
    "cached_prefix with BatchNorm statistics that move": (
        ["+strategy=cached_prefix"], "strategy 'cached_prefix' cannot reuse the frozen prefix's outputs: "
                                     "freeze.norm_policy=train keeps updating"),
    "negative cache budget": (["cache.max_bytes=-1"], "cache.max_bytes=-1 must be a whole number of bytes >= 0"),
    "negative lr": (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not a valid learning rate"),
    "zero lr": (["optimizer.lr=0"], "optimizer.lr=0 is not a valid learning rate"),
    "no trials": (["search.n_trials=0"], "search.n_trials=0 must be a whole number >= 1"),
    "unreachable storage": (["search.storage=postgresql://nobody@127.0.0.1:9/none"],
                            "cannot use Optuna storage 'postgresql://nobody@127.0.0.1:9/none'"),
    "malformed storage": (["search.storage=not-a-url"], "search.storage='not-a-url' is not a database URL"),
    "unreachable tracking server": (["tracking.uri=http://127.0.0.1:9"],
                                    "cannot use MLflow tracking URI 'http://127.0.0.1:9'"),
    "malformed tracking URI": (["tracking.uri=nosuchscheme://x"], "cannot use MLflow tracking URI 'nosuchscheme://x'"),
}


@pytest.mark.parametrize("args, message", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_one_clear_line(tmp_path, cache_dir, args, message):
    results_dir = tmp_path / "results"
    results_dir.mkdir()
    (results_dir / "cache").symlink_to(cache_dir, target_is_directory=True)  # pretrained weights are not results
    done = sweep_command("sweep.run", *args, "train.epochs=1", f"results_dir={results_dir}", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0]
    assert [p.name for p in results_dir.iterdir()] == ["cache"]
    assert [p.name for p in tmp_path.iterdir()] == ["results"]
