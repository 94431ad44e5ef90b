"""Top-1 evaluation of static nets and of subnets inside the supernet (after BN recalibration): the one copy,
used by the trainer (which sums the counts over ranks), the search, the exports and the benches."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn as nn

from .calibration import calibrate_bn
from .space import Arch

# (correct, total) of this process -> (correct, total) of the whole evaluation (e.g. summed over ranks)
CountReducer = Callable[[int, int], "tuple[float, float]"]


def amp_autocast(device_type: str, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes (training and evaluation alike): `amp_dtype` None means full precision."""
    return torch.autocast(device_type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)


@torch.no_grad()
def correct_per_image(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                      channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Whether `model` (in eval mode) gets each image of `loader` of (images, labels) right: a bool tensor on the
    CPU, in the loader's order; modes restored. Two nets' vectors on the same loader give paired comparisons."""
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    was_training = model.training
    model.eval()
    hits = []
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with amp_autocast(device.type, amp_dtype):
                logits = model(images)
            hits.append((logits.argmax(1) == labels).cpu())
    finally:
        model.train(was_training)
    return torch.cat(hits) if hits else torch.zeros(0, dtype=torch.bool)


def count_correct(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
                  channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> tuple[int, int]:
    """(top-1 correct, images) of `model` in eval mode over `loader` of (images, labels); modes restored."""
    hits = correct_per_image(model, loader, device, channels_last, amp_dtype)
    return int(hits.sum()), hits.numel()


def percent(correct: float, total: float) -> float:
    """100 * correct / total; ValueError for no images."""
    if total == 0:
        raise ValueError("accuracy: the loader yielded no images")
    return 100.0 * correct / total


def accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
             channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> float:
    """Top-1 accuracy (%) of `model` in eval mode over `loader` of (images, labels)."""
    return percent(*count_correct(model, loader, device, channels_last, amp_dtype))


def evaluate_arch(supernet: nn.Module, arch: Arch, calib_batches: Iterable, loader: Iterable,
                  device: torch.device | str = "cpu", channels_last: bool = False,
                  amp_dtype: torch.dtype | None = None, reduce_counts: CountReducer | None = None) -> float:
    """Activate `arch`, recalibrate its BN statistics on `calib_batches`, return its top-1 (%) on `loader`.

    `reduce_counts` combines this process's (correct, total) with the other processes' (the trainer sums them
    over ranks, each rank holding a shard of `loader`'s split)."""
    correct, total = count_correct(calibrated(supernet, arch, calib_batches, device, channels_last, amp_dtype),
                                   loader, device, channels_last, amp_dtype)
    if reduce_counts is not None:
        correct, total = reduce_counts(correct, total)
    return percent(correct, total)


def calibrated(supernet: nn.Module, arch: Arch, calib_batches: Iterable, device: torch.device | str = "cpu",
               channels_last: bool = False, amp_dtype: torch.dtype | None = None) -> nn.Module:
    """`supernet` with `arch` active and its BN statistics recalibrated on `calib_batches`, ready to evaluate."""
    supernet.set_arch(arch)
    with amp_autocast(torch.device(device).type, amp_dtype):
        calibrate_bn(supernet, calib_batches, device, channels_last)
    return supernet
