import numpy as np
import pytest
import torch

import attentive
from attentive.checkpoint import TRAIN_CHECKPOINT_FORMAT, TRAIN_CHECKPOINT_VERSION, save_atomic

# The published AttentiveNAS models and their rounded MFLOPs (paper, Table 1 / model zoo).
ATTENTIVENAS_MODELS = {
    "A0": (203, 192, [16, 16, 24, 32, 64, 112, 192, 216, 1792], [1, 3, 3, 3, 3, 3, 1], [3, 3, 3, 3, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6]),
    "A1": (279, 224, [16, 16, 24, 32, 64, 112, 192, 216, 1984], [1, 3, 3, 3, 3, 3, 1], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 4, 4, 6, 6]),
    "A2": (317, 224, [16, 16, 24, 32, 64, 112, 200, 224, 1984], [1, 3, 3, 3, 3, 4, 1], [3, 3, 3, 3, 3, 5, 3], [1, 4, 5, 4, 4, 6, 6]),
    "A3": (357, 224, [16, 16, 24, 32, 64, 112, 208, 224, 1984], [2, 3, 3, 4, 3, 5, 1], [3, 3, 3, 5, 3, 3, 3], [1, 4, 4, 4, 4, 6, 6]),
    "A4": (444, 256, [16, 16, 24, 32, 64, 112, 192, 216, 1984], [1, 3, 3, 4, 3, 5, 1], [3, 3, 3, 5, 3, 5, 3], [1, 4, 4, 5, 4, 6, 6]),
    "A5": (491, 256, [16, 16, 24, 32, 72, 112, 192, 216, 1792], [1, 3, 3, 3, 4, 6, 1], [3, 3, 3, 5, 3, 3, 3], [1, 4, 5, 4, 4, 6, 6]),
    "A6": (709, 288, [16, 16, 24, 32, 64, 112, 216, 224, 1984], [1, 3, 3, 4, 4, 6, 1], [3, 3, 3, 3, 3, 5, 3], [1, 4, 6, 5, 4, 6, 6]),
}


def attentivenas_arch(name: str) -> dict:
    _, r, w, d, k, e = ATTENTIVENAS_MODELS[name]
    return {"resolution": r, "width": w, "depth": d, "kernel_size": k, "expand_ratio": e}


@pytest.fixture(scope="session", params=["tiny", "attentivenas"])
def space(request):
    return attentive.load_space(request.param)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)
    yield


@pytest.fixture
def one_torch_thread():
    """For tests of tiny nets: a second intra-op thread gains nothing there, and on a busy 2-core machine
    OpenMP threads competing with other processes made ops many times slower (grad_norm on 24 tiny-space
    archs: 28 s vs 1 s of CPU). Used via `pytestmark`, so it runs after `_two_threads`."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_training_checkpoint(path, seed: int = 0):
    """Write an untrained tiny supernet in the training-checkpoint format (the keys train.py writes that readers
    use), on synthetic data, without a predictor; returns (path, supernet). The last BN of each block gets random
    weights so that blocks are not identities."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        supernet = attentive.Supernet("tiny")
        for block in supernet.blocks:
            torch.nn.init.normal_(block.bn3.weight, 0.0, 0.5)
    config = {"data": {"name": "synthetic", "root": str(path.parent / "data"), "holdout_fraction": 0.25,
                       "split_seed": 0, "image_size": None, "augment": "basic", "batch_size": 16,
                       "synthetic_num_train": 128, "synthetic_num_test": 64}}
    save_atomic({"format": TRAIN_CHECKPOINT_FORMAT, "format_version": TRAIN_CHECKPOINT_VERSION,
                 "model": supernet.state_dict(), "space": supernet.space.to_dict(),
                 "space_hash": supernet.space.hash, "num_classes": 10, "config": config, "epoch": 0,
                 "step": 0, "predictor": None}, path)
    return path, supernet


@pytest.fixture(scope="module")
def supernet_checkpoint(tmp_path_factory):
    """Path of an untrained tiny supernet checkpoint (see `tiny_training_checkpoint`)."""
    return tiny_training_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt")[0]
