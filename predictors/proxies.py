"""Training-free proxies of accuracy, computed on a freshly initialized standalone subnet and one minibatch.

* ``ntk``: NASI's approximation of the NTK trace norm (Shu et al., ICLR 2022, eq. 12): the squared norm of the
  minibatch-averaged gradient of the loss w.r.t. all parameters, ``|| (1/b) sum_x grad_theta loss(x) ||^2``.
* ``ntk_exact``: the NTK trace itself, ``sum_x ||d f(x) / d theta||_F^2`` over the minibatch (f = logits):
  one backward pass per (image, logit), so for small batches.
* ``grad_norm``: sum over conv/linear weights of the L2 norm of the loss gradient (Abdelfattah et al., 2021).
* ``synflow``: sum of |theta * dR/dtheta| with R the summed output for an all-ones input, weights replaced by
  their absolute values, BN as identity (eval mode, fresh statistics), float64 (Tanaka et al., 2020).

``ntk``, ``ntk_exact`` and ``grad_norm`` use BN with batch statistics (train mode), as a training step would.
Every proxy leaves the model as it found it (modes, BN running statistics, weights).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset

from attentive.calibration import preserved_bn_state
from attentive.select import SearchObjective
from attentive.space import Arch, SearchSpace
from attentive.static import StaticNet


@contextlib.contextmanager
def _preserved(model: nn.Module, train: bool) -> Iterator[nn.Module]:
    """Run in train/eval mode; every module's mode and BN running statistics are restored on exit."""
    with preserved_bn_state(model):
        model.train(train)
        yield model


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def _weight_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _check_batch(images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a tensor [batch, channels, height, width], got "
                         f"{getattr(images, 'shape', type(images).__name__)}")
    if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != images.shape[:1]):
        raise ValueError(f"labels must be a tensor with one class index per image ({images.shape[0]}), got "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")


def ntk_trace_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """NASI eq. 12: squared L2 norm of the gradient of the mean cross-entropy of the minibatch."""
    _check_batch(images, labels)
    with _preserved(model, train=True):
        params = _params(model)
        grads = torch.autograd.grad(F.cross_entropy(model(images), labels), params)
    return float(sum(g.double().pow(2).sum() for g in grads))


def ntk_trace_exact(model: nn.Module, images: torch.Tensor) -> float:
    """Trace of the empirical NTK of the minibatch: sum over images x and logits c of ||d f_c(x) / d theta||^2.

    f is the batched forward (BN with batch statistics); one backward pass per (image, logit). On CPU this loop
    was faster than vmapping the vector-Jacobian product with torch.func (0.5 s vs 0.9-1.7 s for 2 images x 10
    classes on the tiny space's min arch), whose batching rules fall back to slow paths for some of these ops."""
    _check_batch(images)
    with _preserved(model, train=True):
        params = _params(model)
        logits = model(images)
        flat = logits.reshape(-1)
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for k in range(flat.numel()):
            grads = torch.autograd.grad(flat[k], params, retain_graph=k + 1 < flat.numel(), allow_unused=True)
            total += sum(g.double().pow(2).sum() for g in grads if g is not None)
    return float(total)


def grad_norm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Sum over conv and linear layers of the L2 norm of their weight's cross-entropy gradient."""
    _check_batch(images, labels)
    with _preserved(model, train=True):
        weights = [m.weight for m in _weight_layers(model)]
        grads = torch.autograd.grad(F.cross_entropy(model(images), labels), weights)
    return float(sum(g.double().norm() for g in grads))


def synflow(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> float:
    """SynFlow on an all-ones input shaped like one image of `images` (labels unused); runs on a float64 copy."""
    _check_batch(images)
    net = copy.deepcopy(model).double().eval()  # BN in eval mode with fresh statistics: identity, as SynFlow wants
    with torch.no_grad():
        for p in net.parameters():
            p.abs_()
    for p in net.parameters():
        p.requires_grad_(True)
    ones = torch.ones((1, *images.shape[1:]), dtype=torch.float64, device=images.device)
    weights = [m.weight for m in _weight_layers(net)]
    grads = torch.autograd.grad(net(ones).sum(), weights)
    return float(sum((w.detach() * g).abs().sum() for w, g in zip(weights, grads)))


PROXIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], float]] = {
    "ntk": ntk_trace_norm,
    "ntk_exact": lambda model, images, labels: ntk_trace_exact(model, images),
    "grad_norm": grad_norm,
    "synflow": synflow,
}


def check_proxy_names(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in PROXIES]
    if unknown:
        raise ValueError(f"unknown proxy {', '.join(map(repr, unknown))}; allowed: {', '.join(PROXIES)}")
    return list(names)


def init_subnet(space: SearchSpace, arch: Arch, seed: int, num_classes: int | None = None) -> StaticNet:
    """A standalone subnet with default PyTorch init drawn from `seed`; the global RNG is left untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return StaticNet.from_arch(space, arch, num_classes)


def score_archs(space: SearchSpace, archs: Sequence[Arch | dict], proxy: str, images: torch.Tensor,
                labels: torch.Tensor, seed: int = 0, device: torch.device | str = "cpu",
                num_classes: int | None = None) -> np.ndarray:
    """`proxy` score of each arch (higher = predicted better), each on a fresh subnet initialized from `seed`:
    an arch's score depends only on (arch, images, labels, seed), not on the other archs in the list."""
    check_proxy_names([proxy])
    _check_batch(images, labels)
    num_classes = space.num_classes if num_classes is None else num_classes
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got range "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    fn = PROXIES[proxy]
    images, labels = images.to(device), labels.to(device)
    scores = np.empty(len(archs), dtype=np.float64)
    for i, arch in enumerate(archs):
        arch = space.validate(Arch.from_dict(arch) if isinstance(arch, dict) else arch)
        scores[i] = fn(init_subnet(space, arch, seed, num_classes).to(device), images, labels)
    return scores


def random_minibatch(dataset: Dataset, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of `batch_size` samples of `dataset` drawn by a seeded permutation (no global RNG)."""
    if not 1 <= batch_size <= len(dataset):
        raise ValueError(f"batch_size must be in [1, {len(dataset)}] for this dataset, got {batch_size}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:batch_size].tolist()
    samples = [dataset[i] for i in order]
    return torch.stack([s[0] for s in samples]), torch.tensor([int(s[1]) for s in samples])


def nasi_penalized(score: float | np.ndarray, mu: float, nu: float) -> float | np.ndarray:
    """NASI's penalized objective `score - mu * max(0, score - nu)`: scores above the threshold `nu` are
    discounted (mu = 1 caps them at nu)."""
    s = np.asarray(score, dtype=np.float64)
    out = s - mu * np.maximum(0.0, s - nu)
    return float(out) if out.ndim == 0 else out


NASI_NU_ARCHS, NASI_NU_QUANTILE = 16, 0.9


def nasi_objective(space: SearchSpace, proxy: str, dataset: Dataset, batch_size: int, mu: float = 2.0,
                   nu: float | None = None, seed: int = 0, device: torch.device | str = "cpu",
                   num_classes: int | None = None) -> SearchObjective:
    """The search objective of a training-free proxy, NASI's penalized form `s - mu * max(s - nu, 0)` of the
    proxy `s` on one seeded minibatch of `batch_size` images of `dataset` (at most its size). Without `nu`, the
    threshold is the 0.9 quantile of the proxy over 16 random archs drawn with `seed`."""
    images, labels = random_minibatch(dataset, min(batch_size, len(dataset)), seed)

    def raw(archs: Sequence[Arch]) -> np.ndarray:
        return score_archs(space, archs, proxy, images, labels, seed=seed, device=device, num_classes=num_classes)

    if nu is None:
        rng = np.random.Generator(np.random.PCG64(seed))
        sample = [space.arch_from_indices(r) for r in space.sample_indices(rng, NASI_NU_ARCHS)]
        nu = float(np.quantile(raw(sample), NASI_NU_QUANTILE))
    return SearchObjective(lambda archs: nasi_penalized(raw(archs), mu, nu),
                           f"proxy {proxy}, NASI penalty mu={mu:g} nu={nu:.6g}", predicts_accuracy=False,
                           expensive=True)
