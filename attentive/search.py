"""Cost-constrained evolutionary search and whole-front (Pareto) search, on gene-index arrays.

The objective is any score function (`attentive.scoring.ScoreFn`) mapping a batch of archs to scores, higher is
better: an accuracy predictor, a training-free proxy, or a stand-in in tests. It receives a list of `Arch`, or,
when it is an `attentive.scoring.IndexScorer` (e.g. `predictor_scorer(predictor)`), the gene-index array (n, G)
itself, which skips building Arch objects. Every arch is scored once: scores are cached by gene indices.

A constraint is a `Cost` (a vectorized function of gene-index arrays: analytic MFLOPs, `flops_cost`, by default;
a latency table's predicted ms, see attentive.latency) with a budget (`Constraint`); an arch is feasible when every
cost is within its budget. Constraint handling is repair, never rejection sampling: a child over any budget has
one of its non-minimal genes, picked at random, shrunk by one option, until all fit. Each step lowers the sum of
the gene indices by one, so after at most `sum(gene_sizes - 1)` steps every row is the min arch: the min arch is
the floor, and a budget below its cost is refused up front. The max arch is taken as the costliest (true for
FLOPs; for a measured cost it is the largest net's, up to measurement noise).

`evolve` / `evolve_search`: best arch under one budget (OFA/AlphaNet-style elitist evolution: parents are the
top of the population, children are mutants and crossovers of parents). `pareto_search`: an elite archive per
bucket of its x-axis cost (MFLOPs, or e.g. latency) over the space's whole range (MAP-Elites style), returning the
non-dominated front of score against that cost and its hypervolume.

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
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np

from .flops import count_flops_batch
from .mutation import crossover_indices, mutate_indices
from .scoring import IndexScorer, ScoreFn, score_batch
from .space import Arch, SearchSpace


# ---------------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class Candidate:
    """One scored arch: its MFLOPs (analytic), objective score, and the other costs the search used (name, value),
    e.g. (("latency_ms", 1.3),); empty for a FLOPs-only search."""

    arch: Arch
    mflops: float
    score: float
    costs: tuple[tuple[str, float], ...] = ()

    def cost(self, name: str) -> float:
        """The value of cost `name` ("mflops" or one of `costs`)."""
        if name == FLOPS:
            return self.mflops
        for key, value in self.costs:
            if key == name:
                return value
        raise KeyError(f"candidate has no cost {name!r}; it has {[FLOPS] + [k for k, _ in self.costs]}")

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch.to_dict(), "mflops": self.mflops, "score": self.score, **dict(self.costs)}


@dataclass
class EvolutionResult:
    best: Candidate
    top: list[Candidate]  # the best `top_k` distinct archs seen, all within the budget, best first
    max_mflops: float | None  # the FLOPs budget searched (clamped to the largest subnet's); None: no FLOPs budget
    requested_mflops: float | None
    generations: int
    num_scored: int  # archs newly scored by this run (cache hits excluded)
    num_seen: int  # distinct feasible archs this run visited
    seconds: float
    history: list[float] = field(default_factory=list)  # best score after initialization and each generation
    budgets: dict[str, float] = field(default_factory=dict)  # every budget searched, by cost name (clamped)
    requested: dict[str, float] = field(default_factory=dict)  # every budget as given

    @property
    def archs_per_second(self) -> float:
        return self.num_seen / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class ParetoResult:
    front: list[Candidate]  # non-dominated (lower axis cost, higher score), sorted by the axis cost
    archive: list[Candidate]  # the per-bucket elites, sorted by the axis cost
    hypervolume: float  # area dominated by the front, in axis cost x score units, w.r.t. `reference`
    reference: tuple[float, float]  # (axis cost, score) reference point of the hypervolume
    bucket_edges: np.ndarray  # in axis cost units
    generations: int
    num_scored: int
    num_seen: int
    seconds: float
    axis: str = "mflops"  # name of the x-axis cost (`Cost.name`)


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
    min_mflops: float | None = None  # FLOPs range of the front (default: the space's whole range; FLOPs axis only)
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
# Costs, budgets and gene-array operators

FLOPS = "mflops"  # the name of the analytic FLOPs cost


@dataclass(frozen=True)
class Cost:
    """A vectorized cost of archs: `fn` maps a gene-index array (n, G) to n floats, lower is cheaper. `name` keys
    it in results and reports (e.g. "mflops", "latency_ms"), `unit` is for messages (e.g. "MFLOPs", "ms")."""

    name: str
    unit: str
    fn: Callable[[np.ndarray], np.ndarray]

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        values = np.asarray(self.fn(idx), dtype=np.float64)
        if values.shape != (len(idx),):
            raise ValueError(f"cost {self.name!r} returned shape {values.shape} for {len(idx)} archs; it must "
                             f"return one number per arch")
        return values


@dataclass(frozen=True)
class Constraint:
    """`cost` of an arch must be <= `budget` (in the cost's unit)."""

    cost: Cost
    budget: float


def flops_cost(space: SearchSpace, num_classes: int | None = None) -> Cost:
    """Analytic MFLOPs (`count_flops_batch`) as a `Cost`: the default constraint and front axis."""
    return Cost(FLOPS, "MFLOPs", partial(count_flops_batch, space, num_classes=num_classes))


def cost_range(space: SearchSpace, cost: Cost) -> tuple[float, float]:
    """(cost of the min arch, cost of the max arch): the floor and the ceiling of every budget."""
    ends = np.array([space.arch_to_indices(space.min_arch()), space.arch_to_indices(space.max_arch())])
    lo, hi = cost(ends)
    return float(lo), float(hi)


def flops_range(space: SearchSpace, num_classes: int | None = None) -> tuple[float, float]:
    """(MFLOPs of the min arch, MFLOPs of the max arch). Shrinking any gene never adds FLOPs in a space whose
    option lists are sorted (they are), so these are the smallest and largest subnets."""
    return cost_range(space, flops_cost(space, num_classes))


def check_constraint(space: SearchSpace, constraint: Constraint) -> float:
    """The budget to search: `constraint.budget` clamped to the max arch's cost. Raises ValueError, naming the min
    arch's cost, if the budget is below it (the floor of repair: nothing the search can reach fits)."""
    budget, unit = constraint.budget, constraint.cost.unit
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)) \
            or not np.isfinite(budget) or budget <= 0:
        raise ValueError(f"budget must be a positive number of {unit}, got {budget!r}")
    lo, hi = cost_range(space, constraint.cost)
    if budget < lo:
        raise ValueError(f"budget {budget:g} {unit} is below the smallest subnet of space '{space.name}' "
                         f"({lo:.4g} {unit}, the min arch); use a budget >= {lo:.4g}")
    return float(min(budget, hi))


def check_budget(space: SearchSpace, max_mflops: float, num_classes: int | None = None) -> float:
    """`check_constraint` of a FLOPs budget: `max_mflops` clamped to the largest subnet; ValueError below the
    smallest."""
    return check_constraint(space, Constraint(flops_cost(space, num_classes), max_mflops))


def _constraints(space: SearchSpace, max_mflops: float | None, constraints: Sequence[Constraint],
                 num_classes: int | None) -> list[Constraint]:
    """The FLOPs budget (first, when given) and `constraints`, each checked and clamped; ValueError for none or
    for a cost constrained twice."""
    given = ([Constraint(flops_cost(space, num_classes), max_mflops)] if max_mflops is not None else []) \
        + list(constraints)
    if not given:
        raise ValueError("no constraint: give max_mflops and/or constraints=[Constraint(cost, budget), ...]")
    names = [c.cost.name for c in given]
    if len(set(names)) < len(names):
        raise ValueError(f"each cost takes one budget, got the costs {names}")
    return [Constraint(c.cost, check_constraint(space, c)) for c in given]


def _repair(space: SearchSpace, idx: np.ndarray, limits: Sequence[tuple[Cost, float | np.ndarray]],
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`repair` with (cost, budget or one budget per row) pairs; returns (rows, their costs (len(limits), n))."""
    idx = np.array(idx, dtype=np.int64, copy=True)
    budgets = np.stack([np.broadcast_to(np.asarray(b, dtype=np.float64), (len(idx),)) for _, b in limits])
    costs = np.stack([cost(idx) for cost, _ in limits])
    over = np.flatnonzero((costs > budgets).any(0))
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
        costs[:, over] = np.stack([cost(rows) for cost, _ in limits])
        over = over[(costs[:, over] > budgets[:, over]).any(0)]
    if over.size:
        k = int(np.argmax(costs[:, over[0]] > budgets[:, over[0]]))
        cost = limits[k][0]
        lo, _ = cost_range(space, cost)
        raise ValueError(f"budget {float(budgets[k, over[0]]):g} {cost.unit} is below the smallest subnet of space "
                         f"'{space.name}' ({lo:.4g} {cost.unit})")
    return idx, costs


def repair(space: SearchSpace, idx: np.ndarray, max_mflops: float | np.ndarray | None, rng: np.random.Generator,
           num_classes: int | None = None, *, constraints: Sequence[Constraint] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Shrink each row over a budget until all fit: one random non-minimal gene down by one option per step.

    `max_mflops` is one FLOPs budget, one per row, or None (no FLOPs budget); `constraints` adds other costs and
    their budgets. Bounded: at most `sum(gene_sizes - 1)` steps, after which a row is the min arch. Raises
    ValueError if a budget is below the min arch. Returns (rows, their MFLOPs).
    """
    flops = flops_cost(space, num_classes)
    limits = ([(flops, max_mflops)] if max_mflops is not None else []) + [(c.cost, c.budget) for c in constraints]
    if not limits:
        raise ValueError("no constraint: give max_mflops and/or constraints")
    idx, costs = _repair(space, idx, limits, rng)
    return idx, (costs[0] if max_mflops is not None else flops(idx))


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
    """Every distinct feasible arch a run scored, for top-k and fronts: its MFLOPs, score and other costs."""

    def __init__(self) -> None:
        self.keys: dict[bytes, int] = {}
        self.rows: list[np.ndarray] = []
        self.flops: list[float] = []
        self.scores: list[float] = []
        self.costs: list[np.ndarray] = []

    def add(self, idx: np.ndarray, flops: np.ndarray, scores: np.ndarray, costs: np.ndarray) -> None:
        for row, f, s, c in zip(idx, flops, scores, costs.T):
            k = row.tobytes()
            if k not in self.keys:
                self.keys[k] = len(self.rows)
                self.rows.append(row.copy())
                self.flops.append(float(f))
                self.scores.append(float(s))
                self.costs.append(c.copy())

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(rows, MFLOPs, scores, other costs (k, n))."""
        return np.array(self.rows), np.array(self.flops), np.array(self.scores), np.array(self.costs).T


class _Costs:
    """MFLOPs (always: reports and ties) and the other costs of a search, evaluated together on a population."""

    def __init__(self, space: SearchSpace, num_classes: int | None, others: Sequence[Cost]) -> None:
        self.flops = flops_cost(space, num_classes)
        self.others = [c for c in others if c.name != FLOPS]

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(MFLOPs, other costs (k, n))."""
        return self.flops(idx), np.array([c(idx) for c in self.others]).reshape(len(self.others), len(idx))

    def of(self, name: str, flops: np.ndarray, others: np.ndarray) -> np.ndarray:
        if name == FLOPS:
            return flops
        return others[[c.name for c in self.others].index(name)]

    def candidates(self, space: SearchSpace, idx: np.ndarray, flops: np.ndarray, scores: np.ndarray,
                   others: np.ndarray) -> list[Candidate]:
        names = [c.name for c in self.others]
        return [Candidate(space.arch_from_indices(r), float(f), float(s), tuple(zip(names, map(float, o))))
                for r, f, s, o in zip(idx, flops, scores, others.T)]


def _seed_rows(space: SearchSpace, limits: Sequence[tuple[Cost, float]]) -> np.ndarray:
    """The min arch, and the max arch when it fits: a monotone objective finds its optimum at once."""
    rows = [space.arch_to_indices(space.min_arch())]
    hi = space.arch_to_indices(space.max_arch())
    if all(cost(np.array([hi]))[0] <= budget for cost, budget in limits):
        rows.append(hi)
    return np.array(rows, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------------------
# Single-budget evolution


def evolve(space: SearchSpace, score_fn: ScoreFn | Objective, max_mflops: float | None = None, seed: int = 0, *,
           constraints: Sequence[Constraint] = (), **options: Any) -> tuple[Arch, float, float]:
    """Best arch found with MFLOPs <= `max_mflops` and every other cost within its budget (`constraints`):
    returns `(arch, mflops, score)`.

    `score_fn` maps a list of `Arch` (a gene-index array if it is an `IndexScorer`) to scores, higher is
    better. Deterministic for a seed. Options: see `EvolutionOptions`. A budget above the largest subnet's cost is
    clamped to it (the max arch is then in the initial population); a budget below the smallest raises
    ValueError naming the smallest subnet's cost.
    """
    best = evolve_search(space, score_fn, max_mflops, seed=seed, constraints=constraints, **options).best
    return best.arch, best.mflops, best.score


def evolve_search(space: SearchSpace, score_fn: ScoreFn | Objective, max_mflops: float | None = None, seed: int = 0,
                  *, constraints: Sequence[Constraint] = (), **options: Any) -> EvolutionResult:
    """`evolve` with the full result: top-k candidates, counts, timing and the per-generation best score. At equal
    score the cheaper arch ranks first, by the first constraint's cost (MFLOPs when `max_mflops` is given)."""
    opts: EvolutionOptions = _make_options(EvolutionOptions, options)
    objective = _as_objective(space, score_fn)
    checked = _constraints(space, max_mflops, constraints, opts.num_classes)
    limits = [(c.cost, c.budget) for c in checked]
    budget_text = " and ".join(f"<= {c.budget:g} {c.cost.unit}" for c in checked)
    costs_of = _Costs(space, opts.num_classes, [c.cost for c in checked])
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
            fresh, _ = _repair(space, space.sample_indices(rng, missing), limits, rng)
            pop = _unique_rows(np.concatenate([pop, fresh]))
        return pop

    def evaluate(pop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flops, others = costs_of(pop)
        scores = objective(pop)
        seen.add(pop, flops, scores, others)
        return costs_of.of(checked[0].cost.name, flops, others), scores

    init = np.concatenate([_seed_rows(space, limits), space.sample_indices(rng, opts.population)])
    pop, _ = _repair(space, init[: opts.population], limits, rng)
    pop = fill(_unique_rows(pop))
    ties, scores = evaluate(pop)
    history = [float(scores.max())]

    for _ in _progress(range(opts.generations), opts.progress, f"evolve {budget_text}"):
        order = _rank(scores, ties)[:n_parents]
        parents = pop[order]
        mutants = mutate_indices(parents[rng.integers(len(parents), size=n_mutants)], sizes, opts.mutate_prob, rng)
        crossovers = crossover_indices(parents[rng.integers(len(parents), size=n_crossovers)],
                                       parents[rng.integers(len(parents), size=n_crossovers)], opts.crossover_prob, rng)
        children, _ = _repair(space, np.concatenate([mutants, crossovers]), limits, rng)
        pop = fill(_unique_rows(np.concatenate([parents, children])))
        ties, scores = evaluate(pop)
        history.append(float(scores.max()))

    all_idx, all_flops, all_scores, all_others = seen.arrays()
    for c in checked:  # repair guarantees it; a regression here must never export
        assert (costs_of.of(c.cost.name, all_flops, all_others) <= c.budget).all()
    top = _rank(all_scores, costs_of.of(checked[0].cost.name, all_flops, all_others))[: opts.top_k]
    candidates = costs_of.candidates(space, all_idx[top], all_flops[top], all_scores[top], all_others[:, top])
    requested = {c.cost.name: float(c.budget) for c in ([Constraint(costs_of.flops, max_mflops)]
                                                       if max_mflops is not None else []) + list(constraints)}
    budgets = {c.cost.name: c.budget for c in checked}
    return EvolutionResult(
        best=candidates[0], top=candidates, max_mflops=budgets.get(FLOPS), requested_mflops=requested.get(FLOPS),
        generations=opts.generations, num_scored=objective.num_scored - scored_before, num_seen=len(all_idx),
        seconds=time.perf_counter() - start, history=history, budgets=budgets, requested=requested,
    )


# ---------------------------------------------------------------------------------------------------------------
# Whole-front search


def non_dominated(mflops: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of the points no other point beats (fewer or equal cost, e.g. MFLOPs, and strictly higher score,
    or equal score and strictly lower cost), sorted by cost. Of exact duplicates the first is kept."""
    mflops, scores = np.asarray(mflops, dtype=np.float64), np.asarray(scores, dtype=np.float64)
    order = np.lexsort((np.arange(len(mflops)), -scores, mflops))
    keep, best = [], -np.inf
    for i in order:
        if scores[i] > best:
            keep.append(i)
            best = scores[i]
    return np.array(keep, dtype=np.int64)


def hypervolume(mflops: np.ndarray, scores: np.ndarray, reference: tuple[float, float]) -> float:
    """Area (cost x score, e.g. MFLOPs x score) dominated by the points and bounded by `reference` = (max cost,
    min score)."""
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


def pareto_search(space: SearchSpace, score_fn: ScoreFn | Objective, seed: int = 0, *, axis: Cost | None = None,
                  constraints: Sequence[Constraint] = (), **options: Any) -> ParetoResult:
    """Front of score against the `axis` cost (default MFLOPs) over the space's range of it: an elite archive per
    bucket of that cost.

    Each generation breeds children from the archive (mutants and crossovers of elites, some repaired to a random
    axis-cost target so the low buckets fill) and keeps the `elites_per_bucket` best of every bucket. The front is
    the non-dominated set of every arch scored. `constraints` bound other costs (all the archs keep within them);
    one on the axis cost caps the range. Deterministic for a seed. Options: see `ParetoOptions` (`min_mflops` /
    `max_mflops` bound a FLOPs axis only).
    """
    opts: ParetoOptions = _make_options(ParetoOptions, options)
    objective = _as_objective(space, score_fn)
    axis = flops_cost(space, opts.num_classes) if axis is None else axis
    if axis.name != FLOPS and (opts.min_mflops is not None or opts.max_mflops is not None):
        raise ValueError(f"min_mflops/max_mflops bound a FLOPs axis; the axis is {axis.name!r}: give "
                         f"constraints=[Constraint(cost, budget)] instead")
    lo, hi = cost_range(space, axis)
    if opts.min_mflops is not None:
        lo = max(lo, float(opts.min_mflops))
    if opts.max_mflops is not None:
        hi = check_budget(space, opts.max_mflops, opts.num_classes)
    checked = [Constraint(c.cost, check_constraint(space, c)) for c in constraints]
    for c in checked:
        if c.cost.name == axis.name:
            hi = min(hi, c.budget)
    others = [(c.cost, c.budget) for c in checked if c.cost.name != axis.name]
    if hi < lo:
        raise ValueError(f"empty {axis.unit} range: min_mflops {lo:g} > max_mflops {hi:g}" if axis.name == FLOPS
                         else f"empty {axis.unit} range: {lo:g} > {hi:g}")
    costs_of = _Costs(space, opts.num_classes, [axis] + [cost for cost, _ in others])
    rng = np.random.Generator(np.random.PCG64(seed))
    sizes = np.asarray(space.gene_sizes(), dtype=np.int64)
    edges = np.linspace(lo, hi, opts.num_buckets + 1)
    start, scored_before = time.perf_counter(), objective.num_scored
    seen = _Seen()

    def targets(n: int) -> np.ndarray:
        return lo + rng.random(n) * (hi - lo)

    def bucket_of(f: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(edges, f, side="right") - 1, 0, opts.num_buckets - 1)

    # Initial archs spread over the range: random archs repaired to uniform axis targets, plus the two ends.
    first, _ = _repair(space, space.sample_indices(rng, opts.population), [(axis, targets(opts.population))] + others,
                       rng)
    archive = _unique_rows(np.concatenate([_seed_rows(space, [(axis, hi)] + others), first]))
    archive, _ = _repair(space, archive, [(axis, hi)] + others, rng)
    if opts.min_mflops is not None:
        archive = archive[axis(archive) >= lo]

    def select(pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pool = _unique_rows(pool)
        flops, other_costs = costs_of(pool)
        f = costs_of.of(axis.name, flops, other_costs)
        s = objective(pool)
        seen.add(pool, flops, s, other_costs)
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

    archive, arch_axis, arch_scores = select(archive)
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
        children, child_costs = _repair(space, children, [(axis, budgets)] + others, rng)
        if opts.min_mflops is not None:
            children = children[child_costs[0] >= lo]
        archive, arch_axis, arch_scores = select(np.concatenate([archive, children]))

    all_idx, all_flops, all_scores, all_others = seen.arrays()
    all_axis = costs_of.of(axis.name, all_flops, all_others)
    in_range = (all_axis >= lo) & (all_axis <= hi)
    all_idx, all_flops, all_scores, all_others = (all_idx[in_range], all_flops[in_range], all_scores[in_range],
                                                  all_others[:, in_range])
    all_axis = all_axis[in_range]
    front = non_dominated(all_axis, all_scores)
    ref_score = float(all_scores.min()) if opts.reference_score is None else float(opts.reference_score)
    reference = (float(hi), ref_score)
    order = np.argsort(arch_axis, kind="stable")
    arch_flops, arch_others = costs_of(archive[order])
    return ParetoResult(
        front=costs_of.candidates(space, all_idx[front], all_flops[front], all_scores[front], all_others[:, front]),
        archive=costs_of.candidates(space, archive[order], arch_flops, arch_scores[order], arch_others),
        hypervolume=hypervolume(all_axis[front], all_scores[front], reference),
        reference=reference, bucket_edges=edges, generations=opts.generations,
        num_scored=objective.num_scored - scored_before, num_seen=len(all_idx),
        seconds=time.perf_counter() - start, axis=axis.name,
    )
