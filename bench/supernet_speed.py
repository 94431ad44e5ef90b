"""Sliced (in-supernet) vs extracted static forward+backward time, and vectorized FLOPs throughput.

For the max, min and a middle arch of both spaces: median train-mode forward+backward time of the subnet
inside the supernet and of its extracted static net, same batch and threads, measured alternately in one run,
and their ratio (goal: <= 1.03). Then `count_flops_batch` archs/second and its speed-up over fvcore.

    python bench/supernet_speed.py [--repeats 7] [--threads 2] [--channels-last]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis

from attentive import Supernet, count_flops, count_flops_batch, load_space

BATCH = {"tiny": 128, "attentivenas": 8}


def middle_arch(space, seed=0):
    """The random arch whose FLOPs are closest to the median of 2,000 random archs."""
    rng = np.random.default_rng(seed)
    idx = space.sample_indices(rng, 2000)
    flops = count_flops_batch(space, idx)
    return space.arch_from_indices(idx[np.argsort(flops)[len(flops) // 2]])


def fwd_bwd(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    t0 = time.perf_counter()
    nn.functional.cross_entropy(model(x), y).backward()
    return time.perf_counter() - t0


def time_pair(supernet: Supernet, arch, batch: int, repeats: int, channels_last: bool) -> tuple[float, float]:
    supernet.set_arch(arch)
    static = supernet.extract(arch).train()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, arch.resolution, arch.resolution, generator=g)
    y = torch.randint(0, supernet.num_classes, (batch,), generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        static = static.to(memory_format=torch.channels_last)
        supernet.to(memory_format=torch.channels_last)
    for _ in range(2):  # warm-up both
        fwd_bwd(supernet, x, y), fwd_bwd(static, x, y)
    t_super, t_static = [], []
    for _ in range(repeats):  # alternate so that machine noise hits both alike
        supernet.zero_grad(set_to_none=True)
        static.zero_grad(set_to_none=True)
        t_super.append(fwd_bwd(supernet, x, y))
        t_static.append(fwd_bwd(static, x, y))
    return float(np.median(t_super)), float(np.median(t_static))


def flops_throughput(space, n: int = 200_000) -> float:
    idx = space.sample_indices(np.random.default_rng(0), n)
    count_flops_batch(space, idx[:100])  # build the tables once
    t0 = time.perf_counter()
    count_flops_batch(space, idx)
    return n / (time.perf_counter() - t0)


def fvcore_seconds_per_arch(space, n: int = 3) -> float:
    net = Supernet(space).eval()
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(n):
        arch = space.sample(rng)
        fca = FlopCountAnalysis(net.extract(arch), torch.zeros(1, 3, arch.resolution, arch.resolution))
        fca.unsupported_ops_warnings(False)
        fca.uncalled_modules_warnings(False)
        fca.total()
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, channels_last={args.channels_last}")
    print(f"{'space':<13}{'arch':<7}{'MFLOPs':>9}{'batch':>7}{'supernet ms':>13}{'static ms':>11}{'ratio':>8}")
    for name in ("tiny", "attentivenas"):
        space = load_space(name)
        supernet = Supernet(space).train()
        for label, arch in (("max", space.max_arch()), ("min", space.min_arch()), ("middle", middle_arch(space))):
            t_super, t_static = time_pair(supernet, arch, BATCH[name], args.repeats, args.channels_last)
            print(f"{name:<13}{label:<7}{count_flops(space, arch):>9.1f}{BATCH[name]:>7}"
                  f"{t_super * 1e3:>13.1f}{t_static * 1e3:>11.1f}{t_super / t_static:>8.3f}")
    print()
    for name in ("tiny", "attentivenas"):
        space = load_space(name)
        rate = flops_throughput(space)
        fv = fvcore_seconds_per_arch(space)
        print(f"count_flops_batch {name:<13}{rate:>12,.0f} archs/s   fvcore {fv * 1e3:8.1f} ms/arch"
              f"   speed-up {rate * fv:>12,.0f}x")


if __name__ == "__main__":
    main()
