"""Datasets and loaders: a seeded train/holdout split, in-memory fast paths for small images, resumable loaders.

Every dataset yields ``(float tensor [3, H, W], int label)``, normalized with the dataset's mean/std; grayscale
is expanded to 3 channels because the supernet stem always takes 3.

Reproducibility: nothing here draws from the global RNG.

* The holdout split is a ``torch.Generator(split_seed)`` permutation of the training set.
* Training order for epoch E is ``randperm(n, Generator(seed + E))`` (or ``DistributedSampler`` with the same
  seed/epoch rule), so it is a pure function of ``(seed, E)``.
* Augmentation of the in-memory datasets (fashion_mnist, cifar10, synthetic) is a hash of
  ``(seed, epoch, sample index)``, so it does not depend on worker count, sample order or resume point.

Call ``set_loader_epoch(loader, epoch)`` before every epoch; on resume call
``set_loader_epoch(loader, epoch, skip_batches=k)`` and the loader yields exactly the batches k, k+1, ... that
the uninterrupted run would have produced, without loading the skipped ones.

``datasets_from_config(cfg["data"], ...)`` is the one way to rebuild a training run's splits (trainer, search,
predictor retraining, benchmarks); ``calibration_batches(splits, ...)`` is the one way to get BN-recalibration
batches, always from the un-augmented training images (``DataSplits.train_plain``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, SequentialSampler, Subset

from .fileio import gunzip_atomic

DATASETS = ("cifar10", "fashion_mnist", "imagefolder", "synthetic")
AUGMENTATIONS = ("none", "basic", "autoaugment")
DEFAULT_ROOT = "./data"  # the training config's data.root default

FASHION_MNIST_DIR_ENV = "ATTENTIVE_FASHION_MNIST_DIR"
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte",
)

FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SYNTHETIC_MEAN, SYNTHETIC_STD = (0.5, 0.5, 0.5), (0.3, 0.3, 0.3)
SYNTHETIC_DATA_SEED = 0  # synthetic images are fixed; split_seed only changes the split

_MASK64 = (1 << 64) - 1


@dataclass
class DataSplits:
    """train (augmented), train_plain (the same training images in the same order, not augmented: what BN
    recalibration sees), holdout (seeded part of the training set, not augmented) and the official test split."""

    train: Dataset
    train_plain: Dataset
    holdout: Dataset
    test: Dataset
    num_classes: int
    image_size: int  # native size of the images delivered; resizing to a sampled resolution is the caller's job
    name: str

    def __post_init__(self) -> None:
        if len(self.train_plain) != len(self.train):
            raise ValueError(f"train_plain must be the un-augmented view of train (same images, same order); got "
                             f"{len(self.train_plain)} images for {len(self.train)}")


# ---------------------------------------------------------------------------------------------------------------
# In-memory datasets


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def augmentation_hash(seed: int, epoch: int, index: int) -> int:
    """64-bit hash of (seed, epoch, index): the only source of randomness of the in-memory augmentation."""
    return _splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64))


class InMemoryImageDataset(Dataset):
    """Images held as one uint8 tensor [N, C, H, W]; samples are cropped, flipped and normalized with torch ops.

    Much cheaper than PIL transforms for small images on CPU. ``indices`` selects the samples of this split from
    the shared storage (no copy). With ``pad > 0`` each sample gets a random crop of the zero-padded image and a
    random horizontal flip, drawn from ``augmentation_hash(seed, epoch, base index)``: the same sample in the same
    epoch is always augmented the same way, whichever worker loads it and whether or not the run was resumed.
    Call ``set_epoch`` each epoch (``set_loader_epoch`` does). Don't use persistent workers: they keep a stale
    copy of the epoch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        indices: Tensor | None = None,
        pad: int = 0,
        seed: int = 0,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 tensor [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        self.images = images
        self.labels = labels.long()
        self.indices = torch.arange(len(images)) if indices is None else indices.long()
        # Per-channel stats broadcast to 3 channels, since grayscale is expanded to 3 channels before normalizing.
        self.mean = torch.tensor(mean, dtype=torch.float32).expand(3).reshape(3, 1, 1).clone()
        self.std = torch.tensor(std, dtype=torch.float32).expand(3).reshape(3, 1, 1).clone()
        self.pad = pad
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        base = int(self.indices[i])
        image = self.images[base]
        if self.pad:
            image = self._crop_flip(image, augmentation_hash(self.seed, self.epoch, base))
        image = image.expand(3, -1, -1).float().div_(255).sub_(self.mean).div_(self.std)
        return image, int(self.labels[base])

    def _crop_flip(self, image: Tensor, h: int) -> Tensor:
        span = 2 * self.pad + 1
        top, left, flip = h % span, (h >> 16) % span, (h >> 32) & 1
        height, width = image.shape[-2:]
        # Zero padding of the uint8 image, as torchvision's RandomCrop(padding=...) does before normalization.
        image = F.pad(image, (self.pad,) * 4)[:, top:top + height, left:left + width]
        return image.flip(-1) if flip else image


def _split_indices(n: int, holdout_fraction: float, split_seed: int) -> tuple[Tensor, Tensor]:
    """(train, holdout) indices: a seeded permutation, sorted so that eval reads the storage in order."""
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    num_holdout = max(1, round(n * holdout_fraction))
    return permutation[num_holdout:].sort().values, permutation[:num_holdout].sort().values


def _in_memory_splits(
    name: str,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int,
    augment: str,
    holdout_fraction: float,
    split_seed: int,
    num_classes: int,
) -> DataSplits:
    if augment == "autoaugment":
        raise ValueError(f"augment='autoaugment' is only available for imagefolder; use 'basic' or 'none' for {name}")
    train_idx, holdout_idx = _split_indices(len(train_images), holdout_fraction, split_seed)
    common = dict(mean=mean, std=std)
    return DataSplits(
        train=InMemoryImageDataset(train_images, train_labels, indices=train_idx, seed=split_seed,
                                   pad=pad if augment == "basic" else 0, **common),
        # Same storage and index tensor as train (no copy), no pad crop, no flip.
        train_plain=InMemoryImageDataset(train_images, train_labels, indices=train_idx, **common),
        holdout=InMemoryImageDataset(train_images, train_labels, indices=holdout_idx, **common),
        test=InMemoryImageDataset(test_images, test_labels, **common),
        num_classes=num_classes,
        image_size=train_images.shape[-1],
        name=name,
    )


# ---------------------------------------------------------------------------------------------------------------
# Sources


def _prepare_fashion_mnist(root: Path) -> None:
    """Put the raw IDX files under <root>/FashionMNIST/raw: from the Debian package, already there, or downloaded."""
    import torchvision

    raw = root / "FashionMNIST" / "raw"
    debian = Path(os.environ.get(FASHION_MNIST_DIR_ENV, DEBIAN_FASHION_MNIST_DIR))
    if all((debian / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
        raw.mkdir(parents=True, exist_ok=True)
        for f in FASHION_MNIST_FILES:
            if not (raw / f).is_file():
                gunzip_atomic(debian / f"{f}.gz", raw / f)
        return
    if all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        return
    try:
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
    except Exception as e:
        raise RuntimeError(
            f"Fashion-MNIST not found in {debian} (set {FASHION_MNIST_DIR_ENV} to another directory) nor in {raw}, "
            f"and the torchvision download failed ({e}). Install it with `apt-get install -y dataset-fashion-mnist` "
            f"or allow torchvision to download it."
        ) from e


def _load_fashion_mnist(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    import torchvision

    _prepare_fashion_mnist(root)
    train = torchvision.datasets.FashionMNIST(str(root), train=True, download=False)
    test = torchvision.datasets.FashionMNIST(str(root), train=False, download=False)
    return train.data.unsqueeze(1), train.targets, test.data.unsqueeze(1), test.targets


def _load_cifar10(root: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    import torchvision

    try:  # download=True returns at once when the extracted batches are already there
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except Exception as e:
        raise RuntimeError(
            f"CIFAR-10 is not under {root} and the torchvision download failed ({e}). "
            f"Put cifar-10-batches-py/ there or allow torchvision to download it."
        ) from e

    def to_tensors(ds) -> tuple[Tensor, Tensor]:  # HWC numpy -> NCHW tensor, once, so samples are cheap views
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return (*to_tensors(train), *to_tensors(test))


def _make_synthetic(
    num_train: int, num_test: int, num_classes: int, image_size: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class prototypes (smooth 4x4 colour patterns upsampled) plus pixel noise: learnable but not trivial."""
    g = torch.Generator().manual_seed(SYNTHETIC_DATA_SEED)
    prototypes = F.interpolate(torch.rand(num_classes, 3, 4, 4, generator=g) * 255, size=image_size,
                               mode="bilinear", align_corners=False)

    def draw(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(num_classes, (n,), generator=g)
        noise = torch.randn(n, 3, image_size, image_size, generator=g) * 40
        return (prototypes[labels] + noise).round_().clamp_(0, 255).to(torch.uint8), labels

    return (*draw(num_train), *draw(num_test))


def _imagefolder_splits(
    root: Path, image_size: int, augment: str, holdout_fraction: float, split_seed: int
) -> DataSplits:
    import copy

    from timm.data import create_transform
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.vision import StandardTransform

    train_tf = create_transform(input_size=image_size, is_training=augment != "none",
                                auto_augment="rand-m9-mstd0.5" if augment == "autoaugment" else None)
    eval_tf = create_transform(input_size=image_size, is_training=False)
    train_folder = ImageFolder(str(root / "train"), transform=train_tf)
    test = ImageFolder(str(root / "val"), transform=eval_tf)
    if test.class_to_idx != train_folder.class_to_idx:
        raise ValueError(f"{root}/train and {root}/val have different class folders")
    eval_view = copy.copy(train_folder)  # shares the scanned sample list; only the transform differs
    eval_view.transform, eval_view.transforms = eval_tf, StandardTransform(eval_tf)
    train_idx, holdout_idx = _split_indices(len(train_folder), holdout_fraction, split_seed)
    return DataSplits(
        train=Subset(train_folder, train_idx.tolist()),
        train_plain=Subset(eval_view, train_idx.tolist()),
        holdout=Subset(eval_view, holdout_idx.tolist()),
        test=test,
        num_classes=len(train_folder.classes),
        image_size=image_size,
        name="imagefolder",
    )


def build_datasets(
    name: str,
    root: str | Path,
    *,
    image_size: int | None = None,
    holdout_fraction: float = 0.1,
    split_seed: int = 0,
    augment: str = "basic",
    synthetic_num_train: int = 512,
    synthetic_num_test: int = 256,
    num_classes_synthetic: int = 10,
) -> DataSplits:
    """Train / holdout / test splits of a dataset.

    ``holdout`` is a fixed ``split_seed`` permutation slice (``holdout_fraction`` of the training set) evaluated
    without augmentation; ``train`` is the rest, augmented, and ``train_plain`` the same images un-augmented
    (eval transform); ``test`` is the official test split (``val/`` for imagefolder). ``split_seed`` also seeds
    the in-memory augmentation.

    * ``fashion_mnist``: from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
      overridable by ``$ATTENTIVE_FASHION_MNIST_DIR``), else raw files under ``root``, else torchvision download.
      ``basic`` = 2-pixel pad crop + horizontal flip.
    * ``cifar10``: torchvision CIFAR10 under ``root``; ``basic`` = 4-pixel pad crop + horizontal flip.
    * ``imagefolder``: ``root/train`` and ``root/val`` class folders, timm transforms at ``image_size`` (required);
      ``autoaugment`` adds RandAugment ``rand-m9-mstd0.5``.
    * ``synthetic``: deterministic random data (class patterns + noise) for unit tests and speed benchmarks only;
      ``image_size`` defaults to 28.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if augment not in AUGMENTATIONS:
        raise ValueError(f"unknown augment {augment!r}; allowed: {', '.join(AUGMENTATIONS)}")
    if not 0 < holdout_fraction <= 0.5:
        raise ValueError(f"holdout_fraction must be in (0, 0.5], got {holdout_fraction}")
    root = Path(root)

    if name == "imagefolder":
        if image_size is None:
            raise ValueError("image_size is required for imagefolder")
        return _imagefolder_splits(root, image_size, augment, holdout_fraction, split_seed)

    if name == "synthetic":
        tensors = _make_synthetic(synthetic_num_train, synthetic_num_test, num_classes_synthetic, image_size or 28)
        stats, pad, num_classes = (SYNTHETIC_MEAN, SYNTHETIC_STD), 2, num_classes_synthetic
    elif name == "fashion_mnist":
        tensors = _load_fashion_mnist(root)
        stats, pad, num_classes = (FASHION_MNIST_MEAN, FASHION_MNIST_STD), 2, 10
    else:
        tensors = _load_cifar10(root)
        stats, pad, num_classes = (CIFAR10_MEAN, CIFAR10_STD), 4, 10

    native_size = tensors[0].shape[-1]
    if image_size is not None and image_size != native_size:
        raise ValueError(f"{name} images are {native_size}px; got image_size={image_size} "
                         f"(resize batches to the sampled resolution in the trainer instead)")
    return _in_memory_splits(name, *tensors, mean=stats[0], std=stats[1], pad=pad, augment=augment,
                             holdout_fraction=holdout_fraction, split_seed=split_seed, num_classes=num_classes)


# Keys of a config's data section that decide the splits; the others (batch sizes, workers) only feed loaders.
SPLIT_KEYS = ("name", "root", "image_size", "augment", "holdout_fraction", "split_seed", "synthetic_num_train",
              "synthetic_num_test")


def datasets_from_config(
    data_cfg: Mapping[str, Any], num_classes: int | None = None, root: str | Path | None = None
) -> DataSplits:
    """The splits of a training run, from the ``data`` section of its resolved config (``cfg["data"]``, also
    stored in every checkpoint): the trainer builds its data with this, so a rebuild anywhere else gives the same
    training, held-out and test images.

    Keys missing from ``data_cfg`` (a checkpoint written before they existed) take `build_datasets`' defaults and
    `DEFAULT_ROOT`, which are the training config's defaults too (tests/test_config.py checks that they agree);
    keys that do not shape the splits are ignored. ``num_classes`` is the class count of the ``synthetic`` dataset
    (the trainer passes the space's; default 10); real datasets have their own. ``root`` overrides ``data_cfg["root"]`` (data moved since training).
    """
    if not isinstance(data_cfg, Mapping):
        raise TypeError(f"data_cfg must be the 'data' section of a training config (a dict), "
                        f"got {type(data_cfg).__name__}")
    if "name" not in data_cfg:
        raise ValueError(f"the data config has no 'name' (one of {', '.join(DATASETS)}); keys present: "
                         f"{', '.join(sorted(map(str, data_cfg))) or 'none'}")
    options = {k: data_cfg[k] for k in SPLIT_KEYS if k in data_cfg and k not in ("name", "root")}
    synthetic_classes = {} if num_classes is None else {"num_classes_synthetic": num_classes}
    return build_datasets(data_cfg["name"], data_cfg.get("root", DEFAULT_ROOT) if root is None else root,
                          **options, **synthetic_classes)


# ---------------------------------------------------------------------------------------------------------------
# Loaders


class EpochRandomSampler(Sampler[int]):
    """Shuffles with ``Generator(seed + epoch)``, drawn afresh at every iteration: the order of epoch E is a pure
    function of (seed, E), untouched by the global RNG or by how often the loader was iterated before.
    ``skip`` drops the first samples of the epoch (resume mid-epoch)."""

    def __init__(self, data_source: Sequence, seed: int = 0) -> None:
        self.num_samples = len(data_source)
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        return iter(order[self.skip:].tolist())

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler whose ``set_epoch`` can also skip the first samples of this rank's shard."""

    skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    num_workers: int = 0,
    distributed: bool = False,
    drop_last: bool | None = None,
) -> DataLoader:
    """Shuffled (train) or sequential (eval) loader; ``drop_last`` defaults to ``train``.

    Call ``set_loader_epoch`` before each epoch. Workers are not persistent so that they pick up the dataset's
    epoch. With ``distributed`` and ``train=False`` DistributedSampler pads the last shard with repeated samples
    unless ``drop_last`` is set.
    """
    drop_last = train if drop_last is None else drop_last
    if distributed:
        sampler: Sampler = ResumableDistributedSampler(dataset, shuffle=train, seed=seed, drop_last=drop_last)
    elif train:
        sampler = EpochRandomSampler(dataset, seed=seed)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        # The loader draws worker base seeds from this generator; without one it would consume the global RNG.
        generator=torch.Generator().manual_seed(seed),
    )


def set_loader_epoch(loader: DataLoader, epoch: int, *, skip_batches: int = 0) -> None:
    """Make the next pass over ``loader`` epoch ``epoch``: order from (seed, epoch), dataset augmentation epoch,
    and worker seeds. ``skip_batches=k`` starts the pass at batch k of that epoch (resume) without loading the
    skipped samples; ``len(loader)`` then counts only the remaining batches."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch, skip=skip_batches * loader.batch_size)
        loader.generator.manual_seed(sampler.seed + epoch)
    elif skip_batches:
        raise ValueError("skip_batches needs a loader from build_loader(train=True) or distributed=True")
    dataset = loader.dataset
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)


# BN recalibration before measuring a subnet: the search's candidates and exports, and the predictor's labels,
# measured alike by default (labels measured otherwise than the search measures cost the demo's exports 0.36
# test points: docs/results.md, "The predictor's labels").
DEFAULT_CALIB_BATCHES = 16


def default_calib_batch_size(data_cfg: Mapping[str, Any]) -> int:
    """Images per calibration batch unless given: the training batch size of the data config, else 128."""
    return int(data_cfg.get("batch_size") or 128)


def calibration_batches(splits: DataSplits, batch_size: int, num_batches: int, seed: int = 0) -> list[Tensor]:
    """``num_batches`` image batches (no labels) for BN recalibration, drawn from the un-augmented training
    images ``splits.train_plain`` by a seeded permutation (repeated if the split is smaller than the request):
    the same images for the same seed.

    Takes the whole ``DataSplits`` rather than a dataset so that augmented images (``splits.train``) cannot reach
    BN statistics by mistake: they would bias every recalibrated accuracy.
    """
    if not isinstance(splits, DataSplits):
        raise TypeError(f"calibration_batches takes the DataSplits from datasets_from_config or build_datasets "
                        f"(it draws from their un-augmented train_plain), got {type(splits).__name__}")
    if batch_size < 1 or num_batches < 1:
        raise ValueError(f"batch_size and num_batches must be >= 1, got {batch_size} and {num_batches}")
    dataset = splits.train_plain
    g = torch.Generator().manual_seed(seed)
    needed = batch_size * num_batches
    order = torch.cat([torch.randperm(len(dataset), generator=g) for _ in range(-(-needed // len(dataset)))])
    order = order[:needed].tolist()
    return [torch.stack([dataset[i][0] for i in order[b * batch_size:(b + 1) * batch_size]])
            for b in range(num_batches)]
