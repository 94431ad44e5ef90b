"""Does the attentive sampler's fixed pool of random archs matter? (issue 12)

The FLOPs buckets hold a pool of `pool_size` random archs (10^6 by default); best-up / worst-up draws their
candidates from the pool's slice of the target bucket. This script measures what the pool changes against
drawing candidates from the whole space, for a real training schedule:

1. coverage: over the schedule's candidate draws (slots x num_trials), how many are distinct archs and how many
   repeat an earlier candidate, from the pool and from the whole space (a fresh pool per step, i.e. the same
   draw with an unbounded pool; estimated by drawing every candidate from a pool that is never reused);
2. what gets picked: with an accuracy predictor (the one stored in a training checkpoint), the predicted top-1
   and the MFLOPs of best-up picks drawn from the pool, from another pool of the same size (another seed) and
   from pools with candidates mutated out of the pool (`mutate_prob`), with a two-sample Kolmogorov-Smirnov test
   between each and the default pool.

Usage:
    python bench/sampler_pool.py --checkpoint runs/fashion_mnist/last.pt [--slots 2000]
    python bench/sampler_pool.py --schedule-only   # coverage of the demo and ImageNet schedules, no predictor
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import ks_2samp

from attentive import count_flops_batch, load_space
from attentive.sampling import AttentiveSampler, FlopsBuckets
from attentive.scoring import predictor_scorer

# Candidate draws of two schedules: (space, attentive slots = epochs x steps x middle subnets, num_trials).
SCHEDULES = {
    # configs/train/fashion_mnist.yaml: 3 attentive epochs x 421 steps x 1 middle subnet, best-of-3
    "demo (tiny, Fashion-MNIST)": ("tiny", 3 * 421 * 1, 3),
    # configs/train/imagenet_attentivenas.yaml: 330 attentive epochs x 625 steps (2048 images) x 2 middles, best-of-3
    "ImageNet recipe (attentivenas)": ("attentivenas", 330 * 625 * 2, 3),
}


def pool_coverage(buckets: FlopsBuckets, slots: int, k: int, seed: int) -> dict[str, float]:
    """Distinct pool rows among `slots * k` candidate draws made the sampler's way (bucket from the prior, then a
    uniform row of the bucket's slice), in chunks so that memory stays bounded."""
    rng = np.random.Generator(np.random.PCG64(seed))
    seen = np.zeros(len(buckets.pool), dtype=bool)
    total, repeats = 0, 0
    for start in range(0, slots, 1 << 18):
        n = min(1 << 18, slots - start)
        b = buckets.sample_buckets(n, rng)
        rows = rng.integers(buckets.offsets[b][:, None], buckets.offsets[b + 1][:, None], size=(n, k)).reshape(-1)
        for r in np.split(rows, max(1, len(rows) // 65536)):  # sequential within a chunk: a row drawn twice counts
            uniq, first = np.unique(r, return_index=True)
            repeats += int(seen[uniq].sum()) + (len(r) - len(uniq))
            seen[uniq] = True
        total += len(rows)
    return {"draws": total, "distinct": int(seen.sum()), "repeated_draws": repeats,
            "repeated_fraction": repeats / total, "pool_rows": len(buckets.pool)}


def whole_space_repeat_fraction(space, draws: int) -> float:
    """Expected fraction of draws that repeat an earlier one when each is uniform over the whole space
    (birthday bound, archs treated as equally likely: an upper bound on it for in-bucket draws is not needed at
    these sizes)."""
    n = float(space.num_archs)
    expected_distinct = n * -np.expm1(draws * np.log1p(-1.0 / n)) if n > draws else float(draws)
    return max(0.0, 1.0 - expected_distinct / draws)


def picks(space, buckets: FlopsBuckets, score, slots: int, k: int, seed: int, mutate_prob: float) -> tuple:
    sampler = AttentiveSampler(space, buckets, "bestup", num_trials=k, seed=seed, mutate_prob=mutate_prob)
    archs = sampler.sample(slots, score)
    idx = np.array([space.arch_to_indices(a) for a in archs])
    return np.asarray(score(idx)), count_flops_batch(space, idx)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoint", type=Path, help="training checkpoint with a fitted predictor (tiny space)")
    p.add_argument("--schedule-only", action="store_true", help="only the coverage of the schedules")
    p.add_argument("--slots", type=int, default=2000, help="best-up picks per variant")
    p.add_argument("--pool-size", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not args.schedule_only and args.checkpoint is None:
        print("sampler_pool.py: error: --checkpoint is needed unless --schedule-only", file=sys.stderr)
        return 2
    print(f"coverage of the candidate draws, pool of {args.pool_size:,} archs vs the whole space")
    print(f"{'schedule':34s} {'draws':>10s} {'distinct':>10s} {'repeated (pool)':>16s} {'repeated (space)':>17s}")
    for name, (space_name, slots, k) in SCHEDULES.items():
        space = load_space(space_name)
        buckets = FlopsBuckets.build(space, pool_size=args.pool_size, seed=args.seed)
        c = pool_coverage(buckets, slots, k, args.seed + 1)
        print(f"{name:34s} {c['draws']:10,d} {c['distinct']:10,d} {c['repeated_fraction']:15.1%} "
              f"{whole_space_repeat_fraction(space, c['draws']):16.1%}")
    if args.schedule_only:
        return 0

    from attentive.checkpoint import load_checkpoint
    from predictors.xgb import AccuracyPredictor

    ckpt = load_checkpoint(args.checkpoint)
    space = load_space(ckpt["space"]["name"])
    if space.hash != ckpt["space_hash"] or ckpt.get("predictor") is None:
        print(f"sampler_pool.py: error: {args.checkpoint} needs a fitted predictor of the built-in "
              f"'{space.name}' space", file=sys.stderr)
        return 2
    predictor = AccuracyPredictor.from_state(ckpt["predictor"], space, where=f"{args.checkpoint}: predictor")
    score = predictor_scorer(predictor)
    s = ckpt["config"]["sampler"]
    k = s["num_trials"]
    variants = {
        "pool seed 0 (default)": (FlopsBuckets.build(space, s["flops_step"], args.pool_size, seed=0), 0.0),
        "pool seed 1": (FlopsBuckets.build(space, s["flops_step"], args.pool_size, seed=1), 0.0),
        "pool seed 0, mutate_prob 0.3": (FlopsBuckets.build(space, s["flops_step"], args.pool_size, seed=0), 0.3),
    }
    print(f"\nbest-up-{k} picks scored by {args.checkpoint}'s predictor, {args.slots} slots each")
    print(f"{'candidates from':32s} {'pred. mean':>10s} {'p10':>7s} {'p90':>7s} {'MFLOPs mean':>12s} "
          f"{'KS p (pred.)':>12s} {'KS p (MFLOPs)':>13s}")
    base = None
    for name, (buckets, mutate_prob) in variants.items():
        pred, mflops = picks(space, buckets, score, args.slots, k, args.seed + 2, mutate_prob)
        if base is None:
            base = (pred, mflops)
        p_pred = ks_2samp(pred, base[0]).pvalue if base[0] is not pred else float("nan")
        p_flops = ks_2samp(mflops, base[1]).pvalue if base[1] is not mflops else float("nan")
        print(f"{name:32s} {pred.mean():10.2f} {np.percentile(pred, 10):7.2f} {np.percentile(pred, 90):7.2f} "
              f"{mflops.mean():12.2f} {p_pred:12.3f} {p_flops:13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
