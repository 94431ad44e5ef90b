"""One sandwich step (the sandwich rule with in-place distillation), free of the training loop's bookkeeping.

1. the largest subnet, regularized (dropout, drop-connect), cross-entropy with label smoothing against the
   labels; its detached logits are the teacher;
2. the middle subnets, then the smallest, each distilled towards the teacher (KL), or with `inplace_distill=False`
   learning the labels as the largest does (better on short schedules: docs/results.md);

gradients accumulate over the subnets, are averaged over ranks once (with the losses, so every rank reaches the
same finiteness verdict), clipped once, and the optimizer steps once. Which archs to run is the caller's choice
(the trainer draws them from its samplers); the learning-rate schedule and the step counter are the caller's too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .distributed import DistEnv, all_reduce_gradients
from .evaluate import amp_autocast
from .space import Arch


class NonFiniteLossError(RuntimeError):
    """A subnet's loss was NaN or infinite: training stops, the last good checkpoint stays."""

    def __init__(self, step: int, epoch: int, arch: Arch, role: str, loss: float) -> None:
        self.step, self.epoch, self.arch, self.role, self.loss = step, epoch, arch, role, loss
        super().__init__(f"non-finite loss {loss} at step {step} (epoch {epoch}) for the {role} subnet {arch}; "
                         f"stopped before the optimizer step, the last good checkpoint is kept")


@dataclass
class StepOutput:
    losses: list[float]  # per subnet, averaged over ranks: [largest (CE), sampled... (KL), smallest (KL)]
    archs: list[Arch]  # [largest, sampled..., smallest]
    lr: float  # the learning rate this step was taken with


@dataclass(frozen=True)
class SandwichOptions:
    """The `train` section's settings that shape one step."""

    dropout: float = 0.0  # the largest subnet only
    drop_connect: float = 0.0  # the largest subnet only
    drop_connect_last_stages: int | None = None
    inplace_distill: bool = True  # False: every subnet learns from the labels (cross-entropy)
    clip_grad_value: float | None = None

    @classmethod
    def from_config(cls, train_cfg: dict[str, Any]) -> "SandwichOptions":
        return cls(dropout=train_cfg["dropout"], drop_connect=train_cfg["drop_connect"],
                   drop_connect_last_stages=train_cfg["drop_connect_last_stages"],
                   inplace_distill=train_cfg["inplace_distill"], clip_grad_value=train_cfg["clip_grad_value"])


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per sample, batch mean: in-place distillation towards the soft targets (same
    gradient as AttentiveNAS's soft cross-entropy)."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1),
                    reduction="batchmean", log_target=True)


def _role(i: int, n: int) -> str:
    return "largest" if i == 0 else "smallest" if i == n - 1 else f"sampled #{i}"


def sandwich_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, archs: Sequence[Arch],
                  criterion: nn.Module, optimizer: torch.optim.Optimizer, options: SandwichOptions,
                  env: DistEnv | None = None, amp_dtype: torch.dtype | None = None,
                  scaler: torch.amp.GradScaler | None = None, step: int = 1, epoch: int = 0) -> StepOutput:
    """One sandwich step of `model` (a Supernet) on a batch already on its device: `archs` = [largest,
    middle..., smallest]. The largest learns from the labels, the others from its detached logits.

    Raises `NonFiniteLossError` (naming `step` and `epoch`, the 1-based step being taken and its epoch) before
    the update when any subnet's loss, averaged over ranks, is not finite."""
    if len(archs) < 2:
        raise ValueError(f"a sandwich step needs at least the largest and the smallest subnet, got {len(archs)} archs")
    model.train()
    optimizer.zero_grad(set_to_none=False)  # zeros, not None: every rank reduces every gradient
    device_type = images.device.type

    def backward(loss: torch.Tensor) -> None:
        (scaler.scale(loss) if scaler is not None else loss).backward()

    losses: list[torch.Tensor] = []
    model.set_arch(archs[0])
    with amp_autocast(device_type, amp_dtype), model.regularization(options.dropout, options.drop_connect,
                                                                     options.drop_connect_last_stages):
        logits = model(images)
    loss = criterion(logits.float(), labels)
    backward(loss)
    losses.append(loss.detach())
    teacher = logits.detach().float()

    for arch in archs[1:]:
        model.set_arch(arch)
        with amp_autocast(device_type, amp_dtype):
            logits = model(images)
        loss = distill_loss(logits.float(), teacher) if options.inplace_distill else criterion(logits.float(), labels)
        backward(loss)
        losses.append(loss.detach())

    # One reduction: gradients and the losses (so every rank sees the same finiteness verdict).
    values = all_reduce_gradients(model.parameters(), env, torch.stack(losses).float()).tolist()
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        i = bad[0]
        raise NonFiniteLossError(step, epoch, archs[i], _role(i, len(archs)), values[i])
    if scaler is not None:
        scaler.unscale_(optimizer)
    if options.clip_grad_value is not None:
        nn.utils.clip_grad_value_(model.parameters(), options.clip_grad_value)
    lr = optimizer.param_groups[0]["lr"]
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepOutput(values, list(archs), lr)
