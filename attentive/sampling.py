"""Arch samplers for sandwich training: uniform, and AttentiveNAS's best-up / worst-up over FLOPs buckets.

`FlopsBuckets` is the FLOPs prior of AttentiveNAS built from the space itself: a pool of random archs (gene
indices, int8) is counted with the vectorized FLOPs table, cut into buckets of `step_mflops` and stored grouped
by bucket. Drawing k archs from a bucket picks random rows of that bucket's slice of the pool, so every drawn arch
lies inside its bucket by construction and a draw costs a few numpy calls: no rejection loop, no accepted misses.

Rare buckets: grid cells of the FLOPs axis holding fewer than `min_count` pool archs are MERGED into their
neighbours, never dropped (the tails get wider buckets). Every arch of the space falls into exactly one bucket
and the prior covers all of the pool, so the sampler's FLOPs marginal is that of uniform sampling.

`AttentiveSampler` follows the paper: per middle subnet, draw a target bucket from the prior, draw `num_trials`
candidates inside it, score all candidates of a step in one `score_fn` call, keep the best (bestup) or worst
(worstup). Samplers own a `numpy.random.Generator(PCG64(seed))`; `state_dict()` makes a resumed run draw the
same archs.
"""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np

from .fileio import write_atomic
from .flops import count_flops, count_flops_batch
from .mutation import mutate_indices
from .scoring import ScoreFn, score_batch
from .space import Arch, SearchSpace, _require_generator

__all__ = [
    "CACHE_ENV", "DEFAULT_STEP_MFLOPS", "SAMPLERS", "MODES", "FlopsBuckets", "UniformSampler", "AttentiveSampler",
    "Sampler", "build_sampler", "default_cache_dir", "default_step_mflops",
]

CACHE_ENV = "ATTENTIVE_CACHE"
DEFAULT_STEP_MFLOPS = {"attentivenas": 25.0, "tiny": 1.0}  # by space name; others: ~40 buckets over the range
SAMPLERS = ("uniform", "bestup", "worstup")
MODES = ("bestup", "worstup")
_CACHE_FORMAT = 1
_BUILD_CHUNK = 1 << 17  # archs per chunk while building: bounds peak memory (float draws are 8 bytes per gene)


def default_cache_dir() -> Path:
    """$ATTENTIVE_CACHE, else ~/.cache/attentive."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "attentive"


def default_step_mflops(space: SearchSpace) -> float:
    """Bucket width: 25 MFLOPs for `attentivenas` (as AttentiveNAS), 1 for `tiny`, else a round step giving
    about 40 buckets over the space's FLOPs range."""
    if space.name in DEFAULT_STEP_MFLOPS:
        return DEFAULT_STEP_MFLOPS[space.name]
    span = count_flops(space, space.max_arch()) - count_flops(space, space.min_arch())
    raw = max(span, 1e-6) / 40
    exponent = math.floor(math.log10(raw))
    for nice in (1.0, 2.0, 2.5, 5.0, 10.0):
        if nice * 10**exponent >= raw:
            return nice * 10**exponent
    return 10.0 ** (exponent + 1)


def _decode_many(space: SearchSpace, rows: np.ndarray) -> list[Arch]:
    return [space.arch_from_indices(r) for r in rows.tolist()]



# ---- FLOPs buckets ---------------------------------------------------------------------------------------------
class FlopsBuckets:
    """Empirical FLOPs prior and in-bucket arch pool. Build with `FlopsBuckets.build`.

    Bucket `b` is the half-open MFLOPs interval `[edges[b], edges[b + 1])`; `prior[b]` is the fraction of the
    random pool inside it. `pool` holds the pool's gene indices sorted by bucket: rows `offsets[b]:offsets[b+1]`.
    """

    def __init__(self, space: SearchSpace, edges: np.ndarray, offsets: np.ndarray, pool: np.ndarray,
                 meta: dict[str, Any]) -> None:
        self.space = space
        self.edges = np.asarray(edges, dtype=np.float64)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.pool = pool
        self.meta = dict(meta)
        self.num_classes = meta["num_classes"]
        counts = np.diff(self.offsets)
        self.counts = counts
        self.prior = counts / counts.sum()
        self._cdf = np.cumsum(self.prior)
        self._gene_sizes = np.asarray(space.gene_sizes(), dtype=np.int64)
        self.loaded_from_cache = False
        self.cache_path: Path | None = None
        self.build_seconds = 0.0
        for arr in (self.edges, self.offsets, self.pool, self.prior, self.counts):
            arr.setflags(write=False)  # shared by every sampler and rank: nobody may edit them in place

    # -- construction --
    @classmethod
    def build(cls, space: SearchSpace, step_mflops: float | None = None, pool_size: int = 1_000_000, seed: int = 0,
              cache_dir: str | os.PathLike | None = None, min_count: int = 100, num_classes: int | None = None,
              use_cache: bool = True) -> "FlopsBuckets":
        """Buckets of width `step_mflops` (default: `default_step_mflops(space)`) from `pool_size` random archs.

        Cached as npz under `cache_dir` (default `default_cache_dir()`), keyed by space hash, step, pool size, seed,
        min_count and num_classes; a cache file that cannot be read or fails its checks is rebuilt with a warning.
        `num_classes` overrides the space's classifier size, as in `Supernet(space, num_classes)`.
        """
        step = float(default_step_mflops(space) if step_mflops is None else step_mflops)
        if not (math.isfinite(step) and step > 0):
            raise ValueError(f"step_mflops must be a positive number, got {step_mflops!r}")
        if isinstance(pool_size, bool) or not isinstance(pool_size, (int, np.integer)) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive integer, got {pool_size!r}")
        if isinstance(min_count, bool) or not isinstance(min_count, (int, np.integer)) or min_count < 1:
            raise ValueError(f"min_count must be a positive integer, got {min_count!r}")
        if pool_size < min_count:
            raise ValueError(f"pool_size ({pool_size}) must be at least min_count ({min_count})")
        nc = space.num_classes if num_classes is None else int(num_classes)
        meta = {
            "format": _CACHE_FORMAT, "space": space.name, "space_hash": space.hash, "step_mflops": step,
            "pool_size": int(pool_size), "seed": int(seed), "min_count": int(min_count), "num_classes": nc,
            "gene_sizes": space.gene_sizes(),
        }
        path = None
        if use_cache:
            root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
            path = root / (f"flops_buckets-{space.name}-{space.hash}-step{step:g}-pool{pool_size}-seed{seed}"
                           f"-min{min_count}-nc{nc}-v{_CACHE_FORMAT}.npz")
            if path.exists():
                t0 = time.perf_counter()
                try:
                    buckets = cls._load(space, path, meta)
                except Exception as err:  # any unreadable / inconsistent file: rebuild rather than trust it
                    warnings.warn(f"FLOPs bucket cache {path} is unusable ({type(err).__name__}: {err}); rebuilding",
                                  RuntimeWarning, stacklevel=2)
                else:
                    buckets.loaded_from_cache, buckets.cache_path = True, path
                    buckets.build_seconds = time.perf_counter() - t0
                    return buckets
        t0 = time.perf_counter()
        buckets = cls._compute(space, meta)
        buckets.build_seconds = time.perf_counter() - t0
        if path is not None:
            buckets.cache_path = buckets._save(path)
        return buckets

    @classmethod
    def _compute(cls, space: SearchSpace, meta: dict[str, Any]) -> "FlopsBuckets":
        step, pool_size, nc = meta["step_mflops"], meta["pool_size"], meta["num_classes"]
        rng = np.random.Generator(np.random.PCG64(meta["seed"]))
        gene_dtype = np.int8 if max(meta["gene_sizes"]) <= 127 else np.int16
        pool = np.empty((pool_size, len(meta["gene_sizes"])), dtype=gene_dtype)
        mflops = np.empty(pool_size, dtype=np.float64)
        for start in range(0, pool_size, _BUILD_CHUNK):  # chunks draw the same stream as one big call
            stop = min(start + _BUILD_CHUNK, pool_size)
            idx = space.sample_indices(rng, stop - start)
            pool[start:stop] = idx
            mflops[start:stop] = count_flops_batch(space, idx, nc)

        # Grid of multiples of `step` covering the whole space (min and max arch), not only the pool.
        lo = min(count_flops_batch(space, [space.min_arch()], nc)[0], mflops.min())
        hi = max(count_flops_batch(space, [space.max_arch()], nc)[0], mflops.max())
        first, last = math.floor(lo / step), math.floor(hi / step) + 1
        grid = np.arange(first, last + 1, dtype=np.float64) * step
        while grid[0] > lo:  # float rounding of lo / step: widen until the grid really covers [lo, hi]
            grid = np.concatenate([[grid[0] - step], grid])
        while grid[-1] <= hi:
            grid = np.concatenate([grid, [grid[-1] + step]])
        cell_counts = np.bincount(np.searchsorted(grid, mflops, side="right") - 1, minlength=len(grid) - 1)

        # Merge rare cells into neighbours (left to right; a short tail joins the last full bucket).
        edges, running = [grid[0]], 0
        for c, count in enumerate(cell_counts):
            running += count
            if running >= meta["min_count"]:
                edges.append(grid[c + 1])
                running = 0
        if len(edges) == 1:
            raise ValueError(f"pool of {pool_size} archs is smaller than min_count={meta['min_count']}")
        edges[-1] = grid[-1]
        edges = np.asarray(edges, dtype=np.float64)

        bucket = np.searchsorted(edges, mflops, side="right") - 1  # same comparison as every later check
        order = np.argsort(bucket, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(bucket, minlength=len(edges) - 1))])
        return cls(space, edges, offsets, pool[order], meta)

    def _save(self, path: Path) -> Path | None:
        """Written atomically (attentive.fileio): concurrent ranks never see half a file."""
        try:
            write_atomic(path, lambda f: np.savez(f, pool=self.pool, offsets=self.offsets, edges=self.edges,
                                                  meta=np.array(json.dumps(self.meta))))
            return path
        except OSError as err:  # a read-only or full cache dir must not stop training
            warnings.warn(f"could not write FLOPs bucket cache {path}: {err}", RuntimeWarning, stacklevel=3)
            return None

    @classmethod
    def _load(cls, space: SearchSpace, path: Path, meta: dict[str, Any]) -> "FlopsBuckets":
        with np.load(path, allow_pickle=False) as z:
            stored = json.loads(str(z["meta"]))
            pool, offsets, edges = z["pool"], z["offsets"], z["edges"]
        if stored != meta:
            raise ValueError(f"metadata {stored} differs from the requested {meta}")
        sizes = np.asarray(meta["gene_sizes"])
        if pool.ndim != 2 or pool.shape != (meta["pool_size"], len(sizes)):
            raise ValueError(f"pool has shape {pool.shape}")
        if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(pool) or np.any(np.diff(offsets) <= 0):
            raise ValueError("bucket offsets are inconsistent")
        if edges.shape != offsets.shape or np.any(np.diff(edges) <= 0):
            raise ValueError("bucket edges are inconsistent")
        if pool.min() < 0 or np.any(pool.max(axis=0) >= sizes):
            raise ValueError("pool holds gene indices outside the space")
        buckets = cls(space, edges, offsets, pool, meta)
        # Spot-check that stored rows sit in their buckets (cheap; catches a pool saved under other FLOPs rules).
        check = np.random.Generator(np.random.PCG64(0)).integers(0, len(pool), size=min(len(pool), 4096))
        bucket = np.searchsorted(offsets, check, side="right") - 1
        mflops = count_flops_batch(space, pool[check].astype(np.int64), meta["num_classes"])
        if np.any((mflops < edges[bucket]) | (mflops >= edges[bucket + 1])):
            raise ValueError("pool rows lie outside their buckets")
        return buckets

    # -- queries --
    @property
    def num_buckets(self) -> int:
        return len(self.prior)

    def __len__(self) -> int:
        return self.num_buckets

    @property
    def key(self) -> str:
        """Identifies the table (space, step, pool, seed...): recorded in sampler state to refuse a mismatch."""
        m = self.meta
        return (f"{m['space_hash']}:step{m['step_mflops']:g}:pool{m['pool_size']}:seed{m['seed']}"
                f":min{m['min_count']}:nc{m['num_classes']}")

    def __repr__(self) -> str:
        return (f"FlopsBuckets(space={self.space.name!r}, buckets={self.num_buckets}, "
                f"mflops=[{self.edges[0]:g}, {self.edges[-1]:g}), step={self.meta['step_mflops']:g}, "
                f"pool={self.meta['pool_size']})")

    def _range_text(self) -> str:
        return (f"valid buckets are 0..{self.num_buckets - 1} "
                f"(MFLOPs [{self.edges[0]:g}, {self.edges[-1]:g}))")

    def _check_buckets(self, buckets: Any) -> np.ndarray:
        b = np.asarray(buckets)
        if b.dtype.kind not in "iu" and not (b.dtype.kind == "f" and np.all(b == np.floor(b))):
            raise ValueError(f"bucket must be an integer, got {buckets!r}; {self._range_text()}")
        b = b.astype(np.int64)
        bad = (b < 0) | (b >= self.num_buckets)
        if np.any(bad):
            raise ValueError(f"bucket {b[bad].ravel()[0]} out of range; {self._range_text()}")
        return b

    def bucket_range(self, bucket: int) -> tuple[float, float]:
        """(low, high) MFLOPs of `bucket`, low inclusive, high exclusive."""
        b = int(self._check_buckets(bucket))
        return float(self.edges[b]), float(self.edges[b + 1])

    def bucket_of(self, mflops: float | np.ndarray) -> int | np.ndarray:
        """Bucket index of each MFLOPs value; ValueError for values outside `[edges[0], edges[-1])`."""
        values = np.asarray(mflops, dtype=np.float64)
        outside = ~((values >= self.edges[0]) & (values < self.edges[-1]))
        if np.any(outside):
            raise ValueError(f"{values[outside].ravel()[0]:g} MFLOPs lies outside the buckets; {self._range_text()}")
        b = np.searchsorted(self.edges, values, side="right") - 1
        return int(b) if b.ndim == 0 else b

    def sample_buckets(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """`n` bucket indices drawn from the prior."""
        _require_generator(rng)
        b = np.searchsorted(self._cdf, rng.random(n), side="right")
        return np.minimum(b, self.num_buckets - 1)  # cdf[-1] may round to just below 1

    # -- drawing --
    def draw(self, bucket: int, k: int, rng: np.random.Generator, mutate_prob: float = 0.0,
             mutate_tries: int = 4) -> np.ndarray:
        """`k` archs (int64 gene indices, shape (k, G)) whose FLOPs lie in `bucket`. See `draw_many`."""
        return self.draw_many(np.asarray([bucket]), k, rng, mutate_prob, mutate_tries)[0]

    def draw_many(self, buckets: Sequence[int] | np.ndarray, k: int, rng: np.random.Generator,
                  mutate_prob: float = 0.0, mutate_tries: int = 4) -> np.ndarray:
        """`k` in-bucket archs for each of `buckets`: int64 gene indices of shape (len(buckets), k, G).

        Rows are uniform over the bucket's slice of the pool. With `mutate_prob > 0` each row is also mutated
        (every gene switches with that probability) up to `mutate_tries` times in one vectorized pass; the first
        mutant still inside the bucket replaces the row, otherwise the unmutated row is kept. Either way the
        result is inside the bucket and the cost is bounded.
        """
        _require_generator(rng)
        b = self._check_buckets(buckets).reshape(-1)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"k must be a non-negative integer, got {k!r}")
        if not 0.0 <= mutate_prob <= 1.0:
            raise ValueError(f"mutate_prob must be in [0, 1], got {mutate_prob!r}")
        if isinstance(mutate_tries, bool) or not isinstance(mutate_tries, (int, np.integer)) or mutate_tries < 1:
            raise ValueError(f"mutate_tries must be a positive integer, got {mutate_tries!r}")
        rows = rng.integers(self.offsets[b][:, None], self.offsets[b + 1][:, None], size=(len(b), k))
        out = self.pool[rows].astype(np.int64)
        if mutate_prob > 0 and out.size:
            flat = self._mutate_inside(out.reshape(-1, out.shape[-1]), np.repeat(b, k), rng, mutate_prob,
                                       int(mutate_tries))
            out = flat.reshape(out.shape)
        return out

    def _mutate_inside(self, base: np.ndarray, bucket: np.ndarray, rng: np.random.Generator, prob: float,
                       tries: int) -> np.ndarray:
        m, g = base.shape
        mutants = mutate_indices(np.broadcast_to(base[:, None, :], (m, tries, g)), self._gene_sizes, prob, rng)
        mflops = count_flops_batch(self.space, mutants.reshape(m * tries, g), self.num_classes).reshape(m, tries)
        inside = (mflops >= self.edges[bucket][:, None]) & (mflops < self.edges[bucket + 1][:, None])
        first = inside.argmax(axis=1)
        return np.where(inside.any(axis=1)[:, None], mutants[np.arange(m), first], base)


# ---- samplers ------------------------------------------------------------------------------------------------
class _Sampler:
    name = "base"

    def __init__(self, space: SearchSpace, seed: int = 0) -> None:
        self.space = space
        self.seed = int(seed)
        self.rng = np.random.Generator(np.random.PCG64(self.seed))  # own stream: never the global RNGs

    def sample(self, num: int, score_fn: ScoreFn | None = None) -> list[Arch]:
        raise NotImplementedError

    def _check_num(self, num: int) -> int:
        if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 0:
            raise ValueError(f"num must be a non-negative integer, got {num!r}")
        return int(num)

    def state_dict(self) -> dict[str, Any]:
        """Generator state, JSON-able (the 128-bit integers are decimal strings)."""
        st = self.rng.bit_generator.state
        return {
            "sampler": self.name,
            "bit_generator": st["bit_generator"],
            "state": str(st["state"]["state"]),
            "inc": str(st["state"]["inc"]),
            "has_uint32": int(st["has_uint32"]),
            "uinteger": int(st["uinteger"]),
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("sampler") != self.name:
            raise ValueError(f"sampler state is for '{d.get('sampler')}', this sampler is '{self.name}'")
        if d.get("bit_generator") != "PCG64":
            raise ValueError(f"sampler state has bit generator {d.get('bit_generator')!r}, expected 'PCG64'")
        self.rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(d["state"]), "inc": int(d["inc"])},
            "has_uint32": int(d["has_uint32"]),
            "uinteger": int(d["uinteger"]),
        }


class UniformSampler(_Sampler):
    """Each gene uniform over its options (the warm-up sampler; `score_fn` is ignored)."""

    name = "uniform"

    def sample(self, num: int, score_fn: ScoreFn | None = None) -> list[Arch]:
        num = self._check_num(num)
        return _decode_many(self.space, self.space.sample_indices(self.rng, num))


class AttentiveSampler(_Sampler):
    """AttentiveNAS best-up / worst-up: per slot, a target bucket from the FLOPs prior, `num_trials` in-bucket
    candidates, keep the highest-scoring (bestup) or lowest-scoring (worstup). One `score_fn` call per `sample`.

    `mutate_prob` > 0 lets candidates leave the pool (mutants re-checked to stay in the bucket); the default 0
    draws uniformly from the pool's archs in the bucket, i.e. exactly uniform sampling conditioned on the bucket
    up to the finite pool.
    """

    def __init__(self, space: SearchSpace, buckets: FlopsBuckets, mode: str = "bestup", num_trials: int = 3,
                 seed: int = 0, mutate_prob: float = 0.0, mutate_tries: int = 4) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; allowed: {list(MODES)}")
        if not isinstance(buckets, FlopsBuckets):
            raise TypeError(f"buckets must be a FlopsBuckets, got {type(buckets).__name__}")
        if buckets.space.hash != space.hash:
            raise ValueError(f"buckets were built for space '{buckets.space.name}' ({buckets.space.hash}), "
                             f"not '{space.name}' ({space.hash})")
        if isinstance(num_trials, bool) or not isinstance(num_trials, (int, np.integer)) or num_trials < 1:
            raise ValueError(f"num_trials must be a positive integer, got {num_trials!r}")
        super().__init__(space, seed)
        self.name = mode
        self.mode = mode
        self.buckets = buckets
        self.num_trials = int(num_trials)
        self.mutate_prob = float(mutate_prob)
        self.mutate_tries = int(mutate_tries)

    def sample(self, num: int, score_fn: ScoreFn | None = None) -> list[Arch]:
        num = self._check_num(num)
        if score_fn is None:
            raise ValueError(f"the '{self.mode}' sampler needs a score_fn (e.g. predictor_scorer(predictor)); "
                             "use UniformSampler (build_sampler('uniform', ...)) while no scorer exists (warm-up)")
        if num == 0:
            return []
        targets = self.buckets.sample_buckets(num, self.rng)
        cands = self.buckets.draw_many(targets, self.num_trials, self.rng, self.mutate_prob, self.mutate_tries)
        scores = score_batch(score_fn, cands.reshape(num * self.num_trials, -1), self.space).reshape(num, -1)
        pick = scores.argmax(axis=1) if self.mode == "bestup" else scores.argmin(axis=1)
        return _decode_many(self.space, cands[np.arange(num), pick])

    def state_dict(self) -> dict[str, Any]:
        d = super().state_dict()
        d["buckets"] = self.buckets.key
        return d

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if "buckets" in d and d["buckets"] != self.buckets.key:  # other pool -> other archs after resume
            raise ValueError(f"sampler state was saved with buckets {d['buckets']}, these are {self.buckets.key}")
        super().load_state_dict(d)


Sampler = Union[UniformSampler, AttentiveSampler]


def build_sampler(name: str, space: SearchSpace, buckets: FlopsBuckets | None = None, seed: int = 0,
                  **kw: Any) -> Sampler:
    """`name` in ("uniform", "bestup", "worstup"). For bestup/worstup without `buckets`, they are built (or loaded
    from cache) with `FlopsBuckets.build` options taken from `kw` (step_mflops, pool_size, buckets_seed, cache_dir,
    min_count, num_classes); the other `kw` go to `AttentiveSampler` (num_trials, mutate_prob, mutate_tries)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; allowed: {list(SAMPLERS)}")
    if name == "uniform":
        return UniformSampler(space, seed=seed)
    if buckets is None:
        build_kw = {k: kw.pop(k) for k in ("step_mflops", "pool_size", "cache_dir", "min_count", "num_classes",
                                                   "use_cache") if k in kw}
        buckets = FlopsBuckets.build(space, seed=kw.pop("buckets_seed", 0), **build_kw)
    return AttentiveSampler(space, buckets, mode=name, seed=seed, **kw)
