"""Time one training step (sandwich rule, 4 subnets, batch 8, CPU, synthetic data) per sampling variant:

* uniform            - the middle subnets drawn uniformly
* bestup-3 predictor - AttentiveNAS BestUp-3 over FLOPs buckets, candidates scored by an XGBoost predictor
                       (fitted here on synthetic scores: the cost, not the quality, is measured)
* bestup-3 loss      - AttentiveNAS's released variant: each candidate's minibatch loss, without gradients

on the tiny space and on the AttentiveNAS (ImageNet) space, and print the ratios to uniform side by side.
Variants run round-robin, step by step, on the same batches, so machine noise hits them alike; the median step
is reported, with the time spent choosing archs (sampling + scoring) per step.
Reference point: AttentiveNAS's loss-based BestUp-3 step costs 1.40x its uniform step; the goal for
predictor-driven bestup is at most 1.02x.

    python bench/train_speed.py [--steps-tiny 30] [--steps-imagenet 4] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attentive.config import load_config  # noqa: E402
from attentive.data import set_loader_epoch  # noqa: E402
from attentive.environment import environment_summary  # noqa: E402
from attentive.flops import count_flops_batch  # noqa: E402
from attentive.trainer import Trainer  # noqa: E402

VARIANTS = {
    "uniform": {"sampler.name": "uniform"},
    "bestup-3 predictor": {"sampler.name": "bestup", "sampler.scorer": "predictor", "sampler.warmup_epochs": 1},
    "bestup-3 loss": {"sampler.name": "bestup", "sampler.scorer": "loss", "sampler.warmup_epochs": 0},
}
SPACES = {"tiny": 28, "attentivenas": 224}  # synthetic image size; the supernet resizes to each arch's resolution


def build_trainer(space: str, image_size: int, variant: dict, steps: int, out: Path, *, device: str = "cpu",
                  batch: int = 8, amp: str = "none") -> Trainer:
    """A Trainer on synthetic images with enough for `steps` batches; `variant` overrides sampler keys."""
    updates = {
        "space": space, "output_dir": str(out), "device": device, "amp": amp, "data.name": "synthetic",
        "data.image_size": image_size, "data.batch_size": batch, "data.holdout_fraction": 0.1,
        "data.synthetic_num_train": batch * (steps + 4) * 10 // 9 + 8, "data.synthetic_num_test": 8,
        "train.num_subnets": 4, "sampler.num_trials": 3, "sched.epochs": 2, "sched.warmup_epochs": 0,
        "log.progress": False, "log.tensorboard": False, **variant,
    }
    cfg = load_config(None, updates=updates)
    if variant.get("sampler.scorer") != "predictor":  # xgboost is imported only here: bench/amp_speed.py runs without it
        t = Trainer(cfg)
    else:
        from predictors.xgb import AccuracyPredictor

        t = Trainer(cfg, predictor_backend=AccuracyPredictor)
        rng = np.random.Generator(np.random.PCG64(0))
        idx = t.space.sample_indices(rng, 300)
        mflops = count_flops_batch(t.space, idx, t.num_classes)
        fake_top1 = 60 + 20 * mflops / mflops.max() + rng.normal(0, 1, len(idx))  # cost matters, not quality
        archs = [t.space.arch_from_indices(row) for row in idx]
        t.predictor = AccuracyPredictor.fit(t.space, archs, fake_top1, seed=0, teacher="gp")
    assert (variant["sampler.name"] == "uniform") != t.attentive_active()
    return t


def bench_space(space: str, image_size: int, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: build_trainer(space, image_size, v, steps + warmup, Path(tmp) / name.replace(" ", "_"))
                    for name, v in VARIANTS.items()}
        first = next(iter(trainers.values()))
        set_loader_epoch(first.train_loader, 0)
        batches = [b for _, b in zip(range(steps + warmup), first.train_loader)]
        times: dict[str, list[float]] = {n: [] for n in trainers}
        choose: dict[str, list[float]] = {n: [] for n in trainers}
        for name, t in trainers.items():  # time spent choosing archs: wrap the trainer's own sampling call
            original = t.sample_middle

            def timed(num, images, labels, _orig=original, _name=name):
                start = time.perf_counter()
                try:
                    return _orig(num, images, labels)
                finally:
                    choose[_name].append(time.perf_counter() - start)

            t.sample_middle = timed
        for i, (images, labels) in enumerate(batches):
            for name, t in trainers.items():
                start = time.perf_counter()
                t.train_step(images, labels)
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
                else:
                    choose[name].pop()
        base = statistics.median(times["uniform"])
        return {n: {"step_s": statistics.median(times[n]), "ratio": statistics.median(times[n]) / base,
                    "choose_ms": 1000 * statistics.median(choose[n])} for n in trainers}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps-tiny", type=int, default=30)
    parser.add_argument("--steps-imagenet", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {environment_summary()}")
    results = {}
    for space, image_size in SPACES.items():
        steps = args.steps_tiny if space == "tiny" else args.steps_imagenet
        print(f"[{space}] timing {steps} steps per variant ...", file=sys.stderr, flush=True)
        results[space] = bench_space(space, image_size, steps, args.warmup)
    print(f"\nTraining step on CPU ({torch.get_num_threads()} threads), batch 8, 4 subnets (sandwich), median step:")
    header = f"{'variant':<20}" + "".join(f"{s + ' s/step':>20}{'x uniform':>11}{'choose ms':>11}" for s in SPACES)
    print(header)
    for name in VARIANTS:
        row = f"{name:<20}"
        for space in SPACES:
            r = results[space][name]
            row += f"{r['step_s']:>20.3f}{r['ratio']:>11.3f}{r['choose_ms']:>11.2f}"
        print(row)
    print("reference: AttentiveNAS loss-based BestUp-3 = 1.40x uniform; goal for predictor bestup <= 1.02x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
