"""Checkpoints: written atomically (temporary file, fsync, rename), read with `torch.load(weights_only=True)`."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from .fileio import write_atomic
from .space import space_from_dict
from .supernet import Supernet

FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` so that a crash leaves either the old file or the new one, never a torn one."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict (tensors and plain Python data only: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "space" not in ckpt:
        raise ValueError(f"{path} is not an attentive supernet checkpoint (needs keys 'model' and 'space')")
    return ckpt


def load_supernet(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Supernet, dict]:
    """Rebuild the supernet stored in a training checkpoint; returns (supernet, checkpoint dict)."""
    ckpt = load_checkpoint(path, map_location)
    space = space_from_dict(ckpt["space"], where=f"{path}: space")
    if "space_hash" in ckpt and ckpt["space_hash"] != space.hash:
        raise ValueError(f"{path}: stored space hash {ckpt['space_hash']} does not match its space ({space.hash})")
    model = Supernet(space, num_classes=ckpt.get("num_classes", space.num_classes))
    model.load_state_dict(ckpt["model"])
    return model.to(map_location), ckpt


# ---- training-run checkpoints: rotation and resume ----------------------------------------------------------
LAST_NAME = "last.pt"
EPOCH_PATTERN = "epoch_*.pt"


def epoch_checkpoint_name(epoch: int) -> str:
    """File name of the checkpoint written when `epoch` epochs are complete."""
    return f"epoch_{epoch:04d}.pt"


def checkpoint_candidates(run_dir: str | Path) -> list[Path]:
    """`last.pt` and `epoch_*.pt` in `run_dir`, newest first (modification time, then name)."""
    run_dir = Path(run_dir)
    paths = [p for p in [run_dir / LAST_NAME, *run_dir.glob(EPOCH_PATTERN)] if p.is_file()]
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True)


def load_newest_checkpoint(run_dir: str | Path, map_location: str | torch.device = "cpu",
                           check: Callable[[Path, dict], None] | None = None) -> tuple[Path, dict] | None:
    """The newest checkpoint in `run_dir` that loads, as (path, ckpt); None when there is none.

    A file that cannot be read (truncated, torn, not a checkpoint) is skipped with a warning. `check(path, ckpt)`
    may raise to refuse a readable checkpoint (another space or model): that error propagates, it is not skipped.
    """
    import warnings

    for path in checkpoint_candidates(run_dir):
        try:
            ckpt = load_checkpoint(path, map_location)
        except Exception as e:  # truncated zip, unpickling error, missing keys: fall back to an older file
            warnings.warn(f"skipping checkpoint {path}: it does not load ({type(e).__name__}: {e})", RuntimeWarning,
                          stacklevel=2)
            continue
        if check is not None:
            check(path, ckpt)
        return path, ckpt
    return None


def save_training_checkpoint(state: dict, run_dir: str | Path, epoch_end: int | None = None, keep: int = 3) -> Path:
    """Write `state` atomically to `run_dir/last.pt`; at an epoch end (`epoch_end` = epochs completed) also as
    `epoch_NNNN.pt` (a hard link of the same file where the filesystem allows), keeping the newest `keep` of them."""
    run_dir = Path(run_dir)
    last = run_dir / LAST_NAME
    if epoch_end is None or keep <= 0:
        save_atomic(state, last)
    else:
        epoch_path = run_dir / epoch_checkpoint_name(epoch_end)
        save_atomic(state, epoch_path)
        tmp = run_dir / f".{LAST_NAME}.link.tmp"
        try:
            tmp.unlink(missing_ok=True)
            os.link(epoch_path, tmp)
            os.replace(tmp, last)  # atomic: last.pt is the old file or the new one
        except OSError:
            tmp.unlink(missing_ok=True)
            save_atomic(state, last)
        prune_epoch_checkpoints(run_dir, keep)
    return last


def prune_epoch_checkpoints(run_dir: str | Path, keep: int) -> None:
    """Delete all but the `keep` highest-numbered `epoch_*.pt` files."""
    paths = sorted(Path(run_dir).glob(EPOCH_PATTERN))
    for p in paths[:max(0, len(paths) - keep)]:
        p.unlink(missing_ok=True)
