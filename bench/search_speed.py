"""Speed of predictor-driven search on the ImageNet (attentivenas) space: 3 budgets plus the whole front.

    python bench/search_speed.py                 # timings with the default options
    python bench/search_speed.py --tune          # how the default options were chosen (regret vs cost)

The objective is an XGBoost AccuracyPredictor fit on synthetic data (a smooth accuracy-vs-FLOPs curve plus
per-gene effects and noise) when `predictors` is importable, else a vectorized stand-in scorer; the output says
which. Prints generations, archs scored per second and seconds per budget.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attentive import count_flops_batch, load_space  # noqa: E402
from attentive.scoring import IndexScorer, predictor_scorer  # noqa: E402
from attentive.search import EvolutionOptions, Objective, evolve_search, flops_range, pareto_search  # noqa: E402

BUDGETS = (300.0, 450.0, 600.0)  # MFLOPs: AttentiveNAS A1..A6 territory


def synthetic_top1(space, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Saturating accuracy in FLOPs, per-gene effects of either sign, noise: a plausible predictor target."""
    flops = count_flops_batch(space, idx)
    effects = np.random.default_rng(0).normal(0, 0.3, idx.shape[1])
    return 80 - 25 * np.exp(-flops / 350) + idx @ effects + rng.normal(0, 0.3, len(idx))


def build_objective(space, num_fit: int):
    try:
        from predictors.xgb import AccuracyPredictor
    except ImportError:
        effects = np.random.default_rng(0).normal(0, 0.3, len(space.gene_sizes()))

        def stand_in(idx):
            return 80 - 25 * np.exp(-count_flops_batch(space, idx) / 350) + idx @ effects

        return IndexScorer(stand_in), "stand-in vectorized scorer (predictors not importable)"
    rng = np.random.default_rng(0)
    idx = space.sample_indices(rng, num_fit)
    start = time.perf_counter()
    predictor = AccuracyPredictor.fit(space, idx, synthetic_top1(space, idx, rng), seed=0, teacher="gp")
    return predictor_scorer(predictor), (f"XGBoost AccuracyPredictor (default params) fit on {num_fit} synthetic "
                                         f"archs in {time.perf_counter() - start:.1f}s")


def speed(space, score_fn, seed: int) -> None:
    objective = Objective(space, score_fn)
    total = 0.0
    print(f"{'budget':>8} {'gens':>5} {'archs':>7} {'archs/s':>9} {'seconds':>8} {'best MFLOPs':>11} {'predicted':>9}")
    for b in BUDGETS:
        r = evolve_search(space, objective, b, seed=seed)
        total += r.seconds
        print(f"{b:8g} {r.generations:5d} {r.num_seen:7d} {r.archs_per_second:9,.0f} {r.seconds:8.2f} "
              f"{r.best.mflops:11.1f} {r.best.score:9.3f}")
    print(f"3 budgets: {total:.2f}s in all (objective calls {objective.seconds:.2f}s)")
    p = pareto_search(space, objective, seed=seed)
    print(f"whole front: {p.generations} generations, {p.num_seen} archs ({p.num_seen / p.seconds:,.0f}/s), "
          f"{p.seconds:.2f}s, {len(p.front)} archs on the front, hypervolume {p.hypervolume:.4g}")
    print(f"total search time {total + p.seconds:.2f}s")


def tune(space, score_fn, seeds: int) -> None:
    """Regret (reference best minus found best, predicted top-1 points) averaged over budgets and seeds, for
    options varied one at a time around the defaults. The reference is the best of a long run per budget."""
    objective = Objective(space, score_fn)
    reference = {b: max(evolve_search(space, objective, b, seed=s, population=1024, generations=120).best.score
                        for s in range(2)) for b in BUDGETS}
    defaults = EvolutionOptions()
    grid = {
        "population": [64, 128, 256, 512],
        "generations": [8, 16, 24, 40],
        "parent_ratio": [0.125, 0.25, 0.5],
        "mutation_ratio": [0.25, 0.5, 0.75],
        "mutate_prob": [0.05, 0.1, 0.2],
    }
    print(f"defaults: {defaults}")
    print(f"{'option':>15} {'value':>7} {'mean regret':>12} {'max regret':>11} {'archs':>7} {'s/budget':>9}")
    for name, values in grid.items():
        for v in values:
            regrets, archs, seconds = [], [], []
            for b in BUDGETS:
                for s in range(seeds):
                    r = evolve_search(space, score_fn, b, seed=100 + s, **{name: v})
                    regrets.append(reference[b] - r.best.score)
                    archs.append(r.num_seen)
                    seconds.append(r.seconds)
            mark = " *" if getattr(defaults, name) == v else ""
            print(f"{name:>15} {v:7g} {np.mean(regrets):12.4f} {np.max(regrets):11.4f} {np.mean(archs):7.0f} "
                  f"{np.mean(seconds):9.2f}{mark}")


def tune_front(space, score_fn) -> None:
    """Hypervolume of the whole-front search relative to the best front any run found, for options varied one at
    a time around the defaults (same reference point for all: the space's max MFLOPs, the min arch's score)."""
    from attentive.search import ParetoOptions, hypervolume, non_dominated

    objective = Objective(space, score_fn)
    ref_score = float(objective(np.array([space.arch_to_indices(space.min_arch())]))[0])
    long_run = pareto_search(space, objective, seed=0, population=1024, generations=100,
                             reference_score=ref_score)
    defaults = ParetoOptions()
    grid = {
        "population": [128, 256, 512],
        "generations": [16, 32, 48],
        "num_buckets": [16, 32, 64],
        "elites_per_bucket": [1, 4, 8],
        "shrink_ratio": [0.0, 0.25, 0.5],
    }
    runs = []
    for name, values in grid.items():
        for v in values:
            for s in range(2):
                r = pareto_search(space, score_fn, seed=100 + s, reference_score=ref_score, **{name: v})
                runs.append((name, v, r))
    points = [(c.mflops, c.score) for r in [long_run] + [r for *_, r in runs] for c in r.front]
    f, sc = np.array(points).T
    best = non_dominated(f, sc)
    best_hv = hypervolume(f[best], sc[best], long_run.reference)
    print(f"front defaults: {defaults}")
    print(f"long run (population 1024, 100 generations): {long_run.hypervolume / best_hv:.5f} of the best front")
    print(f"{'option':>18} {'value':>6} {'hv / best':>10} {'archs':>7} {'seconds':>8}")
    for name, values in grid.items():
        for v in values:
            rs = [r for n, val, r in runs if n == name and val == v]
            mark = " *" if getattr(defaults, name) == v else ""
            print(f"{name:>18} {v:6g} {np.mean([r.hypervolume for r in rs]) / best_hv:10.5f} "
                  f"{np.mean([r.num_seen for r in rs]):7.0f} {np.mean([r.seconds for r in rs]):8.2f}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="attentivenas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-fit", type=int, default=1000, help="synthetic archs the predictor is fit on")
    parser.add_argument("--tune", action="store_true", help="sweep the evolution options (slow: minutes)")
    parser.add_argument("--tune-seeds", type=int, default=3)
    args = parser.parse_args()
    space = load_space(args.space)
    lo, hi = flops_range(space)
    score_fn, name = build_objective(space, args.num_fit)
    print(f"space {space.name}: {space.num_archs:.3g} archs, {lo:.1f}..{hi:.1f} MFLOPs; objective: {name}")
    if args.tune:
        tune(space, score_fn, args.tune_seeds)
        tune_front(space, score_fn)
    else:
        speed(space, score_fn, args.seed)


if __name__ == "__main__":
    main()
