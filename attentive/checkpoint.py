"""Checkpoints: written atomically (temporary file, fsync, rename), read with `torch.load(weights_only=True)`."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from .fileio import BadFileError, load_torch_file, write_atomic
from .space import SearchSpace, space_from_dict
from .supernet import Supernet

# What train.py writes; a file with another "format" is refused, and a newer version is refused by name.
TRAIN_CHECKPOINT_FORMAT = "attentive.train_checkpoint"
TRAIN_CHECKPOINT_VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` so that a crash leaves either the old file or the new one, never a torn one."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a supernet checkpoint dict (tensors and plain Python data only: weights_only=True).

    Raises `BadFileError` naming the file when it is missing, truncated or torn, not a torch file, holds code
    objects (weights_only refuses them), is not an attentive checkpoint, or is of a newer format version.
    """
    path = Path(path)
    ckpt = load_torch_file(path, map_location, what="checkpoint file")
    if not isinstance(ckpt, dict) or "model" not in ckpt or "space" not in ckpt:
        raise BadFileError(path, "not an attentive supernet checkpoint (it needs the keys 'model' and 'space')")
    if ckpt.get("format", TRAIN_CHECKPOINT_FORMAT) != TRAIN_CHECKPOINT_FORMAT:
        raise BadFileError(path, f"format {ckpt.get('format')!r} is not an attentive training checkpoint "
                                 f"({TRAIN_CHECKPOINT_FORMAT!r})")
    version = ckpt.get("format_version", TRAIN_CHECKPOINT_VERSION)
    if not isinstance(version, int) or version > TRAIN_CHECKPOINT_VERSION:
        raise BadFileError(path, f"checkpoint format version {version!r} is newer than this attentive reads "
                                 f"({TRAIN_CHECKPOINT_VERSION}); upgrade attentive")
    return ckpt


def check_state_dict(path: str | Path, own: dict[str, torch.Tensor], theirs: Any) -> None:
    """Refuse weights `theirs` (from file `path`) that do not fit a model whose state_dict is `own`: missing or
    unexpected keys, or other shapes. Raises `BadFileError` saying which."""
    if not isinstance(theirs, dict):
        raise BadFileError(path, f"weights must be a state_dict (a dict of tensors), got {type(theirs).__name__}")
    missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
    shapes = [k for k in own if k in theirs and (not isinstance(theirs[k], torch.Tensor)
                                                 or tuple(own[k].shape) != tuple(theirs[k].shape))]
    if missing or unexpected or shapes:
        raise BadFileError(path, f"weights do not fit the model: missing {missing[:5]}, unexpected "
                                 f"{unexpected[:5]}, shape mismatch {shapes[:5]}")


def checkpoint_space(path: str | Path, ckpt: dict) -> SearchSpace:
    """The search space stored in checkpoint `ckpt` (read from `path`). Raises `BadFileError` naming the file when
    it does not load or does not match its recorded hash (the file was edited)."""
    try:
        space = space_from_dict(ckpt["space"], where=f"{path}: space")
    except (TypeError, ValueError, KeyError) as e:
        raise BadFileError(path, f"its search space does not load: {e}") from None
    if "space_hash" in ckpt and ckpt["space_hash"] != space.hash:
        raise BadFileError(path, f"stored space hash {ckpt['space_hash']} does not match its space ({space.hash}): "
                                 f"the file was edited")
    return space


def load_supernet(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[Supernet, dict]:
    """Rebuild the supernet stored in a training checkpoint; returns (supernet, checkpoint dict). Raises
    `BadFileError` naming the file for anything `load_checkpoint` refuses, a space that does not match its stored
    hash (edited), or weights that do not fit the space's supernet."""
    path = Path(path)
    ckpt = load_checkpoint(path, map_location)
    space = checkpoint_space(path, ckpt)
    num_classes = ckpt.get("num_classes", space.num_classes)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise BadFileError(path, f"num_classes must be a positive integer, got {num_classes!r}")
    model = Supernet(space, num_classes=num_classes)
    check_state_dict(path, model.state_dict(), ckpt["model"])
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
    for path in checkpoint_candidates(run_dir):
        try:
            ckpt = load_checkpoint(path, map_location)
        except BadFileError as e:  # truncated zip, unpickling error, missing keys: fall back to an older file
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
