"""BatchNorm recalibration: weight-shared BN statistics are meaningless for any one subnet, so before a subnet
is evaluated its statistics are recomputed on training images (cumulative average over a few batches)."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
import torch.nn as nn


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextlib.contextmanager
def bn_calibration(model: nn.Module) -> Iterator[nn.Module]:
    """Inside: BN layers reset and accumulate a cumulative average in train mode; everything else is in eval
    mode (no dropout, no drop-connect). On exit the model's modes and BN momenta are restored."""
    was_training = {m: m.training for m in model.modules()}
    bns = _batchnorms(model)
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the calibration batches
        bn.train()
    try:
        yield model
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        for m, mode in was_training.items():
            m.training = mode


@contextlib.contextmanager
def preserved_bn_state(model: nn.Module) -> Iterator[nn.Module]:
    """Forward passes inside (candidate scoring, measuring subnets, probes) leave every BN running statistic and
    counter, and every module's train/eval mode, as they were on entry."""
    was_training = {m: m.training for m in model.modules()}
    bufs = [b for bn in _batchnorms(model) for b in bn.buffers()]
    saved = [b.detach().clone() for b in bufs]
    try:
        yield model
    finally:
        with torch.no_grad():
            for b, s in zip(bufs, saved):
                b.copy_(s)
        for m, mode in was_training.items():
            m.training = mode


@torch.no_grad()
def calibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor], device: torch.device | str | None = None,
                 channels_last: bool = False) -> int:
    """Recompute BN statistics of `model` (a supernet with its arch set, or a static net) over `batches`
    (image tensors, or (images, labels) tuples). Returns the number of images seen."""
    seen = 0
    with bn_calibration(model):
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if device is not None:
                x = x.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            model(x)
            seen += x.shape[0]
    if seen == 0:
        raise ValueError("calibrate_bn got no batches")
    return seen
