"""Sliced (in-supernet) vs extracted static forward+backward time, and vectorized FLOPs throughput.

For the max, min and a middle arch of both spaces (and AttentiveNAS A0 in the ImageNet space): train-mode
forward+backward time of the subnet inside the supernet and of its extracted static net, same batch and threads,
interleaved call by call in one run, over several rounds. Each round gives a ratio of medians
(supernet / static; goal <= 1.03); the table shows the median ratio over rounds and its min..max (the
run-to-run spread), and the median of the paired ratios (each supernet call over the static call beside it, the
order alternating from call to call so that neither side always runs first) with its 95% bootstrap interval:
machine noise moves both calls of a pair alike, so this interval is narrower than the spread of rounds (it
does not cover the drift between separate runs: docs/results.md). Gradients are zeroed between calls, outside the
timed region, both ways training may do it:
`zero_grad(set_to_none=False)` (the sandwich step's steady state: `.grad` stays allocated) and
`set_to_none=True` (the supernet then allocates its full-size `.grad` in every backward, which a static net of
the subnet's size does not have to). `--reference` also times the supernet with plain slicing (whose backward
scatters each slice's gradient into a zero tensor of the full weight's size), the behaviour before
`attentive.layers.sliced_parameters`, in the same interleaved rounds. Then `count_flops_batch` archs/second and
its speed-up over fvcore.

The bench runs under the CPU settings that `train.py` applies (`attentive.cpu_runtime.tune_cpu_runtime`: freed
memory kept in glibc's heap, a larger oneDNN primitive cache), so the ratios are those of a training step. Under
glibc's defaults every step page-faults its activations afresh, and more of them for the supernet (24,000 vs
18,000 minor faults per step for the ImageNet space's smallest net: a ratio of ~1.12 that is the allocator's,
not the slicing's); `--default-runtime` measures that way.

Both sides run oneDNN's convolution kernels: the supernet's depthwise layers would otherwise take the tap weight
gradient (`attentive.depthwise`) on maps smaller than their kernel (the tiny space's last stages), which static
nets never take, and the ratio would mix that speed-up into the slicing's cost. `--tap-weight-grad` times the
supernet as training runs it, taps included.

    python bench/supernet_speed.py [--rounds 5] [--repeats 3] [--threads 2] [--reference] [--tap-weight-grad] [--quick]
    python bench/supernet_speed.py --device cuda --spaces attentivenas --batch 64 --resolution 192
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
from fvcore.nn import FlopCountAnalysis

import attentive.layers as layers
from attentive import Arch, Supernet, count_flops, count_flops_batch, load_space
from attentive.cpu_runtime import tune_cpu_runtime
from attentive.environment import describe_environment, environment_summary
from attentive.depthwise import tap_weight_grad
from attentive.distributed import resolve_device

BATCH = {"tiny": 128, "attentivenas": 8}
# AttentiveNAS-A0 (the paper's smallest published model, 203 MFLOPs), the arch whose ratio the issue quoted.
A0 = {"resolution": 192, "width": [16, 16, 24, 32, 64, 112, 192, 216, 1792], "depth": [1, 3, 3, 3, 3, 3, 1],
      "kernel_size": [3, 3, 3, 3, 3, 3, 3], "expand_ratio": [1, 4, 4, 4, 4, 6, 6]}


def middle_arch(space, seed: int = 0) -> Arch:
    """The random arch whose FLOPs are closest to the median of 2,000 random archs."""
    rng = np.random.default_rng(seed)
    idx = space.sample_indices(rng, 2000)
    flops = count_flops_batch(space, idx)
    return space.arch_from_indices(idx[np.argsort(flops)[len(flops) // 2]])


@contextlib.contextmanager
def plain_slicing() -> Iterator[None]:
    """The supernet as it was before `sliced_parameters`: `param[index]`, autograd's own slice backward."""
    saved = layers.sliced_parameters
    layers.sliced_parameters = lambda *slices: tuple(param[index] for param, index, _ in slices)
    try:
        yield
    finally:
        layers.sliced_parameters = saved


def fwd_bwd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sync: bool) -> float:
    if sync:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    nn.functional.cross_entropy(model(x), y).backward()
    if sync:
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_arch(supernet: Supernet, arch: Arch, batch: int, rounds: int, repeats: int, set_to_none: bool,
              reference: bool, channels_last: bool) -> dict[str, list[float]]:
    """Per round, the ratio of medians (contender / static) for "sliced" and, with `reference`, "plain"; and
    "static_ms", the static net's median per round."""
    supernet.set_arch(arch)
    static = supernet.extract(arch).train()
    device = next(supernet.parameters()).device
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, arch.resolution, arch.resolution, generator=g).to(device)
    y = torch.randint(0, supernet.num_classes, (batch,), generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
        static = static.to(memory_format=torch.channels_last)
        supernet.to(memory_format=torch.channels_last)
    sync = device.type == "cuda"

    def sliced() -> float:
        return fwd_bwd(supernet, x, y, sync)

    def plain() -> float:
        with plain_slicing():
            return fwd_bwd(supernet, x, y, sync)

    contenders = {"static": lambda: fwd_bwd(static, x, y, sync), "sliced": sliced}
    if reference:
        contenders["plain"] = plain
    for _ in range(2):  # warm-up each, and allocate the gradients that set_to_none=False keeps
        for run in contenders.values():
            run()
    names = [name for name in contenders if name != "static"]
    ratios: dict[str, list[float]] = {name: [] for name in names}
    paired: dict[str, list[float]] = {name: [] for name in names}
    static_ms: list[float] = []
    call = 0
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):  # call by call, so that machine noise hits every contender alike
            order = list(contenders) if call % 2 == 0 else list(reversed(contenders))  # neither always first
            call += 1
            for name in order:
                supernet.zero_grad(set_to_none=set_to_none)
                static.zero_grad(set_to_none=set_to_none)
                times[name].append(contenders[name]())
            for name in names:
                paired[name].append(times[name][-1] / times["static"][-1])
        static_median = float(np.median(times["static"]))
        for name in ratios:
            ratios[name].append(float(np.median(times[name])) / static_median)
        static_ms.append(static_median * 1e3)
    return {**ratios, **{f"{name}_paired": values for name, values in paired.items()}, "static_ms": static_ms}


def spread(values: list[float]) -> str:
    return f"{np.median(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def median_interval(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """The median of `values` and its 95% bootstrap interval (percentiles of the medians of resamples)."""
    rng = np.random.default_rng(seed)
    v = np.asarray(values)
    medians = np.median(v[rng.integers(0, len(v), (resamples, len(v)))], axis=1)
    low, high = np.percentile(medians, [2.5, 97.5])
    return float(np.median(v)), float(low), float(high)


def paired_text(values: list[float]) -> str:
    median, low, high = median_interval(values)
    return f"{median:.3f} [{low:.3f}..{high:.3f}]"


def flops_throughput(space, n: int) -> float:
    idx = space.sample_indices(np.random.default_rng(0), n)
    count_flops_batch(space, idx[:100])  # build the tables once
    t0 = time.perf_counter()
    count_flops_batch(space, idx)
    return n / (time.perf_counter() - t0)


def fvcore_seconds_per_arch(space, n: int) -> float:
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


def bench_archs(space, resolution: int | None) -> list[tuple[str, Arch]]:
    archs = [("min", space.min_arch()), ("middle", middle_arch(space)), ("max", space.max_arch())]
    if space.name == "attentivenas":
        archs.append(("A0", Arch.from_dict(A0)))
    if resolution is not None:
        archs = [(label, space.validate(dataclasses.replace(arch, resolution=resolution))) for label, arch in archs]
    return archs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per arch (the spread is over rounds)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per contender and round (median)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--spaces", default="tiny,attentivenas", help="comma-separated space names")
    parser.add_argument("--archs", default="min,middle,max,A0",
                        help="comma-separated arch labels (A0: the ImageNet space only)")
    parser.add_argument("--batch", type=int, default=None, help=f"batch size for every space (default {BATCH})")
    parser.add_argument("--resolution", type=int, default=None,
                        help="run every arch at this resolution (must be allowed in each space)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--reference", action="store_true",
                        help="also time plain slicing (the full-size gradient backward) in the same rounds")
    parser.add_argument("--default-runtime", action="store_true",
                        help="keep glibc's and oneDNN's defaults instead of the settings train.py applies")
    parser.add_argument("--tap-weight-grad", action="store_true",
                        help="let the supernet's depthwise convs take the tap weight gradient where training does "
                             "(static nets never do); by default both sides run oneDNN's kernels, so the ratio is "
                             "the slicing's cost alone")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 1 call, small FLOPs section: a smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.repeats = 2, 1
    if not args.default_runtime:
        tune_cpu_runtime()  # before any tensor work, as train.py does (harmless on a GPU run)
    for name, v in (("rounds", args.rounds), ("repeats", args.repeats), ("threads", args.threads),
                    ("batch", args.batch), ("resolution", args.resolution)):
        if v is not None and v < 1:
            parser.error(f"--{name} must be a positive integer, got {v}")
    try:
        device = resolve_device(args.device)
        spaces = [load_space(name) for name in args.spaces.split(",")]
        archs = {space.name: bench_archs(space, args.resolution) for space in spaces}
        labels = args.archs.split(",")
        known = {"min", "middle", "max", "A0"}  # A0 exists in the ImageNet space only; elsewhere it is skipped
        if not set(labels) <= known:
            raise ValueError(f"unknown arch labels {sorted(set(labels) - known)} in --archs; allowed: {sorted(known)}")
        archs = {name: [(label, arch) for label, arch in space_archs if label in labels]
                 for name, space_archs in archs.items()}
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # a bad device, space name or resolution
        parser.error(str(e))
    torch.set_num_threads(args.threads)
    print(f"machine: {environment_summary(describe_environment(torch.device(device).type))}")
    runtime = "glibc/oneDNN defaults" if args.default_runtime else "train.py's CPU runtime settings"
    print(f"torch {torch.__version__}, {device}, {args.threads} threads, channels_last={args.channels_last}, {runtime}, "
          f"tap weight gradient {'on' if args.tap_weight_grad else 'off'}, "
          f"{args.rounds} rounds x {args.repeats} calls; ratio = supernet / extracted static net: median over "
          f"rounds (min..max), and paired: median of the call-by-call ratios [95% bootstrap interval]")
    header = f"{'space':<13}{'arch':<7}{'MFLOPs':>8}{'batch':>6}{'px':>5}  {'zero_grad':<18}{'static ms':>10}"
    header += f"  {'sliced ratio':<22}{'sliced, paired':<22}"
    header += f"{'plain slicing ratio':<22}{'plain, paired':<22}" if args.reference else ""
    print(header)
    for space in spaces:
        batch = args.batch or BATCH.get(space.name, 8)
        supernet = Supernet(space).to(device).train()
        for label, arch in archs[space.name]:
            for set_to_none in (False, True):
                with tap_weight_grad(args.tap_weight_grad):
                    r = time_arch(supernet, arch, batch, args.rounds, args.repeats, set_to_none, args.reference,
                                  args.channels_last)
                line = (f"{space.name:<13}{label:<7}{count_flops(space, arch):>8.1f}{batch:>6}{arch.resolution:>5}"
                        f"  {f'set_to_none={set_to_none}':<18}{np.median(r['static_ms']):>10.1f}"
                        f"  {spread(r['sliced']):<22}{paired_text(r['sliced_paired']):<22}")
                if args.reference:
                    line += f"{spread(r['plain']):<22}{paired_text(r['plain_paired']):<22}"
                print(line, flush=True)
        del supernet
    print()
    for space in spaces:
        rate = flops_throughput(space, 20_000 if args.quick else 200_000)
        fv = fvcore_seconds_per_arch(space, 1 if args.quick else 3)
        print(f"count_flops_batch {space.name:<13}{rate:>12,.0f} archs/s   fvcore {fv * 1e3:8.1f} ms/arch"
              f"   speed-up {rate * fv:>12,.0f}x")


if __name__ == "__main__":
    main()
