"""Time one sandwich training step per precision: fp32, bf16 autocast, fp16 autocast with a GradScaler.

The trainer's own step (`Trainer.train_step`: largest, sampled and smallest subnets, in-place distillation) on
synthetic images, one Trainer per precision, all with the same seed: the same initial weights, the same subnets
step by step, the same batches. The precisions take turns step by step, so machine noise hits them alike. Prints
the median step, its ratio to fp32, peak accelerator memory per step (CUDA), and the largest subnet's
cross-entropy at the first step next to fp32's (a numerics check: bf16/fp16 should agree to about 1e-2).

    python bench/amp_speed.py --device cuda                                    # ImageNet space, batch 64
    python bench/amp_speed.py --device cpu --space tiny --batch 32 --precisions none,bf16 --steps 4   # CPU smoke

fp16 needs CUDA (the config refuses it on the CPU). Synthetic data: speed only, never accuracy.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_speed import SPACES, build_trainer  # noqa: E402  (SPACES: synthetic image size per space)

from attentive.config import AMP_MODES  # noqa: E402
from attentive.data import set_loader_epoch  # noqa: E402
from attentive.distributed import resolve_device  # noqa: E402
from attentive.environment import describe_environment, environment_summary  # noqa: E402


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda or cuda:N")
    p.add_argument("--space", default="attentivenas", choices=sorted(SPACES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precisions", default="none,bf16,fp16", help=f"comma-separated amp modes {AMP_MODES}; none = fp32")
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per precision first")
    p.add_argument("--num-subnets", type=int, default=4, help="subnets per sandwich step (the ImageNet recipe's 4)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    problems = [f"--precisions: unknown mode {p!r} (allowed: {', '.join(AMP_MODES)})" for p in precisions
                if p not in AMP_MODES]
    if not precisions:
        problems.append("--precisions is empty")
    for name in ("batch", "steps", "num_subnets"):
        if getattr(args, name) < (2 if name == "num_subnets" else 1):
            problems.append(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if args.warmup < 0:
        problems.append(f"--warmup must be >= 0, got {args.warmup}")
    try:
        device = resolve_device(args.device)
    except (ValueError, RuntimeError) as e:
        problems.append(f"--device: {e}")
        device = None
    if device is not None and device.type != "cuda" and "fp16" in precisions:
        problems.append(f"--precisions fp16 needs a CUDA device (got {device}); use bf16 on the CPU")
    if problems:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {'; '.join(problems)}", file=sys.stderr)
        return 2

    print(f"machine: {environment_summary(describe_environment(device.type))}")
    results = measure(args.space, args.batch, precisions, args.steps, args.warmup, args.num_subnets, device)
    cuda = device.type == "cuda"
    print(f"\nSandwich step ({args.num_subnets} subnets), {args.space} space, batch {args.batch}, {device}"
          + ("" if cuda else f", {torch.get_num_threads()} threads") + f", torch {torch.__version__}; median of "
          f"{args.steps} steps after {args.warmup} warm-up; ratio to {precisions[0]}:")
    print(f"{'amp':<6}{'median s':>10}{'min..max s':>18}{'ratio':>8}{'peak MiB':>10}{'loss@1':>10}{'finite':>8}")
    for p, r in results.items():
        spread = f"{r['min_s']:.4f}..{r['max_s']:.4f}"
        peak = f"{r['peak_mib']:.0f}" if cuda else "-"
        print(f"{p:<6}{r['median_s']:>10.4f}{spread:>18}{r['ratio']:>8.3f}{peak:>10}{r['first_loss']:>10.4f}"
              f"{str(r['finite']):>8}")
    return 0 if all(r["finite"] for r in results.values()) else 1


def measure(space: str, batch: int, precisions: list[str], steps: int, warmup: int, num_subnets: int,
            device: torch.device) -> dict[str, dict]:
    """Per precision: median/min/max step seconds, ratio to the first precision's median, peak CUDA MiB per step
    (0 on the CPU), the largest subnet's loss at step 1, and whether every loss was finite."""
    cuda = device.type == "cuda"
    total = steps + warmup
    with tempfile.TemporaryDirectory() as tmp:
        variant = {"sampler.name": "uniform", "train.num_subnets": num_subnets}
        trainers = {p: build_trainer(space, SPACES[space], variant, total, Path(tmp) / p, device=str(device),
                                     batch=batch, amp=p) for p in precisions}
        first = next(iter(trainers.values()))
        set_loader_epoch(first.train_loader, 0)
        batches = [b for _, b in zip(range(total), first.train_loader)]
        times: dict[str, list[float]] = {p: [] for p in trainers}
        peak_mib = {p: 0.0 for p in trainers}
        first_loss: dict[str, float] = {}
        finite = {p: True for p in trainers}
        print(f"[{space}] {len(precisions)} precisions x {total} steps, batch {batch}, on {device} ...",
              file=sys.stderr, flush=True)
        for i, (images, labels) in enumerate(batches):
            for p, t in trainers.items():
                if cuda:
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                out = t.train_step(images, labels)
                if cuda:
                    torch.cuda.synchronize(device)
                    peak_mib[p] = max(peak_mib[p], torch.cuda.max_memory_allocated(device) / 2**20)
                if i >= warmup:
                    times[p].append(time.perf_counter() - start)
                if i == 0:
                    first_loss[p] = out.losses[0]
                finite[p] = finite[p] and all(math.isfinite(v) for v in out.losses)
    base = statistics.median(times[precisions[0]])
    return {p: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                "ratio": statistics.median(ts) / base, "peak_mib": peak_mib[p], "first_loss": first_loss[p],
                "finite": finite[p]} for p, ts in times.items()}


if __name__ == "__main__":
    sys.exit(main())
