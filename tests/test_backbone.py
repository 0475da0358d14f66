"""The embedded backbone is pinned (same weights whatever the thread count), identified by sha256, and optional."""

from pathlib import Path

import pytest
import torch

from sweep.errors import ConfigError
from sweep.models import make_model_def
from sweep.trial import TrialSpec, run_trial


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def digits(cache_dir: Path, **options):
    return make_model_def("digits_cnn", cache_dir=cache_dir, base_dir=Path.cwd(), **options)


def test_pretraining_gives_the_same_backbone_at_one_and_two_threads(tmp_path, restore_threads):
    """Unpinned, one epoch of pretraining already differs between 1 and 2 threads (last bits of conv weights)."""
    shas = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model_def = digits(tmp_path / f"threads-{threads}", pretrain={"epochs": 1})
        shas.append(model_def.build(5).backbone_sha256())
        assert torch.get_num_threads() == threads, "pretraining must give the caller's thread count back"
    assert shas[0] == shas[1]


def test_every_trial_records_the_backbone_it_started_from(digits_model_def, digits_task):
    result = run_trial(TrialSpec("requires_grad", epochs=1, device="cpu"), digits_task, digits_model_def)
    assert result.backbone_sha256 == digits_model_def.build(digits_task.num_classes).backbone_sha256()
    assert len(result.backbone_sha256) == 64


def test_weights_null_trains_from_a_random_init_and_says_not_pretrained(tmp_path, digits_model_def):
    scratch = digits(tmp_path, weights=None)
    assert not scratch.pretrained and "not pretrained" in scratch.describe()
    torch.manual_seed(0)
    first = scratch.build(5).backbone_sha256()
    torch.manual_seed(0)
    assert scratch.build(5).backbone_sha256() == first, "the trial's seed decides the random init"
    torch.manual_seed(1)
    assert scratch.build(5).backbone_sha256() != first
    assert first != digits_model_def.build(5).backbone_sha256()
    assert not any(tmp_path.iterdir()), "nothing is pretrained or cached"


def test_zero_pretraining_epochs_is_not_pretrained(tmp_path):
    untrained = digits(tmp_path, pretrain={"epochs": 0})
    assert not untrained.pretrained and "not pretrained" in untrained.describe()
    assert digits(tmp_path, pretrain={"epochs": 1}).pretrained


def test_weights_must_be_pretrained_or_null(tmp_path):
    with pytest.raises(ConfigError, match="model.weights='DEFAULT' for digits_cnn must be pretrained"):
        digits(tmp_path, weights="DEFAULT")
