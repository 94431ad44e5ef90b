"""Measured (arch, top-1) pairs from a supernet: archs stratified over FLOPs, each BN-recalibrated and evaluated on
the held-out split of the training set, appended to a JSONL file as they are measured.

Each row is one JSON line ``{"arch": {...}, "mflops": float, "top1": float, "space_hash": str, "tag": str|null}``
written with flush + fsync, so an interrupted collection loses at most the arch in progress; calling
`measure_archs` again with the same file skips the archs already there. A torn last line (crash mid-write) is
dropped with a warning. The trainer (fitting its predictor during training), `python -m predictors.retrain` and
the bench scripts all measure subnets through these functions.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .calibration import preserved_bn_state
from .evaluate import calibrated, correct_per_image, percent
from .fileio import fsync_dir
from .flops import count_flops, count_flops_batch
from .space import Arch, SearchSpace

DEFAULT_NUM_BUCKETS = 20


# ---- which archs --------------------------------------------------------------------------------------
def stratified_archs(space: SearchSpace, n: int, rng: np.random.Generator, num_buckets: int | None = None,
                     pool_size: int | None = None) -> list[Arch]:
    """`n` distinct archs: the min and max archs first, then archs spread evenly over equal-width FLOPs buckets
    between them (random within a bucket; a bucket with too few candidates passes its share to the others),
    in random order, so any prefix of the list is itself spread over the FLOPs range."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a seeded numpy.random.Generator, got {type(rng).__name__}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    ends = [space.min_arch(), space.max_arch()][: min(n, 2)]
    rest = n - len(ends)
    if rest == 0:
        return ends
    if rest > space.num_archs - 2:
        raise ValueError(f"asked for {n} distinct archs, space '{space.name}' has only {space.num_archs}")
    num_buckets = min(rest, DEFAULT_NUM_BUCKETS) if num_buckets is None else num_buckets
    pool = np.unique(_candidate_pool(space, rng, pool_size or max(8192, 20 * n)), axis=0)
    end_rows = np.array([space.arch_to_indices(a) for a in ends])
    pool = pool[~(pool[:, None, :] == end_rows[None]).all(-1).any(1)]
    flops = count_flops_batch(space, pool)
    lo, hi = count_flops(space, space.min_arch()), count_flops(space, space.max_arch())
    bucket = np.clip(((flops - lo) / max(hi - lo, 1e-12) * num_buckets).astype(np.int64), 0, num_buckets - 1)
    members = [np.flatnonzero(bucket == b) for b in range(num_buckets)]
    quota = _allocate(rest, np.array([len(m) for m in members]), rng)
    chosen = np.concatenate([rng.choice(m, size=q, replace=False) for m, q in zip(members, quota) if q])
    chosen = chosen[rng.permutation(len(chosen))]
    return ends + [space.arch_from_indices(pool[i]) for i in chosen]


def _candidate_pool(space: SearchSpace, rng: np.random.Generator, size: int) -> np.ndarray:
    """Gene-index rows: half uniform, a quarter tilted to small and a quarter to large choices (options are
    sorted ascending). Uniform archs alone almost never reach the top of the FLOPs range (tiny space: of 1,000
    stratified archs from a uniform pool, 4 fell in the top 30% of the range besides the max arch)."""
    sizes = np.asarray(space.gene_sizes())
    quarter = size // 4
    tilted = [np.minimum((rng.random((quarter, len(sizes))) ** power * sizes).astype(np.int64), sizes - 1)
              for power in (3.0, 1 / 3)]
    return np.concatenate([space.sample_indices(rng, size - 2 * quarter), *tilted])


def _allocate(total: int, capacity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Spread `total` over buckets as evenly as their capacities allow (remainders to random buckets)."""
    if capacity.sum() < total:
        raise ValueError(f"the candidate pool holds only {capacity.sum()} archs for {total} requested; "
                         f"pass a larger pool_size")
    quota = np.zeros_like(capacity)
    while quota.sum() < total:
        open_buckets = np.flatnonzero(quota < capacity)
        need = total - quota.sum()
        share, extra = divmod(need, len(open_buckets))
        add = np.full(len(open_buckets), share)
        add[rng.choice(len(open_buckets), size=extra, replace=False)] += 1
        quota[open_buckets] = np.minimum(quota[open_buckets] + add, capacity[open_buckets])
    return quota


# ---- the JSONL file ------------------------------------------------------------------------------------
def arch_key(arch: Arch) -> str:
    """Canonical identity of an arch in measured files (sorted-key JSON)."""
    return arch.to_json()


def _scan_jsonl(path: Path) -> tuple[list[tuple[int, dict]], int]:
    """(line number, row) for every complete line, and the byte length of the complete part. A last line
    without its newline is torn (crash mid-write): warned about and left out."""
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1
    if complete < len(data):
        warnings.warn(f"{path}: ignoring a torn last line ({len(data) - complete} bytes without a newline, "
                      f"from an interrupted write); that arch will be measured again", RuntimeWarning, stacklevel=3)
    rows = []
    for number, line in enumerate(data[:complete].split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg}); only a torn last line is "
                             f"tolerated") from None
        rows.append((number, row))
    return rows, complete


def _parse_rows(path: Path, scanned: list[tuple[int, dict]], space: SearchSpace, tag: str | None = None,
                check_tag: bool = False) -> list[dict]:
    rows, seen = [], set()
    for number, row in scanned:
        where = f"{path}, line {number}"
        if not isinstance(row, dict) or not {"arch", "top1", "space_hash"} <= set(row):
            raise ValueError(f"{where}: a row needs keys 'arch', 'top1' and 'space_hash'")
        if row["space_hash"] != space.hash:
            raise ValueError(f"{where}: measured in another search space (hash {row['space_hash']}); this space "
                             f"'{space.name}' has hash {space.hash}")
        if check_tag and row.get("tag") != tag:
            raise ValueError(f"{where}: measured under tag {row.get('tag')!r} (another checkpoint or setting), "
                             f"not {tag!r}; use another output file")
        try:
            arch = space.validate(Arch.from_dict(row["arch"]))
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        top1 = row["top1"]
        if isinstance(top1, bool) or not isinstance(top1, (int, float)) or not np.isfinite(top1):
            raise ValueError(f"{where}: top1 must be a finite number, got {top1!r}")
        key = arch_key(arch)
        if key in seen:
            warnings.warn(f"{where}: arch measured twice; keeping the first row", RuntimeWarning, stacklevel=3)
            continue
        seen.add(key)
        rows.append({**row, "arch": arch.to_dict(), "top1": float(top1)})
    return rows


def read_rows(path: str | Path, space: SearchSpace) -> list[dict]:
    """Measured rows of a JSONL file, in file order, validated against `space` (errors name the line). A torn
    last line is ignored with a warning; a repeated arch keeps its first row."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"measured-archs file not found: {path}")
    return _parse_rows(path, _scan_jsonl(path)[0], space)


def rows_to_arrays(rows: Sequence[dict]) -> tuple[list[Arch], np.ndarray]:
    """(archs, top1 array) from measured rows."""
    return [Arch.from_dict(r["arch"]) for r in rows], np.array([r["top1"] for r in rows], dtype=np.float64)


def _open_for_append(path: Path, space: SearchSpace, tag: str | None) -> tuple[dict[str, dict], Any]:
    """Rows already in `path` by arch key, and the file opened for appending (a torn tail cut off first)."""
    done: dict[str, dict] = {}
    if path.exists():
        scanned, complete = _scan_jsonl(path)
        for row in _parse_rows(path, scanned, space, tag, check_tag=True):
            done[arch_key(Arch.from_dict(row["arch"]))] = row
        if complete < path.stat().st_size:
            os.truncate(path, complete)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", encoding="utf-8")
    fsync_dir(path.parent)  # the file's creation survives a crash too
    return done, f


# ---- measuring -----------------------------------------------------------------------------------------
def measure_archs(
    supernet: nn.Module,
    archs: Iterable[Arch | dict],
    calib_batches: Sequence[torch.Tensor],
    holdout_loader: Iterable,
    device: torch.device | str = "cpu",
    out_path: str | Path | None = None,
    progress: bool = True,
    channels_last: bool = False,
    tag: str | None = None,
    keep_correct: bool = False,
) -> list[dict]:
    """Top-1 (%) of each arch on `holdout_loader` (the held-out split of the training set), BN recalibrated on
    `calib_batches` first (the same batches for every arch). Returns one row per requested arch, in order.

    With `out_path`, rows are appended to that JSONL file as measured and archs already there are not measured
    again (resume). `tag` (e.g. the checkpoint's identity) is stored in each row; resuming into a file written
    under another tag is refused, so measurements of two checkpoints never mix. The supernet is left as found:
    active arch, train/eval modes and BN running statistics are restored afterwards.

    `keep_correct` adds "correct" to each returned row: a bool array, one entry per image of `holdout_loader`, for
    paired comparisons between archs (not written to `out_path`, so it cannot be combined with resuming).
    """
    if keep_correct and out_path is not None:
        raise ValueError("keep_correct needs every arch measured in this call: it cannot resume from out_path, "
                         "whose rows hold no per-image results")
    space: SearchSpace = supernet.space
    if not isinstance(calib_batches, (list, tuple)) or not calib_batches:
        raise TypeError("calib_batches must be a non-empty list of image batches (see "
                        "attentive.data.calibration_batches), so that every arch is calibrated on the same images")
    archs = [space.validate(Arch.from_dict(a) if isinstance(a, dict) else a) for a in archs]
    done: dict[str, dict] = {}
    out_file = None
    if out_path is not None:
        done, out_file = _open_for_append(Path(out_path), space, tag)
    todo = list({arch_key(a): a for a in archs if arch_key(a) not in done}.values())
    total = len({arch_key(a) for a in archs})

    saved_arch = getattr(supernet, "active_arch", None)
    try:
        with preserved_bn_state(supernet), tqdm(total=total, initial=total - len(todo), desc="measure archs", unit="arch",
                  disable=not progress, dynamic_ncols=True) as bar:
            for arch in todo:
                hits = correct_per_image(calibrated(supernet, arch, calib_batches, device, channels_last),
                                         holdout_loader, device, channels_last)
                top1 = percent(int(hits.sum()), hits.numel())
                row = {"arch": arch.to_dict(), "mflops": count_flops(space, arch, supernet.num_classes),
                       "top1": float(top1), "space_hash": space.hash, "tag": tag}
                if out_file is not None:
                    out_file.write(json.dumps(row, sort_keys=True) + "\n")
                    out_file.flush()
                    os.fsync(out_file.fileno())
                if keep_correct:
                    row["correct"] = hits.numpy()
                done[arch_key(arch)] = row
                bar.update(1)
                bar.set_postfix(top1=f"{top1:.2f}")
    finally:
        if out_file is not None:
            out_file.close()
        if saved_arch is not None:
            supernet.set_arch(saved_arch)
    return [done[arch_key(a)] for a in archs]
