"""Run logs written by rank 0: metrics as JSON lines (`metrics.jsonl`), TensorBoard scalars (`tb/`), console text.

On resume, records past the resumed step are dropped from `metrics.jsonl` and TensorBoard (`purge_step`), so a
killed-and-resumed run leaves the same log as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

from .fileio import json_safe, write_text_atomic

LOGGER_NAME = "attentive"


def get_logger(is_main: bool = True, log_file: str | Path | None = None) -> logging.Logger:
    """The 'attentive' logger: INFO to stderr (and `log_file`) on rank 0, warnings only elsewhere."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(fmt)
    logger.addHandler(stream)
    if log_file is not None and is_main:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)
    return logger


def _plain(v: Any) -> Any:
    """Tensor and numpy scalars to Python numbers, in nested dicts and lists."""
    if hasattr(v, "item") and callable(v.item):
        return v.item()
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """Keep only records with step <= max_step (rewritten atomically); a torn last line is dropped too."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and rec.get("step", 0) <= max_step:
                kept.append(json.dumps(rec))
    write_text_atomic(path, "".join(line + "\n" for line in kept))


class MetricsLogger:
    """`log(kind, step, **scalars)` appends a JSON line and writes TensorBoard scalars `kind/name`.

    Disabled (no files) unless `enabled` (rank 0)."""

    def __init__(self, run_dir: str | Path, enabled: bool, tensorboard: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_jsonl(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self._file = open(self.path, "a")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=resume_step)

    def log(self, kind: str, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, **json_safe(_plain(values))}  # undefined (NaN) values: null
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(f"{kind}/{k}", v, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self.writer is not None:
            self.writer.close()
