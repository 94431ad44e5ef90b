"""Sampler speed: FLOPs-bucket table build (cold / cached), in-bucket draws per second, and time per middle-subnet
slot for drawing + scoring k candidates, against a naive rejection loop like the AttentiveNAS reference
(sample an arch, count its FLOPs, retry until it lands in the target bucket, capped at 100 tries, then accept
the miss). Both paths score their candidates with the same cheap linear stand-in scorer.

Usage: python bench/sampler_speed.py [--pool-size 1000000] [--slots 2000] [--naive-slots 100] [--k 3]
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from attentive import count_flops, load_space
from attentive.sampling import AttentiveSampler, FlopsBuckets, default_step_mflops
from attentive.scoring import IndexScorer

NAIVE_MAX_TRIALS = 100  # the reference's max_trials


def linear_scorer(space, seed: int = 0):
    """Score = sum of one weight per (gene, option): a linear model on one-hot gene features, pure numpy."""
    sizes = np.asarray(space.gene_sizes())
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    weights = np.random.Generator(np.random.PCG64(seed)).standard_normal(int(sizes.sum()))

    def score(archs_or_indices):
        idx = archs_or_indices if isinstance(archs_or_indices, np.ndarray) else np.array(
            [space.arch_to_indices(a) for a in archs_or_indices])
        return weights[idx + offsets].sum(axis=1)

    return score


def naive_slot(space, buckets: FlopsBuckets, k: int, rng: np.random.Generator, score) -> tuple[int, int]:
    """One slot the reference way; returns (FLOPs evaluations, candidates accepted outside the bucket)."""
    lo, hi = buckets.bucket_range(int(buckets.sample_buckets(1, rng)[0]))
    cands, evals, misses = [], 0, 0
    for _ in range(k):
        for _ in range(NAIVE_MAX_TRIALS):
            arch = space.sample(rng)
            mflops = count_flops(space, arch)
            evals += 1
            if lo <= mflops < hi:
                break
        else:
            misses += 1  # the reference keeps the last arch anyway
        cands.append(arch)
    scores = score(cands)
    _ = cands[int(np.argmax(scores))]
    return evals, misses


def bench_space(name: str, args: argparse.Namespace) -> None:
    space = load_space(name)
    step = default_step_mflops(space)
    print(f"\n== space {name}: step {step:g} MFLOPs, pool {args.pool_size:,} archs, k={args.k}")
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = FlopsBuckets.build(space, step, pool_size=args.pool_size, cache_dir=cache_dir)
        warm = FlopsBuckets.build(space, step, pool_size=args.pool_size, cache_dir=cache_dir)
        assert warm.loaded_from_cache and np.array_equal(warm.pool, cold.pool)
        size_mb = cold.cache_path.stat().st_size / 2**20
    buckets = warm
    print(f"bucket table: {buckets.num_buckets} buckets over [{buckets.edges[0]:g}, {buckets.edges[-1]:g}) MFLOPs; "
          f"build cold {cold.build_seconds:.2f} s, cached {warm.build_seconds * 1e3:.0f} ms ({size_mb:.0f} MiB npz)")

    rng = np.random.Generator(np.random.PCG64(1))
    all_buckets = np.arange(buckets.num_buckets)
    t = time.perf_counter()
    drawn = buckets.draw_many(all_buckets, 20_000, rng)
    bulk = drawn.shape[0] * drawn.shape[1] / (time.perf_counter() - t)
    t, calls = time.perf_counter(), 2000
    for b in rng.integers(0, buckets.num_buckets, calls):
        buckets.draw(int(b), 1, rng)
    single = calls / (time.perf_counter() - t)
    t = time.perf_counter()
    mutated = buckets.draw_many(all_buckets, 2000, rng, mutate_prob=0.1)
    with_mutation = mutated.shape[0] * mutated.shape[1] / (time.perf_counter() - t)
    print(f"in-bucket draws/s: bulk {bulk:,.0f}; one draw(b, 1) call at a time {single:,.0f}; "
          f"bulk with mutation (p=0.1, 4 tries) {with_mutation:,.0f}")

    score = linear_scorer(space)
    results = {}
    for label, score_fn in (("index-array scorer", IndexScorer(score)), ("list[Arch] scorer", score)):
        sampler = AttentiveSampler(space, buckets, "bestup", num_trials=args.k, seed=0)
        sampler.sample(2, score_fn)  # warm up
        per_step = 2  # the sandwich's middle subnets per step, as AttentiveNAS (one call scores both slots)
        t = time.perf_counter()
        for _ in range(args.slots // per_step):
            sampler.sample(per_step, score_fn)
        results[label] = (time.perf_counter() - t) / (args.slots // per_step * per_step)

    rng = np.random.Generator(np.random.PCG64(2))
    t, evals, misses = time.perf_counter(), 0, 0
    for _ in range(args.naive_slots):
        e, m = naive_slot(space, buckets, args.k, rng, score)
        evals, misses = evals + e, misses + m
    naive = (time.perf_counter() - t) / args.naive_slots
    print(f"time per slot (draw + score k={args.k}):")
    for label, seconds in results.items():
        print(f"  ours, {label:<19} {seconds * 1e3:7.3f} ms   ({naive / seconds:,.0f}x faster than naive)")
    print(f"  naive rejection loop       {naive * 1e3:7.3f} ms   ({evals / args.naive_slots / args.k:.1f} FLOPs counts"
          f" per candidate, {misses}/{args.naive_slots * args.k} candidates accepted OUTSIDE their bucket)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool-size", type=int, default=1_000_000)
    p.add_argument("--slots", type=int, default=2000)
    p.add_argument("--naive-slots", type=int, default=100)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--spaces", nargs="+", default=["attentivenas", "tiny"])
    args = p.parse_args()
    for name in args.spaces:
        bench_space(name, args)


if __name__ == "__main__":
    main()
