import numpy as np
import pytest
import torch
import torch.nn as nn

from attentive import Arch, StaticNet, Supernet, count_params, load_space
from attentive.calibration import bn_calibration, calibrate_bn
from attentive.layers import DynamicBatchNorm2d, DynamicConv2d

from conftest import attentivenas_arch


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine params, so extraction bugs in BN copying cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))


@pytest.fixture(scope="module")
def supernets():
    torch.manual_seed(0)
    nets = {}
    for name in ("tiny", "attentivenas"):
        net = Supernet(load_space(name), seed=0)
        _randomize_bn(net)
        nets[name] = net
    return nets


def _archs(space, n_random):
    rng = np.random.default_rng(1)
    return [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(n_random)]


@pytest.mark.parametrize("name,n_random", [("tiny", 8), ("attentivenas", 3)])
def test_extracted_net_equals_supernet_in_eval(supernets, name, n_random):
    net = supernets[name].eval()
    g = torch.Generator().manual_seed(0)
    for arch in _archs(net.space, n_random):
        x = torch.randn(2, 3, arch.resolution, arch.resolution, generator=g)
        with torch.no_grad():
            net.set_arch(arch)
            y_super = net(x)
            static = net.extract(arch)
            y_static = static(x)
        assert isinstance(static, StaticNet)
        assert y_super.shape == (2, net.space.num_classes)
        assert torch.isfinite(y_super).all()
        assert (y_super - y_static).abs().max().item() < 1e-5
        assert sum(p.numel() for p in static.parameters()) == round(count_params(net.space, arch) * 1e6)
        # only plain torch layers in the static net
        assert not any(isinstance(m, (DynamicConv2d, DynamicBatchNorm2d)) for m in static.modules())


def test_extracted_net_is_independent_of_the_supernet(supernets):
    net = supernets["tiny"].eval()
    arch = net.space.sample(np.random.default_rng(5))
    static = net.extract(arch)
    x = torch.randn(2, 3, arch.resolution, arch.resolution)
    before = static(x)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    try:
        assert torch.equal(static(x), before)
    finally:
        with torch.no_grad():
            for p in net.parameters():
                p.sub_(1.0)


def test_published_arch_runs_and_extracts(supernets):
    net = supernets["attentivenas"].eval()
    arch = Arch.from_dict(attentivenas_arch("A0"))
    x = torch.randn(1, 3, 192, 192)
    with torch.no_grad():
        net.set_arch(arch)
        assert (net(x) - net.extract(arch)(x)).abs().max() < 1e-5


@pytest.mark.parametrize("which", ["min", "max", "random"])
def test_every_active_parameter_gets_a_gradient(which):
    space = load_space("tiny")
    net = Supernet(space).train()
    _randomize_bn(net)
    arch = {"min": space.min_arch(), "max": space.max_arch(),
            "random": space.sample(np.random.default_rng(2))}[which]
    net.set_arch(arch)
    x = torch.randn(4, 3, 28, 28)
    loss = nn.functional.cross_entropy(net(x), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    active_blocks = {id(b) for b in net.active_blocks}
    static = net.extract(arch)
    n_static = sum(p.numel() for p in static.parameters())
    n_nonzero, tensors_with_grad = 0, 0
    for name, module in net.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            block_of = name.split(".")[:2]
            inactive_block = block_of[0] == "blocks" and id(net.blocks[int(block_of[1])]) not in active_blocks
            if inactive_block:
                assert p.grad is None, f"{name}.{pname} belongs to an inactive block but got a gradient"
                continue
            if p.grad is None:
                continue
            tensors_with_grad += 1
            assert torch.isfinite(p.grad).all(), f"{name}.{pname}"
            assert (p.grad != 0).any(), f"{name}.{pname} is active but its gradient is all zero"
            n_nonzero += int((p.grad != 0).sum())
    # one gradient per static parameter tensor, and nothing outside the active slices is touched
    # (inside them a few exact zeros are legitimate: dead ReLU units in squeeze-excite)
    assert tensors_with_grad == len(list(static.parameters()))
    assert 0.5 * n_static < n_nonzero <= n_static


def test_input_is_resized_to_the_arch_resolution():
    space = load_space("tiny")
    net = Supernet(space).eval()
    arch = space.min_arch()  # resolution 24
    net.set_arch(arch)
    x = torch.randn(2, 3, 28, 28)
    x24 = nn.functional.interpolate(x, size=24, mode="bicubic", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(net(x), net(x24), atol=1e-6)
        assert torch.allclose(net.extract(arch)(x), net(x24), atol=1e-5)


def test_regularization_is_scoped_and_seeded():
    space = load_space("tiny")
    net = Supernet(space, seed=3).train()
    net.set_arch(space.max_arch())
    x = torch.randn(8, 3, 28, 28)
    with torch.no_grad():
        with net.regularization(dropout=0.5, drop_connect=0.5, drop_connect_last_stages=None):
            assert net.dropout_rate == 0.5
            rates = [b.drop_connect_rate for b in net.blocks]
            assert rates == [0.5 * i / len(net.blocks) for i in range(len(net.blocks))]
            net.generator.manual_seed(11)
            y1 = net(x)
            net.generator.manual_seed(11)
            y2 = net(x)
            y3 = net(x)
        assert net.dropout_rate == 0 and all(b.drop_connect_rate == 0 for b in net.blocks)
    assert torch.equal(y1, y2) and not torch.equal(y1, y3)
    net.set_regularization(0.2, 0.2)  # default: last two stages only, as AttentiveNAS
    last_two = set(net.stage_block_ids[-1] + net.stage_block_ids[-2])
    assert all((b.drop_connect_rate > 0) == (i in last_two and i > 0) for i, b in enumerate(net.blocks))
    with pytest.raises(ValueError, match="dropout must be in"):
        net.set_regularization(dropout=1.5)


def test_bn_calibration_restores_modes_and_matches_static_calibration():
    space = load_space("tiny")
    net = Supernet(space).train()
    arch = space.sample(np.random.default_rng(4))
    net.set_arch(arch)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 3, 28, 28, generator=g) for _ in range(3)]
    static = net.extract(arch)
    calibrate_bn(net, batches)
    calibrate_bn(static, batches)
    assert net.training and static.training
    net.eval(), static.eval()
    x = torch.randn(4, 3, 28, 28, generator=g)
    with torch.no_grad():
        assert (net(x) - static(x)).abs().max() < 1e-5
        # the extracted copy of the calibrated supernet carries the same statistics
        assert (net.extract(arch)(x) - static(x)).abs().max() < 1e-5
    bn = net.stem_bn
    assert bn.momentum == 0.1  # restored
    with pytest.raises(ValueError, match="no batches"):
        calibrate_bn(net, [])


def test_set_arch_rejects_archs_outside_the_space():
    net = Supernet(load_space("tiny"))
    d = net.space.max_arch().to_dict()
    d["expand_ratio"][1] = 9
    with pytest.raises(ValueError, match="expand_ratio"):
        net.set_arch(d)
