"""FLOPs-constrained evolutionary search and whole-front (Pareto) search, on gene-index arrays.

The objective is any score function (`attentive.scoring.ScoreFn`) mapping a batch of archs to scores, higher is
better: an accuracy predictor, a training-free proxy, or a stand-in in tests. It receives a list of `Arch`, or,
when it is an `attentive.scoring.IndexScorer` (e.g. `predictor_scorer(predictor)`), the gene-index array (n, G)
itself, which skips building Arch objects. Every arch is scored once: scores are cached by gene indices.

The constraint is analytic MFLOPs (`count_flops_batch`, vectorized). Constraint handling is repair, never
rejection sampling: a child over budget has one of its non-minimal genes, picked at random, shrunk by one option,
until it fits. Each step lowers the sum of the gene indices by one, so after at most `sum(gene_sizes - 1)` steps
every row is the min arch, which fits every budget the search accepts (budgets below it are refused up front).

`evolve` / `evolve_search`: best arch under one budget (OFA/AlphaNet-style elitist evolution: parents are the
top of the population, children are mutants and crossovers of parents). `pareto_search`: an elite archive per
FLOPs bucket over the space's whole FLOPs range (MAP-Elites style), returning the non-dominated front of score
against MFLOPs and its hypervolume.

Defaults were chosen by measurement (`python bench/search_speed.py --tune`, attentivenas space, an XGBoost
predictor fit on synthetic data, options varied one at a time): with them the evolution's regret against a long
reference run (population 1024, 120 generations) is 0 on 3 budgets x 3 seeds, in about 0.5 s per budget on
2 cores (smaller populations or fewer generations leave regret; a parent ratio of 0.5 or a mutation ratio of
0.75 too); the front search reaches 0.998 of the best hypervolume found by any run (population 1024 x 100
generations: 0.9997).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from .flops import count_flops_batch
from .mutation import crossover_indices, mutate_indices
from .scoring import IndexScorer, ScoreFn, score_batch
from .space import Arch, SearchSpace


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Candidate:
    """One scored arch: its MFLOPs (analytic) and objective score."""

    arch: Arch
    mflops: float
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "mflops": self.mflops, "score": self.score}


@dataclass
class EvolutionResult:
    best: Candidate
    top: list[Candidate]  # the best `top_k` distinct archs seen, all within the budget, best first
    max_mflops: float  # the budget searched (clamped to the largest subnet's MFLOPs)
    requested_mflops: float
    generations: int
    num_scored: int  # archs newly scored by this run (cache hits excluded)
    num_seen: int  # distinct feasible archs this run visited
    seconds: float
    history: list[float] = field(default_factory=list)  # best score after initialization and each generation

    @property
    def archs_per_second(self) -> float:
        return self.num_seen / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class ParetoResult:
    front: list[Candidate]  # non-dominated (lower MFLOPs, higher score), sorted by MFLOPs
    archive: list[Candidate]  # the per-bucket elites, sorted by MFLOPs
    hypervolume: float  # area dominated by the front, in MFLOPs x score units, w.r.t. `reference`
    reference: tuple[float, float]  # (MFLOPs, score) reference point of the hypervolume
    bucket_edges: np.ndarray
    generations: int
    num_scored: int
    num_seen: int
    seconds: float


# ---------------------------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class EvolutionOptions:
    """Options of `evolve` / `evolve_search` (pass them as keyword arguments)."""

    population: int = 512
    generations: int = 24
    parent_ratio: float = 0.25  # the top fraction of the population that breeds (and survives: elitism)
    mutation_ratio: float = 0.25  # fraction of the population made of mutants; the rest after parents is crossover
    mutate_prob: float = 0.1  # per-gene probability that a mutant's gene changes
    crossover_prob: float = 0.5  # per-gene probability that a crossover child takes the first parent's gene
    top_k: int = 1
    num_classes: int | None = None  # classifier size used for FLOPs (default: the space's)
    progress: bool = False

    def __post_init__(self) -> None:
        _check_int("population", self.population, 4)
        _check_int("generations", self.generations, 0)
        _check_int("top_k", self.top_k, 1)
        _check_fraction("parent_ratio", self.parent_ratio, low_open=True)
        _check_fraction("mutation_ratio", self.mutation_ratio)
        _check_fraction("mutate_prob", self.mutate_prob)
        _check_fraction("crossover_prob", self.crossover_prob)
        if self.parent_ratio + self.mutation_ratio > 1:
            raise ValueError(f"parent_ratio + mutation_ratio must be <= 1, got {self.parent_ratio} + "
                             f"{self.mutation_ratio}")


@dataclass(frozen=True)
class ParetoOptions:
    """Options of `pareto_search` (pass them as keyword arguments)."""

    num_buckets: int = 32
    elites_per_bucket: int = 4
    population: int = 512  # children per generation
    generations: int = 40
    mutation_ratio: float = 0.5  # fraction of children that are mutants; the rest are crossovers
    shrink_ratio: float = 0.5  # fraction of children repaired to a random FLOPs target: reaches the low buckets
    mutate_prob: float = 0.1
    crossover_prob: float = 0.5
    min_mflops: float | None = None  # FLOPs range of the front (default: the space's whole range)
    max_mflops: float | None = None
    reference_score: float | None = None  # hypervolume reference score (default: lowest score seen)
    num_classes: int | None = None
    progress: bool = False

    def __post_init__(self) -> None:
        _check_int("num_buckets", self.num_buckets, 1)
        _check_int("elites_per_bucket", self.elites_per_bucket, 1)
        _check_int("population", self.population, 2)
        _check_int("generations", self.generations, 0)
        _check_fraction("mutation_ratio", self.mutation_ratio)
        _check_fraction("shrink_ratio", self.shrink_ratio)
        _check_fraction("mutate_prob", self.mutate_prob)
        _check_fraction("crossover_prob", self.crossover_prob)


def _make_options(cls: type, options: dict[str, Any]) -> Any:
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"unknown search option(s) {unknown}; allowed: {allowed}")
    return cls(**options)


def _check_int(name: str, v: Any, minimum: int) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {v!r}")


def _check_fraction(name: str, v: Any, low_open: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1 if low_open else 0 <= v <= 1):
        raise ValueError(f"{name} must be a number in {'(0' if low_open else '[0'}, 1], got {v!r}")


# ---------------------------------------------------------------------------------------------------------------
# Objective with a cache


class Objective:
    """Wraps `score_fn` with a cache keyed by gene indices, so no arch is scored twice; every call of `score_fn`
    goes through `attentive.scoring.score_batch` (Arch list or index array, one finite score per arch).

    Pass one `Objective` to several searches (several budgets, then the whole front) to share the cache.
    `num_scored` counts the archs `score_fn` actually saw, `seconds` the time spent in it.
    """

    def __init__(self, space: SearchSpace, score_fn: ScoreFn) -> None:
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable, got {type(score_fn).__name__}")
        self.space = space
        self.score_fn = score_fn
        self.num_scored = 0
        self.seconds = 0.0
        self._cache: dict[bytes, float] = {}

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        idx = np.ascontiguousarray(idx, dtype=np.int64)
        keys = [row.tobytes() for row in idx]
        missing: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            if k not in self._cache and k not in missing:
                missing[k] = i
        if missing:
            rows = idx[list(missing.values())]
            start = time.perf_counter()
            scores = score_batch(self.score_fn, rows, self.space)
            self.seconds += time.perf_counter() - start
            self._cache.update(zip(missing.keys(), scores.tolist()))
            self.num_scored += len(rows)
        return np.array([self._cache[k] for k in keys], dtype=np.float64)


def _as_objective(space: SearchSpace, score_fn: ScoreFn | Objective) -> Objective:
    if isinstance(score_fn, Objective):
        if score_fn.space.hash != space.hash:
            raise ValueError(f"objective is for space '{score_fn.space.name}' ({score_fn.space.hash}), "
                             f"not '{space.name}' ({space.hash})")
        return score_fn
    return Objective(space, score_fn)


# ---------------------------------------------------------------------------------------------------------------
# Budgets and gene-array operators


def flops_range(space: SearchSpace, num_classes: int | None = None) -> tuple[float, float]:
    """(MFLOPs of the min arch, MFLOPs of the max arch). Shrinking any gene never adds FLOPs in a space whose
    option lists are sorted (they are), so these are the smallest and largest subnets."""
    ends = np.array([space.arch_to_indices(space.min_arch()), space.arch_to_indices(space.max_arch())])
    lo, hi = count_flops_batch(space, ends, num_classes)
    return float(lo), float(hi)


def check_budget(space: SearchSpace, max_mflops: float, num_classes: int | None = None) -> float:
    """The budget to search: `max_mflops` clamped to the largest subnet. Raises ValueError, naming the smallest
    subnet's MFLOPs, if the budget is below it (no arch of the space fits)."""
    if isinstance(max_mflops, bool) or not isinstance(max_mflops, (int, float, np.integer, np.floating)) \
            or not np.isfinite(max_mflops) or max_mflops <= 0:
        raise ValueError(f"budget must be a positive number of MFLOPs, got {max_mflops!r}")
    lo, hi = flops_range(space, num_classes)
    if max_mflops < lo:
        raise ValueError(f"budget {max_mflops:g} MFLOPs is below the smallest subnet of space '{space.name}' "
                         f"({lo:.4g} MFLOPs, the min arch); use a budget >= {lo:.4g}")
    return float(min(max_mflops, hi))


def repair(space: SearchSpace, idx: np.ndarray, max_mflops: float | np.ndarray, rng: np.random.Generator,
           num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Shrink each row over its budget until it fits: one random non-minimal gene down by one option per step.

    `max_mflops` is one budget or one per row. Bounded: at most `sum(gene_sizes - 1)` steps, after which a row is
    the min arch. Raises ValueError if a budget is below the min arch. Returns (rows, their MFLOPs).
    """
    idx = np.array(idx, dtype=np.int64, copy=True)
    budget = np.broadcast_to(np.asarray(max_mflops, dtype=np.float64), (len(idx),))
    flops = count_flops_batch(space, idx, num_classes)
    over = np.flatnonzero(flops > budget)
    max_steps = int(np.sum(np.asarray(space.gene_sizes()) - 1))
    for _ in range(max_steps):
        if over.size == 0:
            break
        rows = idx[over]
        if not (rows > 0).any(1).all():
            break  # a min arch over its budget: reported below
        # Uniform choice among the row's non-minimal genes: noise in [1, 2) on them, 0 elsewhere, then argmax.
        noise = np.where(rows > 0, rng.random(rows.shape) + 1.0, 0.0)
        rows[np.arange(len(rows)), noise.argmax(1)] -= 1
        idx[over] = rows
        flops[over] = count_flops_batch(space, rows, num_classes)
        over = over[flops[over] > budget[over]]
    if over.size:
        lo, _ = flops_range(space, num_classes)
        raise ValueError(f"budget {float(budget[over[0]]):g} MFLOPs is below the smallest subnet of space "
                         f"'{space.name}' ({lo:.4g} MFLOPs)")
    return idx, flops


def _unique_rows(idx: np.ndarray) -> np.ndarray:
    """Distinct rows in order of first appearance (deterministic)."""
    if len(idx) == 0:
        return idx
    _, first = np.unique(idx, axis=0, return_index=True)
    return idx[np.sort(first)]


def _rank(scores: np.ndarray, flops: np.ndarray) -> np.ndarray:
    """Order best first: higher score, then fewer MFLOPs, then earlier position (stable)."""
    return np.lexsort((np.arange(len(scores)), flops, -scores))


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, leave=False)


class _Seen:
    """Every distinct feasible arch a run scored, for top-k and fronts."""

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}
        self.rows: list[np.ndarray] = []
        self.flops: list[float] = []
        self.scores: list[float] = []

    def add(self, idx: np.ndarray, flops: np.ndarray, scores: np.ndarray) -> None:
        for row, f, s in zip(idx, flops, scores):
            k = row.tobytes()
            if k not in self.keys:
                self.keys[k] = len(self.rows)
                self.rows.append(row.copy())
                self.flops.append(float(f))
                self.scores.append(float(s))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array(self.rows), np.array(self.flops), np.array(self.scores)


def _candidates(space: SearchSpace, idx: np.ndarray, flops: np.ndarray, scores: np.ndarray) -> list[Candidate]:
    return [Candidate(space.arch_from_indices(r), float(f), float(s)) for r, f, s in zip(idx, flops, scores)]


def _seed_rows(space: SearchSpace, budget: float, num_classes: int | None) -> np.ndarray:
    """The min arch, and the max arch when it fits: a monotone objective finds its optimum at once."""
    rows = [space.arch_to_indices(space.min_arch())]
    hi = space.arch_to_indices(space.max_arch())
    if count_flops_batch(space, np.array([hi]), num_classes)[0] <= budget:
        rows.append(hi)
    return np.array(rows, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Single-budget evolution


def evolve(space: SearchSpace, score_fn: ScoreFn | Objective, max_mflops: float, seed: int = 0,
           **options: Any) -> tuple[Arch, float, float]:
    """Best arch found with MFLOPs <= `max_mflops`: returns `(arch, mflops, score)`.

    `score_fn` maps a list of `Arch` (a gene-index array if it is an `IndexScorer`) to scores, higher is
    better. Deterministic for a seed. Options: see `EvolutionOptions`. A budget above the largest subnet is
    clamped to it (the max arch is then in the initial population); a budget below the smallest raises
    ValueError naming the smallest subnet's MFLOPs.
    """
    best = evolve_search(space, score_fn, max_mflops, seed=seed, **options).best
    return best.arch, best.mflops, best.score


def evolve_search(space: SearchSpace, score_fn: ScoreFn | Objective, max_mflops: float, seed: int = 0,
                  **options: Any) -> EvolutionResult:
    """`evolve` with the full result: top-k candidates, counts, timing and the per-generation best score."""
    opts: EvolutionOptions = _make_options(EvolutionOptions, options)
    objective = _as_objective(space, score_fn)
    budget = check_budget(space, max_mflops, opts.num_classes)
    rng = np.random.Generator(np.random.PCG64(seed))
    sizes = np.asarray(space.gene_sizes(), dtype=np.int64)
    n_parents = max(2, int(round(opts.population * opts.parent_ratio)))
    n_mutants = int(round(opts.population * opts.mutation_ratio))
    n_crossovers = max(0, opts.population - n_parents - n_mutants)
    start, scored_before = time.perf_counter(), objective.num_scored
    seen = _Seen()

    def fill(pop: np.ndarray) -> np.ndarray:
        # Duplicates waste slots: top up once with fresh repaired samples (one draw, so bounded).
        missing = opts.population - len(pop)
        if missing > 0:
            fresh, _ = repair(space, space.sample_indices(rng, missing), budget, rng, opts.num_classes)
            pop = _unique_rows(np.concatenate([pop, fresh]))
        return pop

    init = np.concatenate([_seed_rows(space, budget, opts.num_classes), space.sample_indices(rng, opts.population)])
    pop, _ = repair(space, init[: opts.population], budget, rng, opts.num_classes)
    pop = fill(_unique_rows(pop))
    flops = count_flops_batch(space, pop, opts.num_classes)
    scores = objective(pop)
    seen.add(pop, flops, scores)
    history = [float(scores.max())]

    for _ in _progress(range(opts.generations), opts.progress, f"evolve <= {budget:g} MFLOPs"):
        order = _rank(scores, flops)[:n_parents]
        parents = pop[order]
        mutants = mutate_indices(parents[rng.integers(len(parents), size=n_mutants)], sizes, opts.mutate_prob, rng)
        crossovers = crossover_indices(parents[rng.integers(len(parents), size=n_crossovers)],
                                       parents[rng.integers(len(parents), size=n_crossovers)], opts.crossover_prob, rng)
        children, _ = repair(space, np.concatenate([mutants, crossovers]), budget, rng, opts.num_classes)
        pop = fill(_unique_rows(np.concatenate([parents, children])))
        flops = count_flops_batch(space, pop, opts.num_classes)
        scores = objective(pop)
        seen.add(pop, flops, scores)
        history.append(float(scores.max()))

    all_idx, all_flops, all_scores = seen.arrays()
    assert (all_flops <= budget).all()  # repair guarantees it; a regression here must never export
    top = _rank(all_scores, all_flops)[: opts.top_k]
    candidates = _candidates(space, all_idx[top], all_flops[top], all_scores[top])
    return EvolutionResult(
        best=candidates[0], top=candidates, max_mflops=budget, requested_mflops=float(max_mflops),
        generations=opts.generations, num_scored=objective.num_scored - scored_before, num_seen=len(all_idx),
        seconds=time.perf_counter() - start, history=history,
    )


# ---------------------------------------------------------------------------------------------------------------
# Whole-front search


def non_dominated(mflops: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (fewer or equal MFLOPs and strictly higher score, or equal
    score and strictly fewer MFLOPs), sorted by MFLOPs. Of exact duplicates the first is kept."""
    mflops, scores = np.asarray(mflops, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(mflops)), -scores, mflops))
    keep, best = [], -np.inf
    for i in order:
        if scores[i] > best:
            keep.append(i)
            best = scores[i]
    return np.array(keep, dtype=np.int64)


def hypervolume(mflops: np.ndarray, scores: np.ndarray, reference: tuple[float, float]) -> float:
    """Area (MFLOPs x score) dominated by the points and bounded by `reference` = (max MFLOPs, min score)."""
    ref_flops, ref_score = reference
    mflops, scores = np.asarray(mflops, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    inside = (mflops <= ref_flops) & (scores > ref_score)
    if not inside.any():
        return 0.0
    f, s = mflops[inside], scores[inside]
    front = non_dominated(f, s)
    f, s = f[front], s[front]
    widths = np.diff(np.append(f, ref_flops))
    return float(np.sum(widths * (s - ref_score)))


def pareto_search(space: SearchSpace, score_fn: ScoreFn | Objective, seed: int = 0, **options: Any) -> ParetoResult:
    """Front of score against MFLOPs over the space's FLOPs range: an elite archive per FLOPs bucket.

    Each generation breeds children from the archive (mutants and crossovers of elites, some repaired to a random
    FLOPs target so the low buckets fill) and keeps the `elites_per_bucket` best of every bucket. The front is the
    non-dominated set of every arch scored. Deterministic for a seed. Options: see `ParetoOptions`.
    """
    opts: ParetoOptions = _make_options(ParetoOptions, options)
    objective = _as_objective(space, score_fn)
    lo, hi = flops_range(space, opts.num_classes)
    if opts.min_mflops is not None:
        lo = max(lo, float(opts.min_mflops))
    if opts.max_mflops is not None:
        hi = check_budget(space, opts.max_mflops, opts.num_classes)
    if hi < lo:
        raise ValueError(f"empty FLOPs range: min_mflops {lo:g} > max_mflops {hi:g}")
    rng = np.random.Generator(np.random.PCG64(seed))
    sizes = np.asarray(space.gene_sizes(), dtype=np.int64)
    edges = np.linspace(lo, hi, opts.num_buckets + 1)
    start, scored_before = time.perf_counter(), objective.num_scored
    seen = _Seen()

    def targets(n: int) -> np.ndarray:
        return lo + rng.random(n) * (hi - lo)

    def bucket_of(f: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(edges, f, side="right") - 1, 0, opts.num_buckets - 1)

    # Initial archs spread over the range: random archs repaired to uniform FLOPs targets, plus the two ends.
    first, _ = repair(space, space.sample_indices(rng, opts.population), targets(opts.population), rng,
                      opts.num_classes)
    archive = _unique_rows(np.concatenate([_seed_rows(space, hi, opts.num_classes), first]))
    archive, _ = repair(space, archive, hi, rng, opts.num_classes)
    if opts.min_mflops is not None:
        archive = archive[count_flops_batch(space, archive, opts.num_classes) >= lo]

    def select(pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pool = _unique_rows(pool)
        f = count_flops_batch(space, pool, opts.num_classes)
        s = objective(pool)
        seen.add(pool, f, s)
        b = bucket_of(f)
        # Best first, then keep the first `elites_per_bucket` of each bucket.
        order = _rank(s, f)
        rank_in_bucket = np.zeros(len(pool), dtype=np.int64)
        counts = np.zeros(opts.num_buckets, dtype=np.int64)
        for i in order:
            rank_in_bucket[i] = counts[b[i]]
            counts[b[i]] += 1
        keep = np.sort(np.flatnonzero(rank_in_bucket < opts.elites_per_bucket))
        return pool[keep], f[keep], s[keep]

    archive, arch_flops, arch_scores = select(archive)
    n_mutants = int(round(opts.population * opts.mutation_ratio))
    n_crossovers = opts.population - n_mutants
    n_shrink = int(round(opts.population * opts.shrink_ratio))
    for _ in _progress(range(opts.generations), opts.progress, "pareto front"):
        mutants = mutate_indices(archive[rng.integers(len(archive), size=n_mutants)], sizes, opts.mutate_prob, rng)
        crossovers = crossover_indices(archive[rng.integers(len(archive), size=n_crossovers)],
                                       archive[rng.integers(len(archive), size=n_crossovers)], opts.crossover_prob, rng)
        children = np.concatenate([mutants, crossovers])
        budgets = np.full(len(children), hi)
        shrink = rng.permutation(len(children))[:n_shrink]
        budgets[shrink] = targets(n_shrink)
        children, child_flops = repair(space, children, budgets, rng, opts.num_classes)
        if opts.min_mflops is not None:
            children = children[child_flops >= lo]
        archive, arch_flops, arch_scores = select(np.concatenate([archive, children]))

    all_idx, all_flops, all_scores = seen.arrays()
    in_range = (all_flops >= lo) & (all_flops <= hi)
    all_idx, all_flops, all_scores = all_idx[in_range], all_flops[in_range], all_scores[in_range]
    front = non_dominated(all_flops, all_scores)
    ref_score = float(all_scores.min()) if opts.reference_score is None else float(opts.reference_score)
    reference = (float(hi), ref_score)
    order = np.argsort(arch_flops, kind="stable")
    return ParetoResult(
        front=_candidates(space, all_idx[front], all_flops[front], all_scores[front]),
        archive=_candidates(space, archive[order], arch_flops[order], arch_scores[order]),
        hypervolume=hypervolume(all_flops[front], all_scores[front], reference),
        reference=reference, bucket_edges=edges, generations=opts.generations,
        num_scored=objective.num_scored - scored_before, num_seen=len(all_idx),
        seconds=time.perf_counter() - start,
    )

