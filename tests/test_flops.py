import numpy as np
import pytest
import torch
from fvcore.nn import FlopCountAnalysis, parameter_count

from attentive import (Arch, Supernet, count_flops, count_flops_batch, count_params, count_params_batch, encode,
                       load_space)

from conftest import ATTENTIVENAS_MODELS, attentivenas_arch


@pytest.mark.parametrize("name", list(ATTENTIVENAS_MODELS))
def test_published_attentivenas_flops(name):
    space = load_space("attentivenas")
    expected = ATTENTIVENAS_MODELS[name][0]
    assert round(count_flops(space, attentivenas_arch(name))) == expected
    assert round(count_flops_batch(space, [attentivenas_arch(name)])[0]) == expected


def _fvcore_conv_linear(model, resolution):
    x = torch.zeros(1, 3, resolution, resolution)
    analysis = FlopCountAnalysis(model.eval(), x)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    ops = analysis.by_operator()
    return ops.get("conv", 0) + ops.get("linear", 0) + ops.get("addmm", 0)


@pytest.mark.parametrize("name,n_random", [("tiny", 50), ("attentivenas", 50)])
def test_flops_and_params_equal_fvcore_on_extracted_nets(name, n_random):
    space = load_space(name)
    rng = np.random.default_rng(0)
    archs = [space.min_arch(), space.max_arch()] + [space.sample(rng) for _ in range(n_random)]
    net = Supernet(space)
    batch = count_flops_batch(space, archs)
    for i, arch in enumerate(archs):
        static = net.extract(arch)
        # analytic multiply-adds are integers: compare exactly
        assert round(count_flops(space, arch) * 1e6) == _fvcore_conv_linear(static, arch.resolution)
        assert round(count_params(space, arch) * 1e6) == parameter_count(static)[""]
        assert batch[i] == count_flops(space, arch)


def test_batch_equals_scalar_on_many_archs(space):
    rng = np.random.default_rng(1)
    idx = space.sample_indices(rng, 2000)
    archs = [space.arch_from_indices(r) for r in idx]
    flops = count_flops_batch(space, idx)
    params = count_params_batch(space, idx)
    assert np.array_equal(flops, count_flops_batch(space, archs))
    assert np.array_equal(encode(space, archs), idx)
    for i in range(0, 2000, 97):
        assert flops[i] == count_flops(space, archs[i])
        assert params[i] == count_params(space, archs[i])


def test_flops_grow_with_each_gene(space):
    """Raising any single gene (wider, deeper, bigger kernel, more expansion, higher resolution) never lowers
    the FLOPs: a sanity check of the vectorized tables."""
    rng = np.random.default_rng(2)
    idx = space.sample_indices(rng, 200)
    base = count_flops_batch(space, idx)
    for g, size in enumerate(space.gene_sizes()):
        up = idx.copy()
        up[:, g] = np.minimum(up[:, g] + 1, size - 1)
        assert (count_flops_batch(space, up) >= base).all()


def test_num_classes_changes_only_the_classifier():
    space = load_space("tiny")
    a = space.max_arch()
    head = a.width[-1]
    assert count_flops(space, a, num_classes=100) - count_flops(space, a) == pytest.approx(head * 90 / 1e6)


def test_invalid_arch_is_refused_by_flops():
    space = load_space("tiny")
    d = space.max_arch().to_dict()
    d["width"][0] = 3
    with pytest.raises(ValueError, match="stem"):
        count_flops(space, d)
    with pytest.raises(ValueError, match="stem"):
        count_flops_batch(space, [d])
