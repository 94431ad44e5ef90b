"""`attentive.depthwise`: the weight gradient by taps equals oneDNN's (to float rounding), the forward and the
input gradient are oneDNN's bit for bit, and the taps are used exactly where oneDNN is slow."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from attentive.depthwise import depthwise_conv2d, tap_weight_grad, tap_weight_grad_of, uses_tap_weight_grad
from attentive.layers import DynamicConv2d


def _reference_grads(x, w, g, padding):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    y = F.conv2d(x, w, None, 1, padding, 1, w.shape[0])
    return (y, *torch.autograd.grad(y, (x, w), g))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("height,width,kernel", [(4, 4, 5), (3, 3, 5), (3, 5, 5), (1, 1, 3), (2, 2, 5),
                                                 (1, 4, 5), (4, 4, 7), (6, 6, 7), (2, 2, 7)])
def test_tap_gradient_equals_onednn(height, width, kernel, channels_last):
    gen = torch.Generator().manual_seed(height * 10 + kernel)
    x = torch.randn(5, 6, height, width, generator=gen)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(6, 1, kernel, kernel, generator=gen).requires_grad_()
    g = torch.randn(5, 6, height, width, generator=gen)
    assert uses_tap_weight_grad(x, w, 1, kernel // 2)
    xr = x.detach().requires_grad_()
    y = depthwise_conv2d(xr, w, None, 1, kernel // 2)
    grad_x, grad_w = torch.autograd.grad(y, (xr, w), g)
    ref_y, ref_x, ref_w = _reference_grads(x, w, g, kernel // 2)
    assert torch.equal(y, ref_y) and torch.equal(grad_x, ref_x)  # oneDNN's own forward and input gradient
    assert grad_w.shape == ref_w.shape
    torch.testing.assert_close(grad_w, ref_w, rtol=1e-5, atol=1e-5)
    # the taps by hand for one channel: tap (i, j) pairs input pixel (h + i - p, w + j - p) with output (h, w)
    p = kernel // 2
    xp = F.pad(x[:, 0], (p, p, p, p))
    by_hand = torch.stack([torch.stack([(xp[:, i:i + height, j:j + width] * g[:, 0]).sum() for j in range(kernel)])
                           for i in range(kernel)])
    torch.testing.assert_close(grad_w[0, 0], by_hand, rtol=1e-5, atol=1e-5)


def test_taps_that_see_only_padding_are_zero():
    x, g = torch.randn(2, 3, 1, 1), torch.randn(2, 3, 1, 1)
    grad = tap_weight_grad_of(x, g, 5)
    assert torch.equal(grad[:, 0, 2, 2], (x * g).sum((0, 2, 3)))
    grad[:, 0, 2, 2] = 0
    assert torch.count_nonzero(grad) == 0


def _dw(side: int, kernel: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(2, 4, side, side, **kw), torch.randn(4, 1, kernel, kernel, requires_grad=True)


def test_taps_only_where_onednn_is_slow():
    x, w = _dw(4, 5)
    assert uses_tap_weight_grad(x, w, 1, 2)
    assert not uses_tap_weight_grad(*_dw(5, 5), 1, 2)  # map as large as the kernel: oneDNN's fast path
    assert not uses_tap_weight_grad(*_dw(7, 5), 1, 2)
    assert not uses_tap_weight_grad(x, w, 2, 2)  # strided
    assert not uses_tap_weight_grad(x, w.detach(), 1, 2)  # no weight gradient wanted
    with torch.no_grad():
        assert not uses_tap_weight_grad(x, w, 1, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_tap_weight_grad(x, w, 1, 2)
    with tap_weight_grad(False):
        assert not uses_tap_weight_grad(x, w, 1, 2)
        with tap_weight_grad(True):
            assert uses_tap_weight_grad(x, w, 1, 2)
        assert not uses_tap_weight_grad(x, w, 1, 2)
    assert uses_tap_weight_grad(x, w, 1, 2)
    assert not uses_tap_weight_grad(x.double(), w.double().detach().requires_grad_(), 1, 2)


def test_dynamic_depthwise_conv_uses_taps_and_matches_its_static_twin():
    conv = DynamicConv2d(8, 8, (3, 5), depthwise=True)
    conv.set_active(6, 6, 5)
    x = torch.randn(3, 6, 4, 4)
    y = conv(x)
    assert type(y.grad_fn).__name__ == "_TapDepthwiseConv2dBackward"
    y.square().sum().backward()
    static = conv.to_static()
    static(x).square().sum().backward()
    assert torch.equal(conv(x), static(x))
    torch.testing.assert_close(conv.weight.grad[:6], static.weight.grad, rtol=1e-5, atol=1e-5)
    assert torch.count_nonzero(conv.weight.grad[6:]) == 0
    conv.set_active(6, 6, 3)  # a 3x3 kernel is smaller than the map: oneDNN's convolution
    assert type(conv(x).grad_fn).__name__ != "_TapDepthwiseConv2dBackward"


def test_double_backward_is_refused():
    x, w = _dw(4, 5)
    x.requires_grad_()
    y = depthwise_conv2d(x, w, None, 1, 2)
    with pytest.raises(RuntimeError, match="create_graph=True"):
        torch.autograd.grad(y.sum(), x, create_graph=True)
