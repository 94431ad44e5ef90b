"""The depthwise weight gradient by taps (`attentive.depthwise`) against oneDNN's, side by side, on the CPU:

1. per layer: the weight gradient of a depthwise convolution at batch 128, channels-last, for the shapes of the
   tiny space's last stages (5x5 kernels on 4x4 and 3x3 maps), oneDNN vs taps, median of --repeats;
2. per training step: the Fashion-MNIST demo's step shape (tiny space, 28 px synthetic images, batch 128,
   3 subnets, uniform middle subnet) on two identical trainers fed the same batches, so they train the same
   archs step by step; one runs with the taps, one without (`tap_weight_grad(False)`), alternating. Prints the
   median step of each and the median of the per-step ratios.

Process settings as in train.py (`tune_cpu_runtime`). Machines are noisy: compare the ratios, not the seconds.

    python bench/depthwise_grad.py [--steps 40] [--warmup 10] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attentive.cpu_runtime import tune_cpu_runtime  # noqa: E402

# (channels, map side, kernel) at batch 128: the last stages' depthwise convs in the demo (28 and 24 px), and
# one that oneDNN keeps (a 7x7 map is larger than the kernel).
LAYER_SHAPES = [(384, 4, 5), (288, 4, 5), (480, 4, 5), (144, 4, 5), (384, 3, 5), (240, 3, 5), (128, 7, 5)]


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def bench_layers(repeats: int) -> None:
    import torch

    from attentive.depthwise import tap_weight_grad_of, uses_tap_weight_grad

    gen = torch.Generator().manual_seed(0)
    print(f"depthwise weight gradient, batch 128, channels-last, {torch.get_num_threads()} threads, median of "
          f"{repeats}:")
    print(f"{'shape':>18} {'oneDNN ms':>10} {'taps ms':>8} {'oneDNN/taps':>12}")
    for chs, side, kernel in LAYER_SHAPES:
        x = torch.randn(128, chs, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
        g = torch.randn(128, chs, side, side, generator=gen).contiguous(memory_format=torch.channels_last)
        w = torch.randn(chs, 1, kernel, kernel, generator=gen, requires_grad=True)
        args = (g, x, w, None, [1, 1], [kernel // 2] * 2, [1, 1], False, [0, 0], chs, [False, True, False])
        onednn = _median_ms(lambda: torch.ops.aten.convolution_backward(*args), repeats)
        used = uses_tap_weight_grad(x, w, 1, kernel // 2)
        taps = _median_ms(lambda: tap_weight_grad_of(x, g, kernel), repeats)
        note = "" if used else "  (oneDNN's: taps not used here)"
        print(f"{f'{chs}x{side}x{side} k{kernel}':>18} {onednn:>10.2f} {taps:>8.2f} {onednn / taps:>11.2f}x{note}")


def bench_steps(steps: int, warmup: int, threads: int) -> None:
    from _experiment_utils import demo_step_updates
    from attentive.config import load_config
    from attentive.data import set_loader_epoch
    from attentive.depthwise import tap_weight_grad
    from attentive.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: Trainer(load_config(None, updates=demo_step_updates(Path(tmp) / name, threads,
                                                                              steps + warmup)))
                    for name in ("taps", "oneDNN")}
        loader = trainers["taps"].train_loader
        set_loader_epoch(loader, 0)
        times: dict[str, list[float]] = {name: [] for name in trainers}
        for i, (images, labels) in zip(range(steps + warmup), loader):
            for name, trainer in trainers.items():
                with tap_weight_grad(name == "taps"):
                    start = time.perf_counter()
                    trainer.train_step(images, labels)
                    elapsed = time.perf_counter() - start
                if i >= warmup:
                    times[name].append(elapsed)
    ratios = [b / a for a, b in zip(times["taps"], times["oneDNN"])]
    print(f"\ntraining step (tiny space, 28 px, batch 128, 3 subnets, {threads} threads), {steps} steps each after "
          f"{warmup} untimed, same archs and batches:")
    for name, values in times.items():
        print(f"  {name:7s} median step {statistics.median(values):.3f} s")
    print(f"  oneDNN / taps: {statistics.median(times['oneDNN']) / statistics.median(times['taps']):.3f}x "
          f"(ratio of medians), {statistics.median(ratios):.3f}x (median per-step ratio)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per variant")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per variant first")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per layer shape")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for name, value, least in (("--steps", args.steps, 1), ("--repeats", args.repeats, 1),
                               ("--threads", args.threads, 1), ("--warmup", args.warmup, 0)):
        if value < least:
            parser.error(f"{name} must be at least {least}, got {value}")
    tune_cpu_runtime()  # before any tensor work, as train.py does
    import torch

    from attentive.environment import environment_summary

    torch.set_num_threads(args.threads)
    print(f"machine: {environment_summary()}")
    bench_layers(args.repeats)
    bench_steps(args.steps, args.warmup, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
