"""Weight-sharing dynamic layers.

Each layer allocates its largest weight once; a subnet uses the leading `[:out, :in]` slice, and a smaller
depthwise kernel is cut from the centre of the largest (as in OFA). The active size is set by the supernet
before the forward pass (`set_active`), so `forward` does no bookkeeping of its own. When the active size is
the full size, the parameter itself is used; a smaller slice goes through `sliced_parameters`, whose backward adds
the slice's gradient into `param.grad` in place instead of scattering it into a zero tensor of the full size
(see its docstring for what that changes for callers of `torch.autograd.grad`). The supernet takes all its
layers' slices in one such call per forward (`slices_taken`); a layer used on its own slices its parameters
itself. Every dynamic layer can hand back its static twin (`to_static`) with copied weights (allocated without
an initialization that the copy would overwrite).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_act_layer
from torch.nn.utils import skip_init

from .depthwise import depthwise_conv2d

# Our YAML names -> timm's activation names.
_TIMM_ACT = {"relu": "relu", "relu6": "relu6", "swish": "swish", "hswish": "hard_swish", "gelu": "gelu"}


Index = tuple[slice, ...]
Slice = tuple[nn.Parameter, Index, bool]  # (parameter, index, dense)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """`t` when its memory is dense in the standard or channels-last layout, else a copy in the layout its
    strides suggest (what a convolution's own `.contiguous(suggested format)` would make)."""
    if t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)):
        return t
    return t.clone(memory_format=torch.preserve_format)


def _take(slices: tuple[Slice, ...]) -> tuple[torch.Tensor, ...]:
    taken = []  # a loop, not a generator: this runs for every layer of every forward
    for param, index, dense in slices:
        taken.append(_dense(param[index]) if dense else param[index])
    return tuple(taken)


class _SliceIntoGrad(torch.autograd.Function):
    """The slices of `sliced_parameters`; backward accumulates into each `param.grad[index]` in place."""

    @staticmethod
    def forward(ctx, slices: tuple[Slice, ...], *params: nn.Parameter) -> tuple[torch.Tensor, ...]:  # noqa: ANN001
        ctx.slices = slices  # `params` are `slices`' parameters, passed for autograd to record them as inputs
        ctx.set_materialize_grads(False)
        return _take(slices)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple[None, ...]:  # noqa: ANN001 (autograd's ctx)
        if torch.is_grad_enabled():
            raise RuntimeError("backward with create_graph=True through a sliced supernet parameter is not "
                               "supported (attentive.layers.sliced_parameters accumulates plain gradients)")
        for (param, index, _), grad in zip(ctx.slices, grads):
            if grad is None or not param.requires_grad:
                continue
            accumulated = param.grad
            if accumulated is None:
                # What autograd would store: the slice's gradient, copied (signed zeros kept), zeros elsewhere.
                full = torch.zeros_like(param, memory_format=torch.preserve_format)
                full[index].copy_(grad)
                param.grad = full
            else:
                accumulated[index].add_(grad)  # = autograd's `grad + (zeros with grad in the slice)`, slice only
        return (None,) * (len(grads) + 1)


def sliced_parameters(*slices: Slice) -> tuple[torch.Tensor, ...]:
    """`param[index]` for each `(param, index, dense)` (leading channels, a centred kernel crop), for a forward
    pass, without the full-size gradient that plain slicing costs in backward. The one way layers slice a
    parameter; a layer passes all of its sliced parameters in one call (one autograd node instead of several).

    Plain slicing's backward writes the slice's gradient into a new zero tensor the size of the whole parameter,
    which autograd then adds into `.grad`: two full-size passes per sliced parameter and step, whatever the
    subnet's size. Here the backward adds the slice's gradient into `param.grad[index]` in place (allocating
    `param.grad` as zeros the first time, as autograd would), and hands autograd no gradient for `param`. The
    resulting `.grad` is the same, bit for bit: a backward adds each parameter's gradient once, and no layer
    slices a parameter twice in one forward (tests/test_slicing.py checks both). The one conceivable difference:
    outside the slice an existing `-0.0` would stay `-0.0`, where autograd's `-0.0 + 0.0` made it `+0.0` (equal
    under `==`; the tests found no negative zero in any gradient).

    `dense=True` returns a dense copy (in the parameter's memory format, channels-last included) when the slice
    is not dense: for convolutions, which otherwise copy a strided weight themselves, in forward and again in
    backward (same values in the same layout, so the same results).

    The gradient reaches `param.grad` only: `torch.autograd.grad(loss, [param])`, `backward(inputs=...)` and
    tensor hooks on `param` do not see it, and `create_graph=True` is refused. Nothing here uses those on a
    supernet (the proxies differentiate static nets). Without autograd recording (no_grad, inference, frozen
    parameters) this is plain slicing.
    """
    if not torch.is_grad_enabled() or not any(param.requires_grad for param, _, _ in slices):
        return _take(slices)
    return _SliceIntoGrad.apply(slices, *(param for param, _, _ in slices))


class SlicedLayer:
    """A dynamic layer whose active parameters may be slices: `param_slices()` names them (empty at full size),
    `active_slices()` gives them, taken by `slices_taken` for the next forward or else sliced on the spot."""

    _full: bool
    taken_slices: tuple[torch.Tensor, ...] | None = None

    def param_slices(self) -> tuple[Slice, ...]:
        raise NotImplementedError

    def active_slices(self) -> tuple[torch.Tensor, ...]:
        taken = self.taken_slices
        return taken if taken is not None else sliced_parameters(*self.param_slices())


@contextlib.contextmanager
def slices_taken(layers: Sequence[SlicedLayer]) -> Iterator[None]:
    """Within the block, `layers` use slices of their parameters taken in one `sliced_parameters` call: one
    autograd node, one Python call in forward and one in backward for the whole net instead of one per layer
    (each cost ~20 us in a training step, cache-cold between the kernels: a few % of a small subnet's step).
    The slices' gradients then reach `.grad` at the end of the backward instead of layer by layer."""
    layers = [layer for layer in layers if not layer._full]
    per_layer = [layer.param_slices() for layer in layers]
    taken = sliced_parameters(*[s for slices in per_layer for s in slices])
    # object.__setattr__: nn.Module.__setattr__ first checks whether the value is a parameter, buffer or submodule
    # (~4 us a call; 1 ms per forward of an ImageNet subnet, setting and clearing 130 layers); a tuple is none of them.
    start = 0
    for layer, slices in zip(layers, per_layer):
        object.__setattr__(layer, "taken_slices", taken[start:start + len(slices)])
        start += len(slices)
    try:
        yield
    finally:
        for layer in layers:
            object.__setattr__(layer, "taken_slices", None)  # the slices belong to this forward's graph only


def _centre(size: int, k: int) -> slice:
    """The centred `k` of `size` positions (a smaller kernel cut from the centre of a larger one)."""
    start = (size - k) // 2
    return slice(start, start + k)


def act_layer(name: str) -> Callable[..., nn.Module]:
    """Activation class looked up by name (timm's registry)."""
    if name not in _TIMM_ACT:
        raise ValueError(f"unknown activation {name!r}; allowed: {sorted(_TIMM_ACT)}")
    return get_act_layer(_TIMM_ACT[name])


class DynamicConv2d(SlicedLayer, nn.Module):
    """Conv with elastic in/out channels and, for depthwise convs, an elastic kernel cut from the centre."""

    def __init__(
        self,
        max_in_chs: int,
        max_out_chs: int,
        kernel_sizes: tuple[int, ...] | int = 1,
        stride: int = 1,
        depthwise: bool = False,
        bias: bool = False,
        kernel_transform: bool = False,
    ) -> None:
        super().__init__()
        self.kernel_sizes = tuple(sorted({kernel_sizes} if isinstance(kernel_sizes, int) else set(kernel_sizes)))
        self.max_kernel = self.kernel_sizes[-1]
        if depthwise and max_in_chs != max_out_chs:
            raise ValueError("a depthwise conv needs max_in_chs == max_out_chs")
        self.max_in_chs = max_in_chs
        self.max_out_chs = max_out_chs
        self.stride = stride
        self.depthwise = depthwise
        in_per_group = 1 if depthwise else max_in_chs
        self.weight = nn.Parameter(torch.empty(max_out_chs, in_per_group, self.max_kernel, self.max_kernel))
        self.bias = nn.Parameter(torch.zeros(max_out_chs)) if bias else None
        nn.init.kaiming_normal_(self.weight, mode="fan_out")
        # OFA's kernel transformation matrices: a smaller kernel is a learned linear map (shared by all channels,
        # identity at init) of the centre of the next larger one, so it need not equal the larger kernel's centre.
        self.kernel_transforms = nn.ParameterDict({
            str(k): nn.Parameter(torch.eye(k * k)) for k in self.kernel_sizes[:-1]} if kernel_transform else {})
        self.set_active(max_in_chs, max_out_chs, self.max_kernel)

    def set_active(self, in_chs: int, out_chs: int, kernel_size: int | None = None) -> None:
        kernel_size = self.max_kernel if kernel_size is None else kernel_size
        if kernel_size not in self.kernel_sizes:
            raise ValueError(f"kernel size {kernel_size} not in {self.kernel_sizes}")
        if self.depthwise and in_chs != out_chs:
            raise ValueError("a depthwise conv keeps its channel count")
        self.in_chs, self.out_chs, self.kernel_size = in_chs, out_chs, kernel_size
        self.padding = kernel_size // 2
        self.groups = in_chs if self.depthwise else 1
        self._full = (out_chs == self.max_out_chs and (self.depthwise or in_chs == self.max_in_chs)
                      and kernel_size == self.max_kernel)
        # With kernel transforms a smaller kernel is the chain max -> ... -> kernel_size (7 -> 5 -> 3, as OFA
        # chains them): each step crops the centre of the previous kernel, then applies that size's matrix.
        self._transform_chain = tuple(k for k in reversed(self.kernel_sizes[:-1]) if k >= kernel_size) \
            if self.kernel_transforms and kernel_size != self.max_kernel else ()
        first_kernel = self._transform_chain[0] if self._transform_chain else kernel_size
        self._weight_index = (slice(0, out_chs), slice(None) if self.depthwise else slice(0, in_chs),
                              *[_centre(self.max_kernel, first_kernel)] * 2)

    def param_slices(self) -> tuple[Slice, ...]:
        if self._full:
            return ()
        weight = (self.weight, self._weight_index, True)
        return (weight,) if self.bias is None else (weight, (self.bias, self._weight_index[:1], False))

    def active_params(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The active weight and bias (None without bias); the parameters themselves at full size."""
        if self._full:
            return self.weight, self.bias
        if self.bias is None:
            (w,), b = self.active_slices(), None
        else:
            w, b = self.active_slices()
        for k in self._transform_chain:
            if w.shape[-1] != k:
                crop = _centre(w.shape[-1], k)
                w = w[:, :, crop, crop]
            w = (w.reshape(-1, k * k) @ self.kernel_transforms[str(k)]).reshape(w.shape[0], w.shape[1], k, k)
        return w, b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.active_params()
        if self.depthwise:  # its weight gradient avoids oneDNN's slow path on maps smaller than the kernel
            return depthwise_conv2d(x, weight, bias, self.stride, self.padding)
        return F.conv2d(x, weight, bias, self.stride, self.padding, 1, self.groups)

    @torch.no_grad()
    def to_static(self) -> nn.Conv2d:
        conv = skip_init(nn.Conv2d, self.in_chs, self.out_chs, self.kernel_size, self.stride, self.padding,
                         groups=self.groups, bias=self.bias is not None, device=self.weight.device,
                         dtype=self.weight.dtype)
        weight, bias = self.active_params()
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
        return conv


class DynamicBatchNorm2d(SlicedLayer, nn.BatchNorm2d):
    """BatchNorm over the first `num_active` channels; affine params and running stats are sliced alike."""

    def __init__(self, max_features: int, eps: float = 1e-5, momentum: float | None = 0.1) -> None:
        super().__init__(max_features, eps=eps, momentum=momentum)
        self.set_active(max_features)

    def set_active(self, num_features: int) -> None:
        self.active_features = num_features
        self._full = num_features == self.num_features

    def param_slices(self) -> tuple[Slice, ...]:
        if self._full:
            return ()
        index = (slice(0, self.active_features),)
        return (self.weight, index, False), (self.bias, index, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._full:
            return super().forward(x)
        c = self.active_features
        use_batch_stats = self.training or self.running_mean is None
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        weight, bias = self.active_slices()
        return F.batch_norm(x, self.running_mean[:c], self.running_var[:c], weight, bias, use_batch_stats, factor,
                            self.eps)

    @torch.no_grad()
    def to_static(self) -> nn.BatchNorm2d:
        c = self.active_features
        bn = skip_init(nn.BatchNorm2d, c, eps=self.eps, momentum=self.momentum, device=self.weight.device,
                       dtype=self.weight.dtype)
        bn.weight.copy_(self.weight[:c])
        bn.bias.copy_(self.bias[:c])
        bn.running_mean.copy_(self.running_mean[:c])
        bn.running_var.copy_(self.running_var[:c])
        bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn


class DynamicLinear(SlicedLayer, nn.Module):
    """Linear layer with elastic input features (the output, the class count, is fixed)."""

    def __init__(self, max_in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.max_in_features = max_in_features
        self.out_features = out_features
        ref = nn.Linear(max_in_features, out_features, bias=bias)
        self.weight = nn.Parameter(ref.weight.detach().clone())
        self.bias = nn.Parameter(ref.bias.detach().clone()) if bias else None
        self.set_active(max_in_features)

    def set_active(self, in_features: int) -> None:
        self.in_features = in_features
        self._full = in_features == self.max_in_features

    def param_slices(self) -> tuple[Slice, ...]:
        return () if self._full else ((self.weight, (slice(None), slice(0, self.in_features)), False),)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._full:
            return F.linear(x, self.weight, self.bias)
        (weight,) = self.active_slices()
        return F.linear(x, weight, self.bias)

    @torch.no_grad()
    def to_static(self) -> nn.Linear:
        lin = skip_init(nn.Linear, self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        lin.weight.copy_(self.weight[:, : self.in_features])
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin


class DynamicSqueezeExcite(nn.Module):
    """Squeeze-and-excite as in AttentiveNAS: mean pool, 1x1 reduce (+bias), ReLU, 1x1 expand (+bias), hard sigmoid."""

    def __init__(self, max_chs: int, max_rd_chs: int) -> None:
        super().__init__()
        self.conv_reduce = DynamicConv2d(max_chs, max_rd_chs, 1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = DynamicConv2d(max_rd_chs, max_chs, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def set_active(self, chs: int, rd_chs: int) -> None:
        self.conv_reduce.set_active(chs, rd_chs)
        self.conv_expand.set_active(rd_chs, chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)

    def to_static(self) -> "SqueezeExcite":
        return SqueezeExcite(self.conv_reduce.to_static(), self.conv_expand.to_static())


class SqueezeExcite(nn.Module):
    """Static twin of `DynamicSqueezeExcite`, built from its two convs (`SqueezeExcite.fresh`: new ones)."""

    def __init__(self, conv_reduce: nn.Conv2d, conv_expand: nn.Conv2d) -> None:
        super().__init__()
        self.conv_reduce = conv_reduce
        self.act = nn.ReLU(inplace=True)
        self.conv_expand = conv_expand
        self.gate = nn.Hardsigmoid()

    @classmethod
    def fresh(cls, chs: int, rd_chs: int) -> "SqueezeExcite":
        return cls(nn.Conv2d(chs, rd_chs, 1, bias=True), nn.Conv2d(rd_chs, chs, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.conv_expand(self.act(self.conv_reduce(s)))
        return x * self.gate(s)


def pad_channels(x: torch.Tensor, out_chs: int, in_chs: int | None = None) -> torch.Tensor:
    """The parameter-free shortcut: the leading `out_chs` channels of `x`, zero-padded when `x` has fewer.
    `in_chs` (x's channel count, when the caller knows it) keeps the pad amounts constants in a traced or
    exported graph instead of values computed from `x.shape` at run time."""
    in_chs = x.shape[1] if in_chs is None else in_chs
    if out_chs <= in_chs:
        return x[:, :out_chs]
    return F.pad(x, (0, 0, 0, 0, 0, out_chs - in_chs))


class ChannelPad(nn.Module):
    """Static twin of the `channel_pad` shortcut (`pad_channels`); no parameters. Its channel counts are fixed,
    so an exported net pads by constants: read from the input's shape, the amounts cost onnxruntime a dozen
    shape ops per such block at every call (exported tiny-space nets ran 2-4% slower, docs/results.md)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.in_chs = in_chs
        self.out_chs = out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pad_channels(x, self.out_chs, self.in_chs)


def drop_connect(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Drop whole residual branches per sample (stochastic depth), keep-probability rescaled.

    The mask is drawn on the CPU from the supernet's own generator, so training randomness never touches
    the global RNG and resumes reproduce exactly; it is only a batch-sized vector, so the copy is negligible.
    """
    keep = 1.0 - rate
    mask = (torch.rand(x.shape[0], 1, 1, 1, generator=generator) < keep).to(x.device, x.dtype)
    return x * mask / keep


def dropout(x: torch.Tensor, rate: float, generator: torch.Generator | None) -> torch.Tensor:
    """Dropout with an explicit generator (see `drop_connect`)."""
    keep = 1.0 - rate
    mask = (torch.rand(x.shape, generator=generator) < keep).to(x.device, x.dtype)
    return x * mask / keep
