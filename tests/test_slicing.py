"""`attentive.layers.sliced_parameters`: the slice backward that adds into `param.grad` in place gives the very
gradients (bit for bit) that plain slicing gave, for every parameter, after one backward and after several
accumulated ones (the sandwich step), with `.grad` zeroed or set to None in between."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import attentive.layers as layers
from attentive import Arch, Supernet, load_space
from attentive.space import space_from_dict

from conftest import attentivenas_arch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _plain_slicing(*slices) -> tuple[torch.Tensor, ...]:
    """The reference: plain slicing as before `sliced_parameters` (a strided view, handed to the layer as it is),
    whose backward scatters into a full-size zero tensor."""
    return tuple(param[index] for param, index, _ in slices)


def _variant(name: str, **keys):
    data = dict(load_space(name).source)
    data.update(keys)
    return space_from_dict(data, where=f"{name}+{keys}")


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().view(torch.int32)


def _perturb(net: nn.Module, seed: int) -> None:
    """Non-trivial BN affine params and kernel transforms (identity at init would hide a wrong chain), blocks
    that are not identities (bn3 is zero-initialized)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and ".bn" in name or name.startswith(("stem_bn", "head_bn")):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))


def _archs(space) -> dict[str, Arch]:
    rng = np.random.default_rng(3)
    archs = {"max": space.max_arch(), "min": space.min_arch(), "middle": space.sample(rng),
             "middle2": space.sample(rng)}
    if space.name == "attentivenas":
        archs["A0"] = Arch.from_dict(attentivenas_arch("A0"))
    return archs


def _inputs(net: Supernet, arch: Arch, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # attentivenas at 64 px through forward_features/forward_head (below): the slices are the arch's, the cost small
    size = 64 if net.space.name == "attentivenas" else arch.resolution
    x = torch.randn(2, 3, size, size, generator=g)
    return x, torch.randint(0, net.num_classes, (2,), generator=g)


def _backward(net: Supernet, arch: Arch, seed: int, channels_last: bool = False,
              autocast: torch.dtype | None = None) -> torch.Tensor:
    net.set_arch(arch)
    x, y = _inputs(net, arch, seed)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        logits = net.forward_head(net.forward_features(x))
    nn.functional.cross_entropy(logits.float(), y).backward()
    return logits.detach()


def _compare(new: Supernet, ref: Supernet, what: str) -> None:
    ref_params = dict(ref.named_parameters())
    for name, p in new.named_parameters():
        r = ref_params[name]
        assert (p.grad is None) == (r.grad is None), f"{what}: {name}: grad None {p.grad is None} vs {r.grad is None}"
        if p.grad is not None:
            assert p.grad.shape == p.shape and p.grad.dtype == p.dtype, f"{what}: {name}"
            assert p.grad.stride() == r.grad.stride(), f"{what}: {name}: gradient layout differs"
            assert torch.equal(_bits(p.grad), _bits(r.grad)), f"{what}: {name}: gradients differ"


def _run_both(new: Supernet, ref: Supernet, monkeypatch, steps, **how) -> None:
    """Each step: ("zero", set_to_none) or (arch, seed) for one forward+backward (`how`: `_backward`'s options)."""
    for step in steps:
        if step[0] == "zero":
            new.zero_grad(set_to_none=step[1])
            ref.zero_grad(set_to_none=step[1])
            continue
        arch, seed = step
        y_new = _backward(new, arch, seed, **how)
        with monkeypatch.context() as m:
            m.setattr(layers, "sliced_parameters", _plain_slicing)
            y_ref = _backward(ref, arch, seed, **how)
        assert torch.equal(y_new, y_ref)


CASES = ([("tiny", rule, kt) for rule in ("channel_pad", "conv_when_widths_differ", "conv_at_stage_start")
          for kt in (False, True)]
         + [("attentivenas", "conv_when_widths_differ", False), ("attentivenas", "channel_pad", True)])


@pytest.mark.parametrize("name,rule,kernel_transform", CASES)
def test_gradients_equal_plain_slicing_bit_for_bit(name, rule, kernel_transform, monkeypatch):
    space = _variant(name, shortcut=rule, kernel_transform=kernel_transform)
    torch.manual_seed(0)
    new = Supernet(space).train()
    _perturb(new, seed=1)
    ref = copy.deepcopy(new)
    archs = _archs(space)
    order = [a for a in archs if a != "max"]  # the ones that slice; max uses the full parameters
    seed = 0
    # (a) one backward from None, for each sliced arch
    for label in order:
        new.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)
        seed += 1
        _run_both(new, ref, monkeypatch, [(archs[label], seed)])
        _compare(new, ref, f"{label} from None")
        # (a') one more backward of it into zeroed (not None) gradients
        seed += 1
        _run_both(new, ref, monkeypatch, [("zero", False), (archs[label], seed)])
        _compare(new, ref, f"{label} from zeros")
    # (b) the sandwich: max, middles (and A0), min accumulate into the same .grad, after each kind of zeroing
    sandwich = ["max", "middle", "middle2"] + (["A0"] if "A0" in archs else []) + ["min"]
    for set_to_none in (True, False):
        steps = [("zero", set_to_none)]
        for label in sandwich:
            seed += 1
            steps.append((archs[label], seed))
        _run_both(new, ref, monkeypatch, steps)
        _compare(new, ref, f"sandwich after zero_grad(set_to_none={set_to_none})")
    # and small before large: a later, larger slice adds onto a smaller one's gradient
    steps = [("zero", True)] + [(archs[label], seed + i) for i, label in enumerate(reversed(sandwich), 1)]
    _run_both(new, ref, monkeypatch, steps)
    _compare(new, ref, "sandwich min first")


@pytest.mark.parametrize("name", ["tiny", "attentivenas"])
def test_first_sandwich_from_initialization_equals_plain_slicing(name, monkeypatch):
    """Training's first step: freshly initialized (every bn3 weight zero, so many gradients are exact zeros),
    gradients None, then the sandwich accumulates."""
    space = load_space(name)
    torch.manual_seed(0)
    new = Supernet(space).train()
    ref = copy.deepcopy(new)
    archs = _archs(space)
    _run_both(new, ref, monkeypatch, [(archs[label], i) for i, label in enumerate(("max", "middle", "min"))])
    _compare(new, ref, "first sandwich")


@pytest.mark.parametrize("how", [{"channels_last": True}, {"autocast": torch.bfloat16}])
def test_channels_last_and_autocast_equal_plain_slicing(how, monkeypatch):
    """A channels-last supernet (the dense copy of a conv slice keeps the layout) and bf16 autocast (the cast
    happens after the slice, its backward hands the slice a float32 gradient)."""
    space = _variant("tiny", kernel_transform=True)
    torch.manual_seed(0)
    new = Supernet(space).train()
    _perturb(new, seed=2)
    if how.get("channels_last"):
        new = new.to(memory_format=torch.channels_last)
        assert new.blocks[0].conv_dw.weight.is_contiguous(memory_format=torch.channels_last)
    ref = copy.deepcopy(new)
    archs = _archs(space)
    for set_to_none in (True, False):
        steps = [("zero", set_to_none)] + [(archs[label], i) for i, label in enumerate(("max", "middle", "min"))]
        _run_both(new, ref, monkeypatch, steps, **how)
        _compare(new, ref, f"{how}, set_to_none={set_to_none}")


def test_unused_parameters_keep_no_gradient():
    """Plain slicing gave every used parameter a full-size gradient and left the untouched ones None: same now."""
    space = load_space("tiny")
    net = Supernet(space).train()
    arch = space.min_arch()
    _backward(net, arch, seed=0)
    active = {id(b) for b in net.active_blocks}
    for i, block in enumerate(net.blocks):
        for name, p in block.named_parameters():
            if id(block) in active:
                assert p.grad is not None and p.grad.shape == p.shape, f"blocks.{i}.{name}"
            else:
                assert p.grad is None, f"blocks.{i}.{name}"
    assert net.stem_conv.weight.grad.shape == net.stem_conv.weight.shape


def test_each_parameter_is_sliced_once_per_forward_in_one_call_per_part(monkeypatch):
    """Why accumulating per slice equals autograd's sum-then-accumulate: each parameter is sliced once per graph
    (autograd would add two uses of one parameter before accumulating, rounding differently). And the supernet
    slices all its layers in one call for the features and one for the head (`slices_taken`): no layer falls
    back to slicing on its own, and no layer keeps its slices (this forward's graph) after the forward."""
    calls: list[list[list[int]]] = []
    apply = layers._SliceIntoGrad.apply

    def recording(slices, *params):
        calls[-1].append([id(p) for p in params])
        return apply(slices, *params)

    monkeypatch.setattr(layers._SliceIntoGrad, "apply", recording)
    for name, keys in (("tiny", {"kernel_transform": True}), ("tiny", {"shortcut": "conv_at_stage_start"}),
                       ("attentivenas", {})):
        space = _variant(name, **keys)
        net = Supernet(space).train()
        for label, arch in _archs(space).items():
            calls.append([])
            _backward(net, arch, seed=0)
            ids = [i for call in calls[-1] for i in call]
            assert len(ids) == len(set(ids)), f"{name} {keys} {label}: a parameter sliced twice"
            parts = sum(any(layer.param_slices() for layer in part) for part in (net._feature_layers, net._head_layers))
            assert len(calls[-1]) == parts, f"{name} {keys} {label}: {len(calls[-1])} calls for {parts} parts"
            assert (parts == 0) == (label == "max")  # only the largest subnet uses every parameter whole
            assert all(m.taken_slices is None for m in net.modules() if isinstance(m, layers.SlicedLayer))
    assert any(calls)


def test_kernel_chain_seven_five_three(monkeypatch):
    """A 3x3 kernel from a 7x7 through both OFA transforms (7 -> 5 -> 3): same output and gradients."""
    torch.manual_seed(0)
    conv = layers.DynamicConv2d(12, 12, (3, 5, 7), depthwise=True, kernel_transform=True)
    with torch.no_grad():
        for t in conv.kernel_transforms.values():
            t.add_(0.1 * torch.randn(t.shape))
    ref = copy.deepcopy(conv)
    x = torch.randn(2, 12, 9, 9)
    for kernel, chs in ((3, 8), (5, 12), (3, 12), (7, 5)):
        conv.set_active(chs, chs, kernel)
        ref.set_active(chs, chs, kernel)
        y = conv(x[:, :chs])
        with monkeypatch.context() as m:
            m.setattr(layers, "sliced_parameters", _plain_slicing)
            y_ref = ref(x[:, :chs])
        assert torch.equal(y, y_ref)
        y.square().sum().backward()
        y_ref.square().sum().backward()
    for (name, p), r in zip(conv.named_parameters(), ref.parameters()):
        assert torch.equal(_bits(p.grad), _bits(r.grad)), name


def test_without_autograd_recording_it_is_plain_slicing():
    w = nn.Parameter(torch.randn(4, 3))
    with torch.no_grad():
        (s,) = layers.sliced_parameters((w, (slice(0, 2),), False))
    assert s.grad_fn is None and s._base is w
    frozen = nn.Parameter(torch.randn(4, 3), requires_grad=False)
    assert layers.sliced_parameters((frozen, (slice(0, 2),), False))[0].grad_fn is None


def test_slices_accumulate_into_grad_and_dense_copies():
    w, b = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(4))
    index = (slice(0, 2), slice(1, 3))
    s, t = layers.sliced_parameters((w, index, False), (b, index[:1], False))
    assert torch.equal(s, w[:2, 1:3]) and not s.is_contiguous() and torch.equal(t, b[:2])
    assert layers.sliced_parameters((w, index, True))[0].is_contiguous()
    ((s * torch.arange(4.0).view(2, 2)).sum() + 3 * t.sum()).backward()
    assert torch.equal(w.grad, torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 3.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(b.grad, torch.tensor([3.0, 3.0, 0.0, 0.0]))
    s, t = layers.sliced_parameters((w, index, False), (b, index[:1], False))
    t.sum().backward()  # an output that gets no gradient leaves its parameter's .grad as it was
    assert torch.equal(w.grad[:2, 1:3], torch.tensor([[0.0, 1.0], [2.0, 3.0]])) and b.grad[0] == 4.0


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")
def test_create_graph_is_refused():
    w = nn.Parameter(torch.randn(4, 3))
    (s,) = layers.sliced_parameters((w, (slice(0, 2),), False))
    with pytest.raises(RuntimeError, match="create_graph=True"):
        s.square().sum().backward(create_graph=True)
