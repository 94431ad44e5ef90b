import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attentive import load_space
from predictors.proxies import (PROXIES, grad_norm, init_subnet, nasi_penalized, ntk_trace_exact, ntk_trace_norm,
                                random_minibatch, score_archs, synflow)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny")


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 3, 28, 28, generator=g), torch.randint(10, (8,), generator=g)


def _small_archs(space):
    small = space.min_arch()
    other = space.arch_from_indices([1] + space.arch_to_indices(small)[1:])  # same arch at the other resolution
    return [small, other]


@pytest.mark.parametrize("proxy", ["ntk", "grad_norm", "synflow", "ntk_exact"])
def test_proxy_finite_deterministic_and_seed_dependent(tiny, batch, proxy):
    images, labels = batch
    if proxy == "ntk_exact":
        images, labels = images[:2], labels[:2]  # cost grows with batch x classes
    archs = _small_archs(tiny)
    first = score_archs(tiny, archs, proxy, images, labels, seed=0)
    again = score_archs(tiny, archs, proxy, images, labels, seed=0)
    other_seed = score_archs(tiny, archs, proxy, images, labels, seed=1)
    assert first.shape == (2,) and np.isfinite(first).all() and (first > 0).all()
    np.testing.assert_array_equal(first, again)
    assert (first != other_seed).all()
    assert first[0] != first[1]
    # An arch's score does not depend on the other archs in the list.
    assert score_archs(tiny, archs[1:], proxy, images, labels, seed=0)[0] == first[1]


def test_scoring_leaves_global_rng_untouched(tiny, batch):
    state = torch.random.get_rng_state()
    score_archs(tiny, [tiny.min_arch()], "grad_norm", *batch, seed=3)
    assert torch.equal(state, torch.random.get_rng_state())


class _TinyConvNet(nn.Module):
    def __init__(self, bn: bool = True, classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4) if bn else nn.Identity()
        self.fc = nn.Linear(4, classes)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _brute_force_ntk_trace(model, images):
    model.train()
    out = model(images)
    params = [p for p in model.parameters() if p.requires_grad]
    total = 0.0
    for i in range(out.shape[0]):
        for c in range(out.shape[1]):
            grads = torch.autograd.grad(out[i, c], params, retain_graph=True)
            total += sum(float(g.double().pow(2).sum()) for g in grads)
    return total


def test_exact_ntk_trace_equals_brute_force_loop(tiny):
    images = torch.randn(3, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    for model in (_TinyConvNet(bn=True), _TinyConvNet(bn=False)):
        assert math.isclose(ntk_trace_exact(model, images), _brute_force_ntk_trace(model, images), rel_tol=1e-5)
    net = init_subnet(tiny, tiny.min_arch(), seed=0)
    images = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(2))
    assert math.isclose(ntk_trace_exact(net, images), _brute_force_ntk_trace(net, images), rel_tol=1e-4)


def test_exact_ntk_trace_of_a_linear_model_is_analytic():
    # f(x) = W x + b: d f_c / d theta has entries x (row c of W) and 1 (b_c), so the trace is C * sum_x (|x|^2 + 1).
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    images = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3))
    expected = 5 * float((images.double().pow(2).sum((1, 2, 3)) + 1).sum())
    assert math.isclose(ntk_trace_exact(model, images), expected, rel_tol=1e-6)


def test_ntk_trace_norm_is_squared_norm_of_mean_per_sample_gradient():
    # NASI eq. 12 on a net without BN (so samples are independent): || mean_i grad loss_i ||^2.
    model = _TinyConvNet(bn=False)
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(5, 3, 6, 6, generator=g), torch.randint(4, (5,), generator=g)
    params = list(model.parameters())
    per_sample = [torch.autograd.grad(F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1]), params)
                  for i in range(5)]
    mean = [sum(gs[k] for gs in per_sample) / 5 for k in range(len(params))]
    expected = sum(float(m.double().pow(2).sum()) for m in mean)
    assert math.isclose(ntk_trace_norm(model, images, labels), expected, rel_tol=1e-5)


def test_proxies_leave_the_model_as_found(tiny, batch):
    net = init_subnet(tiny, tiny.min_arch(), seed=0).eval()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for fn in (ntk_trace_norm, grad_norm, synflow):
        fn(net, *batch)
    ntk_trace_exact(net, batch[0][:1])
    assert not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_synflow_is_data_independent(tiny, batch):
    net = init_subnet(tiny, tiny.min_arch(), seed=0)
    assert synflow(net, batch[0]) == synflow(net, torch.zeros_like(batch[0][:1]))


def test_bad_inputs_are_refused(tiny, batch):
    images, labels = batch
    with pytest.raises(ValueError, match="unknown proxy 'zen'; allowed: " + ", ".join(PROXIES)):
        score_archs(tiny, [tiny.min_arch()], "zen", images, labels)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 10\)"):
        score_archs(tiny, [tiny.min_arch()], "ntk", images, labels + 10)
    with pytest.raises(ValueError, match="images must be a tensor"):
        score_archs(tiny, [tiny.min_arch()], "ntk", images[0], labels)
    with pytest.raises(ValueError, match="resolution 32 not allowed"):
        score_archs(tiny, [{**tiny.min_arch().to_dict(), "resolution": 32}], "ntk", images, labels)


def test_nasi_penalized():
    np.testing.assert_allclose(nasi_penalized(np.array([1.0, 5.0, 10.0]), mu=0.5, nu=4.0), [1.0, 4.5, 7.0])
    assert nasi_penalized(3.0, mu=1.0, nu=2.0) == 2.0
    assert isinstance(nasi_penalized(3.0, mu=1.0, nu=2.0), float)


def test_random_minibatch_is_seeded():
    data = torch.utils.data.TensorDataset(torch.arange(20.0).reshape(20, 1, 1, 1).expand(20, 3, 2, 2),
                                          torch.arange(20) % 3)
    a, b = random_minibatch(data, 4, seed=0), random_minibatch(data, 4, seed=0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], random_minibatch(data, 4, seed=1)[0])
    with pytest.raises(ValueError, match=r"batch_size must be in \[1, 20\]"):
        random_minibatch(data, 21, seed=0)


def test_nasi_objective_threshold_is_the_quantile_of_seeded_random_archs(tiny, batch):
    from torch.utils.data import TensorDataset

    from predictors.proxies import nasi_objective

    dataset = TensorDataset(*batch)
    objective = nasi_objective(tiny, "grad_norm", dataset, batch_size=100, mu=2.0, seed=3)  # batch clipped to 8
    images, labels = random_minibatch(dataset, 8, 3)
    rng = np.random.Generator(np.random.PCG64(3))
    sample = [tiny.arch_from_indices(r) for r in tiny.sample_indices(rng, 16)]
    nu = float(np.quantile(score_archs(tiny, sample, "grad_norm", images, labels, seed=3), 0.9))
    assert objective.description == f"proxy grad_norm, NASI penalty mu=2 nu={nu:.6g}"
    assert objective.expensive and not objective.predicts_accuracy
    archs = _small_archs(tiny)
    raw = score_archs(tiny, archs, "grad_norm", images, labels, seed=3)
    assert np.array_equal(objective.score_fn(archs), nasi_penalized(raw, 2.0, nu))
    fixed = nasi_objective(tiny, "grad_norm", dataset, batch_size=8, mu=1.0, nu=0.5, seed=3)
    assert fixed.description == "proxy grad_norm, NASI penalty mu=1 nu=0.5"
    np.testing.assert_allclose(fixed.score_fn(archs), np.minimum(raw, 0.5), rtol=0, atol=1e-12)  # mu = 1: capped
