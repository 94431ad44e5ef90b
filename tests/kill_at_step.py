"""Test helper (not a test): train like train.py, but SIGKILL this process right after global step STEP and the
checkpoint due at it, through the trainer's `after_step` hook (the crash-resume test in tests/test_train.py).

    python tests/kill_at_step.py STEP CONFIG [key=value ...]
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attentive.config import load_config  # noqa: E402
from attentive.trainer import Trainer, run_training  # noqa: E402
from predictors.xgb import AccuracyPredictor  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print(f"usage: {Path(__file__).name} STEP CONFIG [key=value ...]", file=sys.stderr)
        return 2
    kill_at = int(argv[0])

    def kill(trainer: Trainer) -> None:
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    run_training(load_config(argv[1], argv[2:]), predictor_backend=AccuracyPredictor, after_step=kill)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
