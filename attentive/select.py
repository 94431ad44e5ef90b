"""Search-and-select: from a trained supernet and a fast objective to one measured, exported subnet per budget.
This is the library behind ``search.py``.

A budget (`Budget`) is MFLOPs, a latency in ms predicted by a latency table (attentive.latency), or both: the export
must satisfy each. FLOPs budgets may be given as plain numbers.

1. `search_budgets`: for each budget, evolution under its constraints (attentive.search.evolve_search) keeps
   the top-K archs; a whole-front search (attentive.search.pareto_search) traces the predicted front over the
   space's range of MFLOPs, or of latency when a latency table is given. One cached `Objective` is shared, so no
   arch is scored twice.
2. `candidate_rows`: what to measure: the top-K of every budget, the min and max nets and `front_measure` archs
   spread along the predicted front (the rest of the front is kept in the table, unmeasured).
3. `measure_candidates`: BN recalibrated on training images, top-1 on the held-out split of the training set
   (attentive.measure.measure_archs).
4. `choose_per_budget`: for each budget, among all measured archs that fit it, the best held-out top-1, except
   that a larger arch behind it by no more than `tie_z` paired standard errors (the images the two disagree on;
   default 1) is exported instead: a difference the held-out split cannot resolve does not decide, and the
   larger arch is still within what the user budgeted (docs/results.md, "Which measured arch to export"). Only
   the chosen archs are exported (attentive.export.export_subnet), and only then is their test top-1 measured,
   for the report (attentive.report). With a latency table each export also records its predicted latency and the
   latency measured on the exported model (its ONNX file for onnxruntime, the static net for torch) as the table
   was built.

`search_and_select` runs the whole pipeline into one output directory; `export_arch` exports one given arch.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset

from .checkpoint import load_supernet
from .cpu_runtime import use_channels_last
from .data import DEFAULT_CALIB_BATCHES, DataSplits, build_loader, calibration_batches
from .export import export_subnet
from .fileio import atomic_directory
from .fileio import BadFileError
from .flops import count_flops, count_params
from .latency import LatencyTable, measure_latency
from .measure import measure_archs
from .metrics import paired_difference
from .report import budget_dir_name, write_pareto, write_summary
from .scoring import ScoreFn
from .search import (Constraint, Cost, EvolutionOptions, EvolutionResult, Objective, ParetoOptions, ParetoResult,
                     check_budget, check_constraint, cost_range, evolve_search, flops_range, hypervolume,
                     non_dominated, pareto_search)
from .space import Arch, SearchSpace, load_space
from .supernet import Supernet

# An objective that costs a forward/backward pass of a fresh subnet per arch (training-free proxies) gets far
# smaller searches than a predictor (thousands of archs per second).
SMALL_SEARCH = {"population": 16, "generations": 4}
SMALL_FRONT = {"population": 16, "generations": 3, "num_buckets": 8, "elites_per_bucket": 1}


@dataclass(frozen=True)
class SearchObjective:
    """The fast objective of a search: `score_fn` (higher is better; an `IndexScorer` gets gene-index arrays),
    a description for the reports, and whether its scores are accuracies (then the plot shows the predicted front
    on the top-1 axis)."""

    score_fn: ScoreFn
    description: str
    predicts_accuracy: bool = True
    expensive: bool = False  # True: use SMALL_SEARCH / SMALL_FRONT unless the population/generations are given


LATENCY = "latency_ms"  # the latency cost's name: a row key, a Candidate cost


@dataclass(frozen=True)
class Budget:
    """One export's budget: analytic MFLOPs, latency in ms (predicted by the search's latency table), or both
    (then the export satisfies each)."""

    mflops: float | None = None
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        if self.mflops is None and self.latency_ms is None:
            raise ValueError("a budget needs MFLOPs and/or milliseconds")

    @property
    def label(self) -> str:
        """Its key in search.json and in the roles: "5" (MFLOPs only, as before latency budgets), "1.5ms",
        "5mflops_1.5ms"."""
        if self.latency_ms is None:
            return f"{self.mflops:g}"
        return budget_dir_name(self.mflops, self.latency_ms).removeprefix("subnet_")

    @property
    def dir_name(self) -> str:
        return budget_dir_name(self.mflops, self.latency_ms)

    def describe(self) -> str:
        """"5 MFLOPs", "1.5 ms" or "5 MFLOPs and 1.5 ms"."""
        return " and ".join(([f"{self.mflops:g} MFLOPs"] if self.mflops is not None else [])
                            + ([f"{self.latency_ms:g} ms"] if self.latency_ms is not None else []))

    def fits(self, row: Mapping[str, Any]) -> bool:
        """Whether a candidate row ("mflops", and "latency_ms" for a latency budget) is within the budget."""
        return (self.mflops is None or row["mflops"] <= self.mflops) and \
            (self.latency_ms is None or row[LATENCY] <= self.latency_ms)


def check_tie_z(tie_z: float, name: str = "tie_z") -> float:
    """`tie_z` itself; ValueError (naming it as `name`, e.g. a command-line flag) unless it is finite and >= 0."""
    if not (math.isfinite(tie_z) and tie_z >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 (0: the best measured top-1 always wins), got {tie_z}")
    return tie_z


def as_budget(budget: float | Budget) -> Budget:
    """A plain number is a FLOPs budget."""
    return budget if isinstance(budget, Budget) else Budget(mflops=float(budget))


def pair_budgets(mflops: Sequence[float], latency_ms: Sequence[float]) -> list[Budget]:
    """The budgets of a search: MFLOPs only, ms only, or both in pairs (the i-th MFLOPs budget with the i-th ms
    budget, in the order given: each export satisfies both). ValueError for two lists of different lengths."""
    if mflops and latency_ms:
        if len(mflops) != len(latency_ms):
            raise ValueError(f"{len(mflops)} MFLOPs budgets and {len(latency_ms)} ms budgets: with both, give them "
                             f"in pairs, the same number of each (the i-th MFLOPs budget goes with the i-th ms budget)")
        return [Budget(float(f), float(ms)) for f, ms in zip(mflops, latency_ms)]
    return [Budget(float(f), None) for f in mflops] + [Budget(None, float(ms)) for ms in latency_ms]


@dataclass(frozen=True)
class SelectOptions:
    """Everything `search_and_select` and `export_arch` need besides the supernet, objective and data."""

    budgets: tuple[float | Budget, ...] = ()  # a number is a FLOPs budget
    top_k: int = 5  # candidates per budget re-ranked by held-out top-1
    front_measure: int = 8  # archs of the predicted front also measured
    population: int | None = None  # evolution and front population (default: the search's, or SMALL_* if expensive)
    generations: int | None = None
    seed: int = 0
    calib_batches: int = DEFAULT_CALIB_BATCHES
    calib_batch_size: int = 128
    eval_batch_size: int = 256
    holdout_size: int | None = None  # held-out images used to re-rank (None: the whole held-out split)
    tie_z: float = 1.0  # ties within tie_z paired standard errors go to the larger arch (choose_per_budget); 0: off
    onnx: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        check_tie_z(self.tie_z)  # refused before any search or measurement


@dataclass
class SelectionData:
    """The batches and loaders of a selection, all from the checkpoint's splits."""

    calib: list[torch.Tensor]  # BN recalibration batches (un-augmented training images)
    rerank: DataLoader  # held-out images that re-rank candidates (maybe a prefix of the held-out split)
    holdout: DataLoader  # the whole held-out split: exported subnets
    test: DataLoader
    rerank_images: int
    holdout_images: int
    test_images: int
    channels_last: bool  # ~2x faster convs on CPU; numbers unchanged


@dataclass
class BudgetSearch:
    """Step 1's results: one evolution per budget, and the predicted front."""

    per_budget: dict[float, EvolutionResult]
    front: ParetoResult
    evolution_options: dict[str, Any] = field(default_factory=dict)
    front_options: dict[str, Any] = field(default_factory=dict)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def check_budgets(space: SearchSpace, budgets: Sequence[float], num_classes: int | None = None) -> list[float]:
    """The budgets sorted and deduplicated. ValueError for no budget, or naming the smallest subnet for a budget
    below it."""
    if len(budgets) == 0:
        raise ValueError("no FLOPs budget given")
    for b in budgets:
        check_budget(space, b, num_classes)
    return sorted(set(float(b) for b in budgets))


def latency_cost(table: LatencyTable) -> Cost:
    """A latency table's vectorized prediction (ms) as a search `Cost`."""
    return Cost(LATENCY, "ms", table.predict_batch)


def check_select_budgets(space: SearchSpace, budgets: Sequence[float | Budget], num_classes: int | None = None,
                         latency: Cost | None = None) -> list[Budget]:
    """The budgets as `Budget`s, sorted (by MFLOPs, then ms) and deduplicated. ValueError for no budget, a ms budget
    without a `latency` cost, or naming the smallest subnet's cost for a budget below it."""
    if len(budgets) == 0:
        raise ValueError("no budget given")
    checked = [as_budget(b) for b in budgets]
    for b in checked:
        if b.mflops is not None:
            check_budget(space, b.mflops, num_classes)
        if b.latency_ms is not None:
            if latency is None:
                raise ValueError(f"budget {b.describe()} is in milliseconds, which needs a latency table")
            check_constraint(space, Constraint(latency, b.latency_ms))
    return sorted(set(checked), key=lambda b: (b.mflops is None, b.mflops or 0.0, b.latency_ms or 0.0))


def load_latency_table(path: str | Path, space: SearchSpace, num_classes: int) -> LatencyTable:
    """The latency table in `path` for `space` (attentive.latency.LatencyTable.load: BadFileError naming the file
    for a torn, foreign, unfinished table, another space or another runtime version), also refused when its
    classifier head has another number of classes than the supernet's."""
    table = LatencyTable.load(path, space)
    if table.num_classes != num_classes:
        raise BadFileError(path, f"latency table measured with a {table.num_classes}-class head, but the supernet "
                                 f"has {num_classes} classes; build a table for {num_classes} classes")
    return table


def latency_identity(table: LatencyTable) -> dict[str, Any]:
    """What every latency figure records about its table: file, runtime (and version), device, batch, threads."""
    return {"path": None if table.path is None else str(table.path), "runtime": table.runtime,
            "runtime_version": table.runtime_version, "device": table.device, "batch": table.batch,
            "threads": table.threads, "cpu": table.meta.get("cpu"), "gpu": table.meta.get("gpu")}


def latency_metrics(table: LatencyTable, arch: Arch, budget_ms: float | None = None) -> Any:
    """The `after_export` hook of `export_subnet` for a search with a latency table: the table's predicted
    latency of `arch`, and the latency measured on the exported model with the table's runtime, device, batch,
    threads, warm-up and repeats (onnxruntime: the exported model.onnx, or the net exported in memory without
    ONNX files; torch: the static net)."""

    def measure(net: nn.Module, onnx_file: Path | None) -> dict[str, Any]:
        shape = (table.batch, table.space.in_chans, arch.resolution, arch.resolution)
        use_file = table.runtime == "onnxruntime" and onnx_file is not None
        model = onnx_file if use_file else copy.deepcopy(net)  # measuring moves a module: leave the export alone
        measured = measure_latency(model, shape, table.runtime, table.device, table.threads,
                                   table.data["warmup"], table.data["repeats"])
        predicted = table.predict(arch)
        out = {"predicted_latency_ms": predicted, "measured_latency_ms": measured,
               "latency_measured_on": onnx_file.name if use_file else f"static net ({table.runtime})",
               "latency_table": latency_identity(table)}
        if budget_ms is not None:
            out.update(budget_latency_ms=budget_ms, under_latency_budget=bool(predicted <= budget_ms))
        return out

    return measure


def load_search_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                           space: str | Path | None = None) -> tuple[Supernet, dict[str, Any]]:
    """(supernet in eval mode, checkpoint dict) of a training checkpoint to search. Raises `BadFileError` naming
    the file for what `load_supernet` refuses and for a checkpoint without its data config (the held-out split
    could not be rebuilt); ValueError if `space` (a space name or YAML path) is given and is not its space."""
    supernet, ckpt = load_supernet(path, map_location=device)
    if space is not None:
        wanted = load_space(space)
        if wanted.hash != supernet.space.hash:
            raise ValueError(f"{path} is a supernet of space '{supernet.space.name}' ({supernet.space.hash}), not "
                             f"of space {space} ({wanted.hash})")
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt["config"].get("data"), dict):
        raise BadFileError(path, "has no config['data'] (written by train.py?): the held-out split cannot be rebuilt")
    return supernet.eval(), ckpt


def read_arch_file(path: str | Path, space: SearchSpace) -> Arch:
    """An arch from a JSON file: an arch dict, or any dict with an "arch" key (a pareto.json row, metrics.json).
    Raises `BadFileError` naming the file when it is missing, not JSON, or not an arch of `space`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise BadFileError(path, "arch file not found") from None
    except (OSError, ValueError) as e:
        raise BadFileError(path, f"not a readable JSON arch file ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]
    try:
        return space.validate(Arch.from_dict(data))
    except (TypeError, ValueError, KeyError) as e:
        raise BadFileError(path, f"not an arch of space '{space.name}': {e}") from None


def selection_data(splits: DataSplits, options: SelectOptions, device: torch.device) -> SelectionData:
    """Calibration batches (seeded by `options.seed`) and evaluation loaders of `splits`."""
    calib = calibration_batches(splits, min(options.calib_batch_size, len(splits.train_plain)),
                                options.calib_batches, seed=options.seed)
    holdout = build_loader(splits.holdout, options.eval_batch_size, train=False)
    test = build_loader(splits.test, options.eval_batch_size, train=False)
    rerank_set = splits.holdout
    if options.holdout_size is not None and options.holdout_size < len(splits.holdout):
        rerank_set = Subset(splits.holdout, range(options.holdout_size))  # the split is a seeded random subset
    rerank = build_loader(rerank_set, options.eval_batch_size, train=False)
    return SelectionData(calib=calib, rerank=rerank, holdout=holdout, test=test, rerank_images=len(rerank_set),
                         holdout_images=len(splits.holdout), test_images=len(splits.test),
                         channels_last=use_channels_last(device))


def checkpoint_provenance(checkpoint: str | Path, ckpt: Mapping[str, Any], options: SelectOptions) -> dict[str, Any]:
    """What every export records about its origin: checkpoint, epoch, calibration, seed and the data config."""
    return {"checkpoint": str(checkpoint), "checkpoint_epoch": ckpt.get("epoch"),
            "calib_batches": options.calib_batches, "seed": options.seed,
            "data": {k: v for k, v in ckpt["config"]["data"].items() if isinstance(v, (str, int, float, type(None)))}}


# ---------------------------------------------------------------------------------------------------------------
# 1-2. Search, and the candidates to measure


def search_options(options: SelectOptions, expensive: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Keyword options of evolve_search and pareto_search: the library defaults (SMALL_* for an expensive
    objective), with `options.population` / `options.generations` when given."""
    evolution: dict[str, Any] = dict(SMALL_SEARCH) if expensive else {}
    front: dict[str, Any] = dict(SMALL_FRONT) if expensive else {}
    for kw in (evolution, front):
        kw.update({k: v for k, v in (("population", options.population), ("generations", options.generations))
                   if v is not None})
    return evolution, front


def search_budgets(space: SearchSpace, objective: Objective, budgets: Sequence[float | Budget],
                   options: SelectOptions, num_classes: int | None = None, expensive: bool = False,
                   latency: Cost | None = None) -> BudgetSearch:
    """Evolution per budget (top `options.top_k`; `per_budget` keyed by the budgets as given), then the predicted
    front, all on one cached `objective`. `latency` (e.g. `latency_cost(table)`) is the cost of ms budgets and the
    front's x-axis; without it the front is against MFLOPs."""
    evolution, front_kw = search_options(options, expensive)
    per_budget = {}
    for b in budgets:
        budget = as_budget(b)
        if budget.latency_ms is not None and latency is None:
            raise ValueError(f"budget {budget.describe()} is in milliseconds, which needs a latency cost")
        constraints = [] if budget.latency_ms is None else [Constraint(latency, budget.latency_ms)]
        r = evolve_search(space, objective, budget.mflops, seed=options.seed, constraints=constraints,
                          top_k=options.top_k, num_classes=num_classes, progress=options.progress, **evolution)
        per_budget[b] = r
        at = f"{r.best.mflops:.4g} MFLOPs" + ("" if budget.latency_ms is None else f", {r.best.cost(LATENCY):.4g} ms")
        _log(f"budget {budget.describe()}: {r.generations} generations, {r.num_seen} archs scored "
             f"({r.archs_per_second:,.0f}/s, {r.seconds:.2f}s); best predicted {r.best.score:.3f} at {at}")
    front = pareto_search(space, objective, seed=options.seed, axis=latency, num_classes=num_classes,
                          progress=options.progress, **front_kw)
    lo, hi = flops_range(space, num_classes) if latency is None else cost_range(space, latency)
    _log(f"predicted front: {len(front.front)} archs over {lo:.4g}..{hi:.4g} "
         f"{'MFLOPs' if latency is None else latency.unit}, hypervolume "
         f"{front.hypervolume:.4g}, {front.num_seen} archs scored in {front.seconds:.2f}s")
    return BudgetSearch(per_budget, front, evolution, front_kw)


def candidate_rows(space: SearchSpace, num_classes: int, objective: Objective, searched: BudgetSearch,
                   front_measure: int, latency: Cost | None = None) -> list[dict[str, Any]]:
    """Every arch the searches returned as a report row (see attentive.report), sorted by (MFLOPs, id). Rows
    with roles are to be measured: "min", "max", "top<k>@<budget label>", "front" (`front_measure` archs evenly
    spaced along the predicted front). With `latency` the rows also hold "latency_ms" and "exported_for_ms"."""
    rows: dict[str, dict[str, Any]] = {}

    def add(arch: Arch, predicted: float | None, role: str | None = None) -> None:
        row = rows.get(arch.to_json())
        if row is None:
            row = rows[arch.to_json()] = {
                "id": len(rows), "arch": arch.to_dict(), "mflops": count_flops(space, arch, num_classes),
                "mparams": count_params(space, arch, num_classes), "predicted": predicted, "holdout_top1": None,
                "test_top1": None, "roles": [], "on_front": False, "on_predicted_front": False,
                "exported_for_mflops": []}
            if latency is not None:
                row[LATENCY] = float(latency(np.array([space.arch_to_indices(arch)]))[0])
                row["exported_for_ms"] = []
        if predicted is not None:
            row["predicted"] = predicted
        if role is not None and role not in row["roles"]:
            row["roles"].append(role)

    ends = [space.min_arch(), space.max_arch()]
    end_scores = objective(np.array([space.arch_to_indices(a) for a in ends]))
    add(ends[0], float(end_scores[0]), "min")
    add(ends[1], float(end_scores[1]), "max")
    for b, r in searched.per_budget.items():
        for rank, c in enumerate(r.top):
            add(c.arch, c.score, f"top{rank + 1}@{as_budget(b).label}")
    front = searched.front.front
    for c in front:
        add(c.arch, c.score)
    if front_measure and front:
        for i in np.unique(np.linspace(0, len(front) - 1, front_measure).round().astype(int)):
            add(front[i].arch, front[i].score, "front")
    return sorted(rows.values(), key=lambda r: (r["mflops"], r["id"]))


# ---------------------------------------------------------------------------------------------------------------
# 3-4. Measure, choose, mark the fronts


def measure_candidates(supernet: nn.Module, rows: Sequence[dict[str, Any]], data: SelectionData,
                       device: torch.device, progress: bool = True) -> tuple[float, dict[int, np.ndarray]]:
    """Set each row's "holdout_top1" (BN recalibrated on `data.calib`, top-1 on `data.rerank`); returns the
    seconds spent and each row's per-image correctness on those images, by row id (for `choose_per_budget`'s
    paired comparisons; kept apart so that the rows stay JSON). The supernet is left as found."""
    start = time.perf_counter()
    measured = measure_archs(supernet, [Arch.from_dict(r["arch"]) for r in rows], data.calib, data.rerank,
                             device=device, progress=progress, channels_last=data.channels_last, keep_correct=True)
    for row, m in zip(rows, measured):
        row["holdout_top1"] = m["top1"]
    return time.perf_counter() - start, {row["id"]: m["correct"] for row, m in zip(rows, measured)}


@dataclass(frozen=True)
class Choice:
    """A budget's export (`row`) and why. `best` is the fitting arch with the best measured held-out top-1; the
    export is another, larger arch only when ties go to the larger arch (`tie_z` > 0): then it is `behind` points
    below `best` on the same held-out images, within `tie_z` paired standard errors (`standard_error`)."""

    row: Mapping[str, Any]
    best: Mapping[str, Any]
    tie_z: float = 0.0
    behind: float = 0.0
    standard_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": "best held-out top-1" if self.tie_z == 0 else
                f"largest arch within {self.tie_z:g} paired standard errors of the best held-out top-1",
                "tie_z": self.tie_z, "best_measured_id": self.best["id"], "best_measured_mflops": self.best["mflops"],
                "best_measured_holdout_top1": self.best["holdout_top1"], "behind_best_points": self.behind,
                "standard_error_points": self.standard_error}


def choose_per_budget(measured: Sequence[Mapping[str, Any]], budgets: Sequence[float | Budget], tie_z: float = 0.0,
                      correct: Mapping[Any, np.ndarray] | None = None) -> dict[float | Budget, Choice]:
    """Each budget's export among the measured candidates (dicts with "id", "mflops", "holdout_top1",
    "predicted", and "latency_ms" for ms budgets), keyed by the budgets as given.

    The best held-out top-1 within the budget wins; at equal top-1 the cheaper one, which dominates it (fewer
    MFLOPs; lower latency for a budget in ms only), then the higher predicted score. With `tie_z` > 0 a measured
    difference the held-out images cannot resolve does not decide: the most expensive fitting candidate whose
    top-1 is below the best's by at most `tie_z` paired standard errors (attentive.metrics.paired_difference over
    `correct`, each candidate's per-image correctness by id) is exported instead: it is still within the budget,
    and the front rises with cost where measurements can resolve it (docs/results.md, "Which measured arch to
    export"). Raises ValueError naming a budget that no candidate fits, and for `tie_z` > 0 without `correct`
    for every candidate."""
    check_tie_z(tie_z)
    chosen = {}
    for b in budgets:
        budget = as_budget(b)
        cost = "mflops" if budget.mflops is not None else LATENCY
        fits = [row for row in measured if budget.fits(row)]
        if not fits:
            raise ValueError(f"no measured arch fits the budget of {budget.describe()}")
        best = max(fits, key=lambda row: (row["holdout_top1"], -row[cost], row["predicted"]))
        choice = Choice(best, best, tie_z)
        if tie_z > 0:
            missing = [row["id"] for row in fits if correct is None or row["id"] not in correct]
            if missing:
                raise ValueError(f"tie_z > 0 compares candidates image by image: per-image correctness is missing "
                                 f"for candidates {missing} (measure them with keep_correct=True)")
            for row in sorted(fits, key=lambda row: (-row[cost], -row["holdout_top1"])):
                if row[cost] <= best[cost]:
                    break
                behind, se = paired_difference(correct[best["id"]], correct[row["id"]])
                if behind <= tie_z * se:
                    choice = Choice(row, best, tie_z, behind, se)
                    break
        chosen[b] = choice
    return chosen


def mark_fronts(rows: Sequence[dict[str, Any]], x: str = "mflops") -> None:
    """Set "on_predicted_front" (non-dominated in `x` x predicted; `x` is "mflops" or "latency_ms") and "on_front"
    (in `x` x held-out top-1, measured rows only)."""
    for flag, key in (("on_predicted_front", "predicted"), ("on_front", "holdout_top1")):
        scored = [r for r in rows if r[key] is not None]
        if scored:
            for i in non_dominated([r[x] for r in scored], [r[key] for r in scored]):
                scored[i][flag] = True


# ---------------------------------------------------------------------------------------------------------------
# The pipeline


def search_and_select(supernet: nn.Module, objective: SearchObjective, splits: DataSplits, options: SelectOptions,
                      out_dir: str | Path, device: torch.device, *, force: bool = False,
                      provenance: Mapping[str, Any] | None = None, started: float | None = None,
                      latency: LatencyTable | None = None) -> dict[str, Any]:
    """Search, measure, choose and export one subnet per budget of `options.budgets` into `out_dir`, with the
    reports (pareto.csv/json/png, search.json). `out_dir` is written to a temporary sibling and renamed at the
    end; an existing one is replaced only with `force`. Returns the summary (search.json). `provenance` (e.g.
    `checkpoint_provenance`) goes into every export's metrics; `started` (perf_counter) is when the caller began,
    for the total time. `latency` (e.g. `load_latency_table(...)`) is the latency model of budgets in ms; with
    it every export records its predicted and measured latency, and the fronts and the plot are against latency."""
    start = time.perf_counter() if started is None else started
    provenance = dict(provenance or {})
    space: SearchSpace = supernet.space
    num_classes = int(supernet.num_classes)
    cost = None if latency is None else latency_cost(latency)
    budgets = check_select_budgets(space, options.budgets, num_classes, cost)
    lo, hi = flops_range(space, num_classes)
    ms_span = None if cost is None else cost_range(space, cost)
    for b in budgets:
        if b.mflops is not None and b.mflops > hi:
            _log(f"budget {b.mflops:g} MFLOPs is above the largest subnet ({hi:.4g} MFLOPs): searching the whole space")
        if ms_span is not None and b.latency_ms is not None and b.latency_ms > ms_span[1]:
            _log(f"budget {b.latency_ms:g} ms is above the largest subnet's predicted latency ({ms_span[1]:.4g} ms): "
                 f"no latency limit")
    cached = Objective(space, objective.score_fn)
    searched = search_budgets(space, cached, budgets, options, num_classes, objective.expensive, cost)
    rows = candidate_rows(space, num_classes, cached, searched, options.front_measure, cost)
    to_measure = [r for r in rows if r["roles"]]
    data = selection_data(splits, options, device)
    measure_seconds, correct = measure_candidates(supernet, to_measure, data, device, options.progress)
    _log(f"measured {len(to_measure)} archs on the held-out split ({data.rerank_images} images) in "
         f"{measure_seconds:.1f}s")
    choices = choose_per_budget(to_measure, budgets, options.tie_z, correct)
    chosen = {b: c.row for b, c in choices.items()}
    for b, c in choices.items():
        if c.row is not c.best:
            _log(f"budget {b.describe()}: exporting a larger arch ({c.row['mflops']:.4g} MFLOPs, held-out top-1 "
                 f"{c.row['holdout_top1']:.2f}) than the best measured ({c.best['mflops']:.4g} MFLOPs, "
                 f"{c.best['holdout_top1']:.2f}): {c.behind:.2f} points behind it, within {c.tie_z:g} paired "
                 f"standard errors ({c.standard_error:.2f})")
    for b, row in chosen.items():
        if b.mflops is not None:
            row["exported_for_mflops"].append(b.mflops)
        if b.latency_ms is not None:
            row["exported_for_ms"].append(b.latency_ms)
    x_axis = "mflops" if latency is None else LATENCY
    mark_fronts(rows, x_axis)

    summary: dict[str, Any] = {"budgets": {}}
    with atomic_directory(out_dir, force) as tmp:
        for b in _progress(budgets, options.progress, "export"):
            row = chosen[b]
            arch = Arch.from_dict(row["arch"])
            metrics = export_subnet(
                tmp / b.dir_name, supernet, arch, data.calib,
                holdout_loader=data.holdout, test_loader=data.test, budget=b.mflops, device=device, onnx=options.onnx,
                channels_last=data.channels_last,
                extra={**provenance, "objective": objective.description, "predicted": row["predicted"],
                       "search_holdout_top1": row["holdout_top1"], "search_roles": row["roles"],
                       "search_choice": choices[b].to_dict(), "rerank_holdout_images": data.rerank_images},
                after_export=None if latency is None else latency_metrics(latency, arch, b.latency_ms))
            row["test_top1"] = metrics["test_top1"]
            r = searched.per_budget[b]
            entry = summary["budgets"][b.label] = {
                "dir": b.dir_name, "mflops": metrics["mflops"], "fvcore_mflops": metrics["fvcore_mflops"],
                "mparams": metrics["mparams"], "predicted": row["predicted"],
                "holdout_top1": metrics["holdout_top1"], "test_top1": metrics["test_top1"],
                "choice": choices[b].to_dict(),
            }
            if latency is not None:
                entry.update(predicted_latency_ms=metrics["predicted_latency_ms"],
                             measured_latency_ms=metrics["measured_latency_ms"])
            entry["search"] = {"generations": r.generations, "archs_scored": r.num_seen,
                               "archs_per_second": r.archs_per_second, "seconds": r.seconds,
                               "clamped_to_mflops": r.max_mflops}
            if b.latency_ms is not None:
                entry["search"]["clamped_to_ms"] = r.budgets[LATENCY]
        summary.update(_summary(space, num_classes, objective, cached, searched, rows, options, data, (lo, hi),
                                measure_seconds, provenance.get("checkpoint"), latency, ms_span))
        plotted = [b.mflops for b in budgets if b.mflops is not None] if latency is None else \
            [b.latency_ms for b in budgets if b.latency_ms is not None]
        write_pareto(tmp, rows, plotted, space_name=space.name, space_hash=space.hash,
                     objective=objective.description, predicted_is_accuracy=objective.predicts_accuracy,
                     latency_table=None if latency is None else latency_identity(latency))
        summary["seconds"] = time.perf_counter() - start
        write_summary(tmp, summary)
    return summary


def _summary(space: SearchSpace, num_classes: int, objective: SearchObjective, cached: Objective,
             searched: BudgetSearch, rows: Sequence[dict[str, Any]], options: SelectOptions, data: SelectionData,
             flops_span: tuple[float, float], measure_seconds: float, checkpoint: Any,
             latency: LatencyTable | None = None, ms_span: tuple[float, float] | None = None) -> dict[str, Any]:
    measured = [r for r in rows if r["holdout_top1"] is not None]
    x_axis, x_span = ("mflops", flops_span) if latency is None or ms_span is None else (LATENCY, ms_span)
    reference = (x_span[1], min(r["holdout_top1"] for r in measured))
    score_input = "indices" if getattr(objective.score_fn, "accepts_indices", False) else "archs"
    front = searched.front
    latency_keys = {} if latency is None else {"latency_table": latency_identity(latency),
                                               "latency_range_ms": list(ms_span or ()), "x_axis": x_axis}
    return {
        "checkpoint": checkpoint, "space_name": space.name, "space_hash": space.hash,
        "objective": objective.description, "seed": options.seed, "top_k": options.top_k, "tie_z": options.tie_z,
        "flops_range_mflops": list(flops_span), **latency_keys,
        "evolution_options": {**asdict(EvolutionOptions(**searched.evolution_options)), "top_k": options.top_k,
                              "num_classes": num_classes, "score_input": score_input, "progress": options.progress},
        "front_options": {**asdict(ParetoOptions(**searched.front_options)), "num_classes": num_classes,
                          "score_input": score_input, "progress": options.progress},
        "predicted_front": {"size": len(front.front), "hypervolume": front.hypervolume,
                            "reference": list(front.reference), "archs_scored": front.num_seen,
                            "seconds": front.seconds},
        "measured_front": {"size": sum(r["on_front"] for r in rows),
                           "hypervolume": hypervolume([r[x_axis] for r in measured],
                                                      [r["holdout_top1"] for r in measured], reference),
                           "reference": list(reference)},
        "archs_scored_total": cached.num_scored, "objective_seconds": cached.seconds,
        "archs_measured": len(measured), "measure_seconds": measure_seconds,
        "rerank_holdout_images": data.rerank_images, "holdout_images": data.holdout_images,
        "test_images": data.test_images,
    }


def export_arch(supernet: nn.Module, arch: Arch, splits: DataSplits, options: SelectOptions, out_dir: str | Path,
                device: torch.device, *, max_mflops: float | None = None, force: bool = False,
                provenance: Mapping[str, Any] | None = None, latency: LatencyTable | None = None) -> dict[str, Any]:
    """Export one given arch (refused with ValueError above `max_mflops`), measured on the held-out and test
    splits, and with `latency` its predicted and measured latency; returns its metrics (metrics.json)."""
    data = selection_data(splits, options, device)
    return export_subnet(out_dir, supernet, arch, data.calib, holdout_loader=data.holdout, test_loader=data.test,
                         budget=max_mflops, device=device, onnx=options.onnx, force=force,
                         channels_last=data.channels_last, extra=dict(provenance or {}),
                         after_export=None if latency is None else latency_metrics(latency, arch))


def _progress(iterable: Any, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc)
