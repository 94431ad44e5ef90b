"""Stage-start shortcut rules and kernel transforms: what the sandwich rule trains, and that the static net,
the FLOPs counter and the supernet agree under each rule."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis, parameter_count

from attentive import Supernet, count_flops, count_flops_batch, count_params, load_space
from attentive.space import SHORTCUTS, space_from_dict
from attentive.spec import decode

from conftest import ATTENTIVENAS_MODELS, attentivenas_arch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _variant(name: str, **keys) -> "attentive.SearchSpace":  # noqa: F821
    data = dict(load_space(name).source)
    data.update(keys)
    return space_from_dict(data, where=f"{name}+{keys}")


def _stage_start_kinds(space, arch) -> list[str]:
    return [b.shortcut for b in decode(space, arch).blocks if b.index_in_stage == 0]


def test_default_rule_keeps_the_space_hash_and_the_papers_flops():
    # Spaces that don't name a rule keep their hash (old checkpoints, bucket caches) and A0-A6 their FLOPs.
    att = load_space("attentivenas")
    assert att.shortcut == "conv_when_widths_differ" and "shortcut" not in att.to_dict()
    assert _variant("attentivenas", shortcut="conv_when_widths_differ").hash == att.hash
    for name, (mflops, *_) in ATTENTIVENAS_MODELS.items():
        assert round(count_flops(att, attentivenas_arch(name))) == mflops


def test_each_rule_decodes_the_tiny_stage_starts():
    tiny = load_space("tiny")
    # tiny: stem [8,16] mb1 [8,16] mb2 [16,24] mb3 [24,32] mb4 [40,48] mb5 [48,64] mb6 [64,80]
    mixed = tiny.max_arch()
    mixed = type(mixed)(mixed.resolution, (16, 16, 16, 32, 48, 48, 80, 320), mixed.depth, mixed.kernel_size,
                        mixed.expand_ratio)
    expected = {
        "conv_when_widths_differ": ["identity", "identity", "conv", "conv", "identity", "conv"],
        "conv_at_stage_start": ["conv"] * 6,
        "channel_pad": ["identity", "identity", "pad", "pad", "identity", "pad"],
    }
    for rule, kinds in expected.items():
        assert _stage_start_kinds(_variant("tiny", shortcut=rule), mixed) == kinds, rule
    # later blocks of a stage are always identities
    for rule in SHORTCUTS:
        space = _variant("tiny", shortcut=rule)
        assert all(b.shortcut == "identity" for b in decode(space, space.max_arch()).blocks if b.index_in_stage)


def test_unknown_rule_and_bad_kernel_transform_are_refused():
    with pytest.raises(ValueError, match="unknown shortcut 'zero'.*channel_pad"):
        _variant("tiny", shortcut="zero")
    with pytest.raises(ValueError, match="kernel_transform"):
        _variant("tiny", kernel_transform="yes")


@pytest.mark.parametrize("rule", SHORTCUTS)
@pytest.mark.parametrize("kernel_transform", [False, True])
def test_flops_params_and_outputs_agree_under_each_rule(rule, kernel_transform):
    space = _variant("tiny", shortcut=rule, kernel_transform=kernel_transform)
    torch.manual_seed(0)
    net = Supernet(space).eval()
    with torch.no_grad():  # non-trivial branches and kernel transforms, so that a wrong shortcut shows
        for b in net.blocks:
            b.bn3.weight.normal_()
        for name, p in net.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.2 * torch.randn_like(p))
    rng = np.random.default_rng(3)
    archs = [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(12)]
    batch = count_flops_batch(space, archs)
    for arch, flops in zip(archs, batch):
        x = torch.randn(2, 3, arch.resolution, arch.resolution)
        with torch.no_grad():
            net.set_arch(arch)
            y = net(x)
            static = net.extract(arch)
            assert (y - static(x)).abs().max().item() < 1e-5
        fv = FlopCountAnalysis(static, x[:1]).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        ops = fv.by_operator()
        assert round(count_flops(space, arch) * 1e6) == ops.get("conv", 0) + ops.get("linear", 0) + ops.get("addmm", 0)
        assert round(count_params(space, arch) * 1e6) == parameter_count(static)[""]
        assert flops == count_flops(space, arch)


def test_rules_order_the_flops_as_expected():
    tiny = _variant("tiny", shortcut="conv_when_widths_differ")
    arch = tiny.max_arch()
    pad = count_flops(_variant("tiny", shortcut="channel_pad"), arch)
    conv_if = count_flops(tiny, arch)
    always = count_flops(_variant("tiny", shortcut="conv_at_stage_start"), arch)
    assert pad < conv_if < always  # the max net has equal widths at mb1's start: a conv only under "always"


@pytest.mark.parametrize("rule", ["conv_at_stage_start", "channel_pad"])
def test_sandwich_ends_train_every_stage_start_shortcut(rule):
    """Under the rules meant for weight sharing, what a middle subnet uses at a stage start is either free of
    parameters or a slice of a conv that the largest and smallest subnets train at every step."""
    space = _variant("tiny", shortcut=rule)
    net = Supernet(space).train()
    with torch.no_grad():
        for b in net.blocks:
            b.bn3.weight.fill_(1.0)
    x = torch.randn(4, 3, 28, 28)
    for arch in (space.max_arch(), space.min_arch()):
        net.set_arch(arch)
        nn.functional.cross_entropy(net(x), torch.arange(4)).backward()
    rng = np.random.default_rng(0)
    for _ in range(50):
        arch = space.sample(rng)
        net.set_arch(arch)
        for block, spec in zip(net.active_blocks, net.active_spec.blocks):
            if spec.shortcut == "conv":
                g = block.shortcut_conv.weight.grad[: spec.out_chs, : spec.in_chs]
                # every row and column of the slice this subnet uses got gradient from the sandwich ends
                assert (g.abs().sum(1) > 0).all() and (g.abs().sum(0) > 0).all()
            else:
                assert spec.shortcut in ("identity", "pad")
    if rule == "channel_pad":
        assert all(b.shortcut_conv is None for b in net.blocks)


def test_default_rule_leaves_an_untrained_identity():
    """The mechanism behind the issue: under AttentiveNAS's rule, the largest and smallest tiny nets both use a
    conv at mb2's start, while a subnet with mb1 width 16 and mb2 width 16 uses an identity there."""
    tiny = _variant("tiny", shortcut="conv_when_widths_differ")
    assert _stage_start_kinds(tiny, tiny.max_arch())[1] == "conv"
    assert _stage_start_kinds(tiny, tiny.min_arch())[1] == "conv"
    arch = tiny.max_arch()
    mixed = type(arch)(arch.resolution, (16, 16, 16) + arch.width[3:], arch.depth, arch.kernel_size,
                       arch.expand_ratio)
    assert _stage_start_kinds(tiny, mixed)[1] == "identity"


def test_tiny_space_uses_the_parameter_free_shortcut():
    assert load_space("tiny").shortcut == "channel_pad"


def test_kernel_transform_is_identity_at_init_and_learns():
    plain, ktm = load_space("tiny"), _variant("tiny", kernel_transform=True)
    torch.manual_seed(0)
    a = Supernet(plain).eval()
    torch.manual_seed(0)
    b = Supernet(ktm).eval()
    b.load_state_dict(a.state_dict(), strict=False)
    arch = plain.min_arch()  # every kernel 3: cut from the centre of the 5x5 (then transformed)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        a.set_arch(arch)
        b.set_arch(arch)
        assert torch.equal(a(x), b(x))
    names = [n for n, _ in b.named_parameters() if "kernel_transforms" in n]
    assert len(names) == sum(len(ids) for ids in b.stage_block_ids)  # one 9x9 matrix per depthwise conv
    b.train()
    with torch.no_grad():
        for blk in b.blocks:
            blk.bn3.weight.fill_(1.0)
    b.set_arch(arch)
    b(x).sum().backward()
    first = dict(b.named_parameters())[names[0]]
    assert first.shape == (9, 9) and first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("out_chs", [24, 8])  # pad up, cut down
def test_exported_channel_pad_pads_by_constants(out_chs):
    """A static net's channel pad exports with constant amounts: no Shape ops (a dozen per block, run at every
    call by onnxruntime when the amounts came from the input's shape), the same outputs as in torch."""
    import onnx
    import onnxruntime

    from attentive.latency import onnx_bytes
    from attentive.layers import ChannelPad

    pad = ChannelPad(16, out_chs)
    x = torch.randn(2, 16, 5, 5)
    model = onnx_bytes(pad, x.shape)  # as exports and latency tables export it
    ops = [node.op_type for node in onnx.load_from_string(model).graph.node]
    assert "Shape" not in ops and ("Pad" in ops) == (out_chs > 16)
    y = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    assert y.shape == (2, out_chs, 5, 5)
    np.testing.assert_array_equal(y, pad(x).numpy())
    assert torch.equal(pad(x)[:, :min(16, out_chs)], x[:, :out_chs]) and not pad(x)[:, 16:].any()
