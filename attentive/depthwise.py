"""Depthwise convolution whose weight gradient avoids oneDNN's slow path on small feature maps.

On the CPU, oneDNN computes the weight gradient of a depthwise convolution whose kernel is larger than its input
(the 5x5 kernels on the 4x4 and 3x3 maps of the tiny space's last stages) some 40x slower than the forward:
23 ms for a 128x384x4x4 batch on 2 cores, against 0.5 ms forward, 0.3 ms for the 3x3 kernel's gradient and
2.6 ms here (`python bench/depthwise_grad.py`). Those layers took a third of a demo training step.

`depthwise_conv2d` computes that gradient in plain PyTorch instead: for each kernel tap, one multiply-and-sum
over the region where the input and the output gradient overlap (padding contributes nothing). Forward and
input gradient are the usual oneDNN convolution, unchanged; the weight gradient equals oneDNN's up to float
rounding (summation order), so a training run's numbers differ from one without it in the last digits.
Everywhere else (GPU, autocast, strides, maps at least as large as the kernel, no gradient) it is `F.conv2d`.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch
import torch.nn.functional as F

_TAP_WEIGHT_GRAD = contextvars.ContextVar("attentive_tap_weight_grad", default=True)


@contextlib.contextmanager
def tap_weight_grad(enabled: bool) -> Iterator[None]:
    """Within the block, `depthwise_conv2d` uses the tap weight gradient (`enabled`, the default) or leaves every
    convolution to oneDNN (for comparisons: bench/depthwise_grad.py, tests)."""
    token = _TAP_WEIGHT_GRAD.set(enabled)
    try:
        yield
    finally:
        _TAP_WEIGHT_GRAD.reset(token)


def uses_tap_weight_grad(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> bool:
    """Whether `depthwise_conv2d` would compute this convolution's weight gradient by taps: a CPU float32
    training forward, stride 1, "same" padding, a kernel larger than the input's height or width."""
    kernel = weight.shape[-1]
    return (_TAP_WEIGHT_GRAD.get() and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.requires_grad and torch.is_grad_enabled() and not torch.is_autocast_enabled("cpu")
            and stride == 1 and padding == kernel // 2 and weight.shape[-2] == kernel and kernel % 2 == 1
            and kernel > min(x.shape[-2], x.shape[-1]))


def tap_weight_grad_of(x: torch.Tensor, grad_out: torch.Tensor, kernel: int) -> torch.Tensor:
    """The weight gradient `[C, 1, kernel, kernel]` of a stride-1, same-padded depthwise convolution of `x`
    `[N, C, H, W]` whose output gradient is `grad_out` (same shape): tap `(i, j)` sums `x * grad_out` over
    every position where the input pixel shifted by `(i - p, j - p)` exists (`p = kernel // 2`)."""
    x_nhwc, g_nhwc = x.permute(0, 2, 3, 1), grad_out.permute(0, 2, 3, 1)  # views: channels-last memory is NHWC
    _, height, width, chs = x_nhwc.shape
    pad = kernel // 2
    grad = x.new_zeros(kernel, kernel, chs)  # taps that see only padding stay zero
    for i in range(kernel):
        dy = i - pad
        rows = slice(max(0, -dy), min(height, height - dy))  # output rows whose input row exists
        if rows.start >= rows.stop:
            continue
        for j in range(kernel):
            dx = j - pad
            cols = slice(max(0, -dx), min(width, width - dx))
            if cols.start >= cols.stop:
                continue
            shifted = x_nhwc[:, rows.start + dy:rows.stop + dy, cols.start + dx:cols.stop + dx]
            torch.sum(shifted * g_nhwc[:, rows, cols], dim=(0, 1, 2), out=grad[i, j])
    return grad.permute(2, 0, 1).unsqueeze(1).contiguous()


class _TapDepthwiseConv2d(torch.autograd.Function):
    """F.conv2d forward and input gradient; the weight gradient by taps (`tap_weight_grad_of`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001 (autograd's ctx)
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, 1, weight.shape[-1] // 2, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # noqa: ANN001
        if torch.is_grad_enabled():
            raise RuntimeError("backward with create_graph=True through a depthwise supernet conv is not supported "
                               "(attentive.depthwise computes plain gradients; use the static net, to_static())")
        x, weight = ctx.saved_tensors
        kernel = weight.shape[-1]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [kernel // 2] * 2, [1, 1], False, [0, 0], weight.shape[0],
                [True, False, False])[0]
        grad_w = tap_weight_grad_of(x, grad_out, kernel) if ctx.needs_input_grad[1] else None
        return grad_x, grad_w


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: int,
                     padding: int) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride, padding, groups=C)` for a depthwise `weight` `[C, 1, k, k]`, with the
    weight gradient by taps where oneDNN's is slow (`uses_tap_weight_grad`; without bias only)."""
    if bias is None and uses_tap_weight_grad(x, weight, stride, padding):
        return _TapDepthwiseConv2d.apply(x, weight)
    return F.conv2d(x, weight, bias, stride, padding, 1, weight.shape[0])
