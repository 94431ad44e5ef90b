import gzip
import struct
from pathlib import Path

import pytest
import torch
import torchvision

from attentive.config import DEFAULTS, load_config
from attentive.data import (
    DATASETS, FASHION_MNIST_DIR_ENV, SYNTHETIC_MEAN, SYNTHETIC_STD, DataSplits, ResumableDistributedSampler,
    build_datasets, build_loader, calibration_batches, datasets_from_config, set_loader_epoch,
)

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def synthetic():
    return build_datasets("synthetic", "unused", synthetic_num_train=200, synthetic_num_test=50,
                          num_classes_synthetic=5)


def _labels(ds):
    return [ds[i][1] for i in range(len(ds))]


def _epoch_batches(loader, epoch, skip_batches=0):
    set_loader_epoch(loader, epoch, skip_batches=skip_batches)
    return [(x, y) for x, y in loader]


def test_synthetic_shapes_dtypes_and_labels(synthetic):
    assert (synthetic.name, synthetic.num_classes, synthetic.image_size) == ("synthetic", 5, 28)
    assert (len(synthetic.train), len(synthetic.holdout), len(synthetic.test)) == (180, 20, 50)
    for ds in (synthetic.train, synthetic.holdout, synthetic.test):
        x, y = ds[0]
        assert x.shape == (3, 28, 28) and x.dtype == torch.float32
        assert isinstance(y, int)
        assert set(_labels(ds)) <= set(range(5))
    assert build_datasets("synthetic", "unused", image_size=16).train[0][0].shape == (3, 16, 16)


def test_synthetic_is_deterministic_and_normalized(synthetic):
    again = build_datasets("synthetic", "unused", synthetic_num_train=200, synthetic_num_test=50,
                           num_classes_synthetic=5)
    assert torch.equal(synthetic.test[3][0], again.test[3][0])
    images = torch.stack([synthetic.test[i][0] for i in range(len(synthetic.test))])
    assert abs(images.mean().item()) < 0.5 and 0.5 < images.std().item() < 2


def test_synthetic_is_learnable(synthetic):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 28 * 28, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loader = build_loader(synthetic.train, 60, train=True)
    losses = []
    for epoch in range(3):
        for x, y in _epoch_batches(loader, epoch):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_holdout_split_disjoint_complete_and_seeded(synthetic):
    train, holdout = set(synthetic.train.indices.tolist()), set(synthetic.holdout.indices.tolist())
    assert not train & holdout
    assert train | holdout == set(range(200))
    same = build_datasets("synthetic", "x", synthetic_num_train=200, synthetic_num_test=50, num_classes_synthetic=5)
    other = build_datasets("synthetic", "x", synthetic_num_train=200, synthetic_num_test=50, num_classes_synthetic=5,
                           split_seed=1)
    assert torch.equal(same.holdout.indices, synthetic.holdout.indices)
    assert not torch.equal(other.holdout.indices, synthetic.holdout.indices)
    torch.manual_seed(123)  # the split does not depend on the global RNG
    assert torch.equal(build_datasets("synthetic", "x", synthetic_num_train=200, synthetic_num_test=50,
                                      num_classes_synthetic=5).holdout.indices, synthetic.holdout.indices)
    quarter = build_datasets("synthetic", "x", synthetic_num_train=200, holdout_fraction=0.25)
    assert len(quarter.holdout) == 50


@pytest.mark.parametrize("fraction", [0.0, -0.1, 0.6, 1.0])
def test_bad_holdout_fraction_raises(fraction):
    with pytest.raises(ValueError, match="holdout_fraction"):
        build_datasets("synthetic", "x", holdout_fraction=fraction)


def test_unknown_dataset_raises_with_allowed_names():
    with pytest.raises(ValueError) as err:
        build_datasets("mnist3d", "x")
    assert "mnist3d" in str(err.value) and all(name in str(err.value) for name in DATASETS)


def test_other_bad_arguments_raise():
    with pytest.raises(ValueError, match="augment"):
        build_datasets("synthetic", "x", augment="mixup")
    with pytest.raises(ValueError, match="autoaugment"):
        build_datasets("synthetic", "x", augment="autoaugment")
    with pytest.raises(ValueError, match="image_size"):
        build_datasets("imagefolder", "x")


def test_loader_order_is_a_function_of_seed_and_epoch(synthetic):
    loader = build_loader(synthetic.train, 32, train=True, seed=7)
    first = [y for _, y in _epoch_batches(loader, 0)]
    torch.manual_seed(999)  # global RNG must not matter
    assert all(torch.equal(a, b) for a, b in zip(first, [y for _, y in _epoch_batches(loader, 0)]))
    fresh = build_loader(synthetic.train, 32, train=True, seed=7)
    set_loader_epoch(fresh, 3)
    epoch3 = [y for _, y in fresh]
    assert all(torch.equal(a, b) for a, b in zip(epoch3, [y for _, y in fresh]))  # iterating twice: same order
    assert all(torch.equal(a, b) for a, b in zip(epoch3, [y for _, y in _epoch_batches(loader, 3)]))
    assert not all(torch.equal(a, b) for a, b in zip(first, epoch3))
    other_seed = build_loader(synthetic.train, 32, train=True, seed=8)
    assert not all(torch.equal(a, b) for a, b in zip(first, [y for _, y in _epoch_batches(other_seed, 0)]))
    assert len(first) == len(loader) == 180 // 32  # drop_last for training


def test_resume_skips_batches_exactly(synthetic):
    loader = build_loader(synthetic.train, 32, train=True, seed=3)
    full = _epoch_batches(loader, 2)
    resumed = _epoch_batches(build_loader(synthetic.train, 32, train=True, seed=3), 2, skip_batches=2)
    assert len(resumed) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(_epoch_batches(loader, 3)) == len(full)  # the skip applies to the resumed epoch only


def test_eval_loader_is_sequential_and_keeps_last_batch(synthetic):
    loader = build_loader(synthetic.test, 16, train=False)
    labels = torch.cat([y for _, y in _epoch_batches(loader, 5)])
    assert labels.tolist() == _labels(synthetic.test)
    with pytest.raises(ValueError, match="skip_batches"):
        set_loader_epoch(loader, 0, skip_batches=1)


def test_distributed_sampler_seeded_and_resumable(synthetic):
    shards = [ResumableDistributedSampler(synthetic.train, num_replicas=2, rank=r, seed=4) for r in (0, 1)]
    for s in shards:
        s.set_epoch(1)
    a, b = (list(s) for s in shards)
    assert not set(a) & set(b) and len(a) == len(b) == 90
    shards[0].set_epoch(1, skip=10)
    assert list(shards[0]) == a[10:] and len(shards[0]) == 80


def test_augmentation_deterministic_per_epoch_and_index(synthetic):
    train = synthetic.train
    train.set_epoch(0)
    epoch0 = [train[i][0] for i in range(20)]
    assert all(torch.equal(x, train[i][0]) for i, x in enumerate(epoch0))
    torch.manual_seed(42)
    assert all(torch.equal(x, train[i][0]) for i, x in enumerate(epoch0))
    train.set_epoch(1)
    assert not all(torch.equal(x, train[i][0]) for i, x in enumerate(epoch0))
    train.set_epoch(0)
    assert all(torch.equal(x, train[i][0]) for i, x in enumerate(epoch0))
    # holdout and test are never augmented
    synthetic.holdout.set_epoch(0)
    h0 = synthetic.holdout[0][0]
    synthetic.holdout.set_epoch(9)
    assert torch.equal(h0, synthetic.holdout[0][0])
    plain = build_datasets("synthetic", "x", synthetic_num_train=200, synthetic_num_test=50, num_classes_synthetic=5,
                           augment="none").train
    p0 = plain[0][0]
    plain.set_epoch(3)
    assert torch.equal(p0, plain[0][0])


def test_calibration_batches_deterministic(synthetic):
    a = calibration_batches(synthetic, 64, 4, seed=1)
    b = calibration_batches(synthetic, 64, 4, seed=1)
    c = calibration_batches(synthetic, 64, 4, seed=2)
    assert len(a) == 4 and all(x.shape == (64, 3, 28, 28) for x in a)  # 256 > 180 images: permutation repeats
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _old_calibration_batches(dataset, batch_size, num_batches, seed):
    """calibration_batches as it was before it took DataSplits: a seeded permutation of `dataset`, repeated."""
    g = torch.Generator().manual_seed(seed)
    needed = batch_size * num_batches
    order = torch.cat([torch.randperm(len(dataset), generator=g) for _ in range(-(-needed // len(dataset)))])
    order = order[:needed].tolist()
    return [torch.stack([dataset[i][0] for i in order[b * batch_size:(b + 1) * batch_size]])
            for b in range(num_batches)], order


def _raw_normalized(splits, base):
    """Training image `base` of the shared storage, normalized, with no augmentation at all."""
    mean = torch.tensor(SYNTHETIC_MEAN).view(3, 1, 1)
    std = torch.tensor(SYNTHETIC_STD).view(3, 1, 1)
    return (splits.train.images[base].float() / 255 - mean) / std


def test_train_plain_shares_the_training_images_without_augmentation():
    splits = build_datasets("synthetic", "x", synthetic_num_train=200, synthetic_num_test=50, augment="basic")
    train, plain = splits.train, splits.train_plain
    assert train.pad > 0 and plain.pad == 0
    # A view, not a copy: the same uint8 storage and the same index tensor (same images, same order).
    assert plain.images is train.images and plain.labels.data_ptr() == train.labels.data_ptr()
    assert torch.equal(plain.indices, train.indices) and plain.indices.data_ptr() == train.indices.data_ptr()
    assert [plain[i][1] for i in range(len(plain))] == _labels(train)
    with pytest.raises(ValueError, match="train_plain must be the un-augmented view of train"):
        DataSplits(train=train, train_plain=splits.holdout, holdout=splits.holdout, test=splits.test,
                   num_classes=10, image_size=28, name="synthetic")


def test_calibration_never_sees_augmented_images():
    """augment basic: every calibration image is the raw normalized training image; the augmented train split
    would have given other pixels. Fails if augmented images reach BN recalibration."""
    splits = build_datasets("synthetic", "x", synthetic_num_train=200, synthetic_num_test=50, augment="basic")
    batches = calibration_batches(splits, 16, 3, seed=5)
    _, order = _old_calibration_batches(splits.train_plain, 16, 3, seed=5)  # positions within the split
    images = torch.cat(batches)
    assert images.shape == (48, 3, 28, 28)
    differs = 0
    for image, i in zip(images, order):
        base = int(splits.train.indices[i])
        assert torch.equal(image, _raw_normalized(splits, base)), f"image {i} is augmented"
        differs += not torch.equal(image, splits.train[i][0])
    assert differs > 0, "augmentation changed none of the 48 images: the test would not catch augmented images"


def test_calibration_with_augment_none_is_bit_identical_to_before():
    """augment none (the demo config): the same tensors as the old calibration_batches(splits.train, ...)."""
    splits = build_datasets("synthetic", "x", synthetic_num_train=200, synthetic_num_test=50, augment="none",
                            num_classes_synthetic=5)
    for batch_size, num_batches, seed in ((16, 2, 0), (64, 4, 3)):  # 256 > 180 images: the permutation repeats
        expected, _ = _old_calibration_batches(splits.train, batch_size, num_batches, seed)
        got = calibration_batches(splits, batch_size, num_batches, seed=seed)
        assert len(got) == num_batches and all(torch.equal(x, y) for x, y in zip(got, expected))


def test_calibration_refuses_anything_but_data_splits(synthetic):
    for wrong in (synthetic.train, synthetic.train_plain, [synthetic.train[0][0]]):
        with pytest.raises(TypeError, match="takes the DataSplits .* got"):
            calibration_batches(wrong, 8, 1)
    with pytest.raises(ValueError, match="batch_size and num_batches must be >= 1"):
        calibration_batches(synthetic, 8, 0)


def _assert_same_splits(a, b):
    assert (a.name, a.num_classes, a.image_size) == (b.name, b.num_classes, b.image_size)
    for part in ("train", "train_plain", "holdout", "test"):
        x, y = getattr(a, part), getattr(b, part)
        assert (type(x), len(x), x.pad, x.seed) == (type(y), len(y), y.pad, y.seed), part
        assert torch.equal(x.indices, y.indices) and torch.equal(x.images, y.images), part
        assert torch.equal(x.labels, y.labels) and torch.equal(x[0][0], y[0][0]), part


def test_datasets_from_config_reads_every_split_key():
    data = {**DEFAULTS["data"], "name": "synthetic", "root": "unused", "augment": "none", "holdout_fraction": 0.25,
            "split_seed": 3, "image_size": 16, "synthetic_num_train": 80, "synthetic_num_test": 20}
    expected = build_datasets("synthetic", "unused", image_size=16, augment="none", holdout_fraction=0.25,
                              split_seed=3, synthetic_num_train=80, synthetic_num_test=20, num_classes_synthetic=7)
    _assert_same_splits(datasets_from_config(data, num_classes=7), expected)
    # Missing keys (older checkpoints) take the config defaults; loader-only keys are ignored.
    minimal = datasets_from_config({"name": "synthetic", "batch_size": 3})
    _assert_same_splits(minimal, build_datasets("synthetic", DEFAULTS["data"]["root"]))
    assert minimal.train.pad > 0  # the default augment is basic


def test_datasets_from_config_errors_and_root_override(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="has no 'name'.*keys present: root"):
        datasets_from_config({"root": "x"})
    with pytest.raises(TypeError, match="'data' section of a training config"):
        datasets_from_config(["synthetic"])
    with pytest.raises(ValueError, match="unknown augment 'mixup'"):
        datasets_from_config({"name": "synthetic", "augment": "mixup"})
    package = tmp_path / "package"
    package.mkdir()
    _fake_fashion_mnist(package)
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(package))
    splits = datasets_from_config({"name": "fashion_mnist", "root": "/nonexistent"}, root=tmp_path / "data")
    assert (tmp_path / "data" / "FashionMNIST" / "raw").is_dir() and len(splits.test) == 10


def _write_idx(path: Path, images: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> None:
    if images is not None:
        header = struct.pack(">IIII", 2051, *images.shape)
        payload = images.numpy().tobytes()
    else:
        header = struct.pack(">II", 2049, len(labels))
        payload = labels.to(torch.uint8).numpy().tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + payload)


def _fake_fashion_mnist(directory: Path, num_train: int = 40, num_test: int = 10) -> None:
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", num_train), ("t10k", num_test)):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images=torch.randint(0, 256, (n, 28, 28),
                                                                                      dtype=torch.uint8, generator=g))
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels=torch.arange(n) % 10)


def test_fashion_mnist_from_package_dir(tmp_path, monkeypatch):
    package = tmp_path / "package"
    package.mkdir()
    _fake_fashion_mnist(package)
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(package))
    root = tmp_path / "data"
    splits = build_datasets("fashion_mnist", root, holdout_fraction=0.25)
    raw = root / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        f"{s}-{k}-idx{d}-ubyte" for s in ("train", "t10k") for k, d in (("images", 3), ("labels", 1)))
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (30, 10, 10)
    assert (splits.num_classes, splits.image_size) == (10, 28)
    x, y = splits.train[0]
    assert x.shape == (3, 28, 28) and torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert sorted(_labels(splits.test)) == list(range(10))
    # Without the package the already decompressed raw files are used.
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path / "nowhere"))
    assert len(build_datasets("fashion_mnist", root).test) == 10


def test_fashion_mnist_missing_raises_with_apt_hint(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(tmp_path / "nowhere"))

    def no_network(self):
        raise RuntimeError("network unreachable")

    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "download", no_network)
    with pytest.raises(RuntimeError, match="apt-get install -y dataset-fashion-mnist"):
        build_datasets("fashion_mnist", tmp_path / "data")


def test_imagefolder(tmp_path):
    from PIL import Image

    for split, n in (("train", 5), ("val", 2)):
        for cls, colour in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), colour).save(tmp_path / split / cls / f"{i}.png")
    splits = build_datasets("imagefolder", tmp_path, image_size=32, holdout_fraction=0.2)
    assert (len(splits.train), len(splits.holdout), len(splits.test)) == (8, 2, 4)
    assert (splits.num_classes, splits.image_size) == (2, 32)
    for ds in (splits.train, splits.train_plain, splits.holdout, splits.test):
        x, y = ds[0]
        assert x.shape == (3, 32, 32) and y in (0, 1)
    # holdout uses the eval transform: deterministic
    assert torch.equal(splits.holdout[0][0], splits.holdout[0][0])
    assert splits.train.dataset.transform is not splits.holdout.dataset.transform
    # train_plain: the training images in train's order through the holdout's eval transform, sharing the scan
    assert splits.train_plain.indices == splits.train.indices
    assert splits.train_plain.dataset.transform is splits.holdout.dataset.transform
    assert splits.train_plain.dataset.samples is splits.train.dataset.samples
    calib = calibration_batches(splits, 4, 2, seed=0)
    assert [x.shape for x in calib] == [(4, 3, 32, 32)] * 2
    assert torch.equal(torch.cat(calib), torch.cat(calibration_batches(splits, 4, 2, seed=0)))  # no random crops


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, str(DEBIAN_FASHION_MNIST))
    splits = build_datasets("fashion_mnist", tmp_path)
    assert len(splits.train) + len(splits.holdout) == 60000 and len(splits.holdout) == 6000
    assert len(splits.test) == 10000
    images = torch.stack([splits.holdout[i][0] for i in range(500)])
    assert images.shape == (500, 3, 28, 28) and abs(images.mean().item()) < 0.2
    # The demo's training config (augment none): its calibration images are the very tensors they were before.
    demo = datasets_from_config(load_config(Path(__file__).resolve().parent.parent / "configs" / "train" /
                                            "fashion_mnist.yaml")["data"], root=tmp_path)
    assert demo.train.pad == 0
    expected, _ = _old_calibration_batches(demo.train, 128, 2, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(calibration_batches(demo, 128, 2, seed=0), expected))
