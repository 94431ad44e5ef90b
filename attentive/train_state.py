"""A training run's state: what a checkpoint holds, how it is saved, checked against the run, found and resumed.

The checkpoint is one dict (tensors and plain Python data; `torch.load(weights_only=True)` reads it) with
`format`/`format_version` (attentive.checkpoint), the supernet weights, the space, the resolved config, the
position (epoch, batch in epoch, global step), the optimizer, scheduler, scaler, sampler and dropout-generator
states, the predictor (`to_state()`, strings only) and the running sums of the epoch's log, so that a run killed
mid-epoch and resumed ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import (LAST_NAME, TRAIN_CHECKPOINT_FORMAT, TRAIN_CHECKPOINT_VERSION, check_state_dict,
                         checkpoint_candidates, checkpoint_space, load_checkpoint, load_newest_checkpoint,
                         save_training_checkpoint)
from .config import diff_configs
from .distributed import DistEnv, broadcast_json
from .fileio import BadFileError
from .logging_utils import LOGGER_NAME
from .predictor import AccuracyModel, PredictorBackend
from .sampling import Sampler
from .space import SearchSpace
from .supernet import Supernet

# Config keys that may differ between a checkpoint and the run resuming it without changing the result
# ("x." covers the whole section x).
RESUME_NEUTRAL_KEYS = ("resume", "output_dir", "log.", "checkpoint.", "data.num_workers", "data.root",
                       "eval.test_at_end")


class CheckpointMismatchError(BadFileError):
    """A readable checkpoint that belongs to another space, model or run (or a run directory that already holds
    one): refused by name, like every other bad file (train.py exits 2)."""


def config_changes(saved: dict[str, Any], wanted: dict[str, Any],
                   neutral: tuple[str, ...] = RESUME_NEUTRAL_KEYS) -> dict[str, tuple[Any, Any]]:
    """Dotted config keys whose values differ between `saved` and `wanted` ({key: (saved, wanted)}), other than
    the `neutral` ones, which do not change a run's result."""
    return {k: v for k, v in diff_configs(saved, wanted).items()
            if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in neutral)}


@dataclass
class TrainState:
    """The training components and the run's position: `state_dict()` is the checkpoint, `resume()` its inverse."""

    cfg: dict[str, Any]
    space: SearchSpace
    num_classes: int
    model: Supernet
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm CosineLRScheduler: state_dict / load_state_dict / step_update
    scaler: torch.amp.GradScaler | None
    uniform_sampler: Sampler
    attentive_sampler: Sampler | None
    steps_per_epoch: int
    world_size: int
    # ---- position and progress ----
    epoch: int = 0  # epoch in progress (== epochs completed at an epoch boundary)
    batch_in_epoch: int = 0  # batches of `epoch` already trained
    global_step: int = 0
    train_seconds: float = 0.0
    epoch_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])  # running sums of the epoch's losses
    epoch_count: int = 0
    last_eval: dict[str, float] = field(default_factory=dict)
    predictor: AccuracyModel | None = None
    predictor_source: str | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": TRAIN_CHECKPOINT_FORMAT,
            "format_version": TRAIN_CHECKPOINT_VERSION,
            "model": self.model.state_dict(),
            "space": self.space.to_dict(),
            "space_hash": self.space.hash,
            "num_classes": self.num_classes,
            "config": self.cfg,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.global_step,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": {"uniform": self.uniform_sampler.state_dict(),
                        "attentive": self.attentive_sampler.state_dict() if self.attentive_sampler else None},
            "rng": {"supernet": self.model.generator.get_state()},
            "predictor": self.predictor.to_state() if self.predictor is not None else None,
            "predictor_source": self.predictor_source,
            "train_seconds": self.train_seconds,
            "epoch_loss_sums": {"sums": self.epoch_sums, "count": self.epoch_count},
            "last_eval": self.last_eval,
        }

    def save(self, run_dir: str | Path, epoch_end: bool = False, keep: int = 3) -> Path:
        """`last.pt` in `run_dir` (atomically); at an epoch end also `epoch_NNNN.pt`, the newest `keep` kept."""
        return save_training_checkpoint(self.state_dict(), run_dir, epoch_end=self.epoch if epoch_end else None,
                                        keep=keep)

    def check(self, path: str | Path, ckpt: dict) -> None:
        """Refuse a checkpoint of another format, space, class count or model, or whose stored space was edited,
        saying what differs."""
        if ckpt.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(path, f"not a training checkpoint of attentive (format "
                                                f"{ckpt.get('format')!r}); resume needs a file written by train.py")
        try:
            checkpoint_space(path, ckpt)  # the stored space loads and matches its recorded hash (not edited)
        except BadFileError as e:
            raise CheckpointMismatchError(path, e.reason) from None
        if ckpt.get("space_hash") != self.space.hash:
            name = ckpt.get("space", {}).get("name", "?")
            raise CheckpointMismatchError(
                path, f"it was trained on space '{name}' (hash {ckpt.get('space_hash')}), but this run uses space "
                      f"'{self.space.name}' (hash {self.space.hash}); set space= to the checkpoint's space or start "
                      f"a new output_dir")
        if ckpt.get("num_classes") != self.num_classes:
            raise CheckpointMismatchError(path, f"it has a {ckpt.get('num_classes')}-class classifier, this run's "
                                                f"data ({self.cfg['data']['name']}) has {self.num_classes} classes")
        try:
            check_state_dict(path, self.model.state_dict(), ckpt["model"])
        except BadFileError as e:
            raise CheckpointMismatchError(path, f"it does not fit this supernet: {e.reason}") from None

    def resume(self, path: str | Path, ckpt: dict, predictor_backend: PredictorBackend | None = None) -> None:
        """Continue from checkpoint `ckpt` (read from `path`), checked first. A config that differs in keys that
        change the result is warned about; another steps-per-epoch or world size restarts the epoch in progress.
        The predictor is restored with `predictor_backend` when this run scores with one."""
        log = logging.getLogger(LOGGER_NAME)
        self.check(path, ckpt)
        changed = config_changes(ckpt.get("config", {}), self.cfg)
        if changed:
            log.warning("resuming %s with a different config (the run will not match an uninterrupted one): %s",
                        path, ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()))
        self.model.load_state_dict(ckpt["model"])
        self.model.generator.set_state(ckpt["rng"]["supernet"].cpu())
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler is not None and ckpt.get("scaler") is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.uniform_sampler.load_state_dict(ckpt["sampler"]["uniform"])
        if self.attentive_sampler is not None and ckpt["sampler"].get("attentive") is not None:
            self.attentive_sampler.load_state_dict(ckpt["sampler"]["attentive"])
        if ckpt.get("predictor") is not None and self.cfg["sampler"]["scorer"] == "predictor" \
                and self.attentive_sampler is not None:
            if predictor_backend is None:
                raise ValueError("this checkpoint holds a predictor and the run scores with one: resuming needs a "
                                 "predictor_backend")
            self.predictor = predictor_backend.from_state(ckpt["predictor"], self.space)
            self.predictor_source = ckpt.get("predictor_source")
        self.epoch, self.batch_in_epoch = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
        same_layout = ckpt.get("steps_per_epoch") == self.steps_per_epoch and ckpt.get("world_size") == self.world_size
        if same_layout:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        elif self.batch_in_epoch:
            log.warning("%s was written with %s steps per epoch on %s processes, this run has %d on %d: epoch %d "
                        "restarts from its first batch", path, ckpt.get("steps_per_epoch"), ckpt.get("world_size"),
                        self.steps_per_epoch, self.world_size, self.epoch)
            self.batch_in_epoch = 0
        self.global_step = self.epoch * self.steps_per_epoch + self.batch_in_epoch
        self.scheduler.step_update(self.global_step)
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        if self.batch_in_epoch and "epoch_loss_sums" in ckpt:
            self.epoch_sums = [float(v) for v in ckpt["epoch_loss_sums"]["sums"]]
            self.epoch_count = int(ckpt["epoch_loss_sums"]["count"])
        self.last_eval = dict(ckpt.get("last_eval") or {})
        log.info("resumed from %s: epoch %d, batch %d, step %d", path, self.epoch, self.batch_in_epoch,
                 self.global_step)


def find_resume(resume: str | None, run_dir: str | Path, env: DistEnv | None,
                check: Callable[[Path, dict], None] | None = None) -> tuple[Path, dict] | None:
    """The checkpoint to resume from, as (path, ckpt), or None for a fresh run.

    `resume`: None (a fresh run; refused with `CheckpointMismatchError` when `run_dir` already holds checkpoints),
    a checkpoint path (`BadFileError` naming it when it does not load), or 'auto': the newest checkpoint in
    `run_dir` that loads and passes `check(path, ckpt)`, chosen by rank 0 and shared, so that every rank resumes
    from the same file or all of them stop with the same error."""
    run_dir = Path(run_dir)
    is_main = env is None or env.is_main
    if resume is None:
        error = None
        if is_main and checkpoint_candidates(run_dir):
            error = (f"already holds checkpoints ({LAST_NAME}, epoch_*.pt) of another run; pass resume=auto "
                     f"(or --resume auto) to continue it, or choose another output_dir")
        error = broadcast_json(error, env)
        if error:
            raise CheckpointMismatchError(run_dir, f"output_dir {error}")
        return None
    if resume != "auto":
        return Path(resume), load_checkpoint(resume, "cpu")
    found, decision = None, {"path": None, "error": None}
    if is_main:
        try:
            found = load_newest_checkpoint(run_dir, "cpu", check)
            decision["path"] = str(found[0]) if found else None
        except BadFileError as e:
            decision["error"] = {"path": str(e.path), "reason": e.reason}
    decision = broadcast_json(decision, env)
    if decision["error"]:
        raise CheckpointMismatchError(decision["error"]["path"], decision["error"]["reason"])
    if decision["path"] is None:
        logging.getLogger(LOGGER_NAME).info("resume=auto: no checkpoint in %s, starting a fresh run", run_dir)
        return None
    return found if found is not None else (Path(decision["path"]), load_checkpoint(decision["path"], "cpu"))
