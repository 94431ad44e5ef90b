"""Checkpoints: written atomically (temporary file, fsync, rename), read with `torch.load(weights_only=True)`."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .space import space_from_dict
from .supernet import Supernet

FORMAT_VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` so that a crash leaves either the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
