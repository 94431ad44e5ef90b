"""Top-1 evaluation of static nets and of subnets inside the supernet (after BN recalibration)."""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn as nn

from .calibration import calibrate_bn
from .space import Arch


@torch.no_grad()
def accuracy(model: nn.Module, loader: Iterable, device: torch.device | str = "cpu",
             channels_last: bool = False) -> float:
    """Top-1 accuracy (%) of `model` in eval mode over `loader` of (images, labels)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    try:
        for images, labels in loader:
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            correct += (model(images).argmax(1) == labels).sum().item()
            total += labels.numel()
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("accuracy: the loader yielded no images")
    return 100.0 * correct / total


def evaluate_arch(supernet: nn.Module, arch: Arch, calib_batches: Iterable, loader: Iterable,
                  device: torch.device | str = "cpu", channels_last: bool = False) -> float:
    """Activate `arch`, recalibrate its BN statistics on `calib_batches`, return its top-1 (%) on `loader`."""
    supernet.set_arch(arch)
    calibrate_bn(supernet, calib_batches, device, channels_last)
    return accuracy(supernet, loader, device, channels_last)
