"""Helpers shared by the experiment scripts (bench/attentive_vs_uniform.py, bench/ranking_gap.py): atomic result
files (JSON, CSV, PNG), the synthetic-data warning, seeded test subsets, Kendall tau, spread over seeds, and running
train.py as a subprocess (or in-process, for the smoke test)."""
from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from attentive.fileio import write_bytes_atomic
from attentive.train_state import RESUME_NEUTRAL_KEYS, config_changes
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SYNTHETIC_WARNING = ("WARNING: synthetic data (smoke mode): these numbers only show that the pipeline runs; they "
                     "say NOTHING about the methods. Run without --quick on Fashion-MNIST for results.")

# Config keys that may differ between a finished run and the settings asking for it without changing its result
# (the trainer's resume check list, plus num_threads, which changes only the speed).
NEUTRAL_KEYS = (*RESUME_NEUTRAL_KEYS, "num_threads")


# ---- atomic files --------------------------------------------------------------------------------------------
def jsonable(v: Any) -> Any:
    """numpy scalars/arrays to Python, non-finite floats to None (JSON has no NaN)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | Path) -> Any | None:
    """The JSON in `path`, or None when it is missing or unreadable (a result to recompute)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_csv_atomic(path: str | Path, rows: Sequence[dict], fieldnames: Sequence[str] | None = None) -> None:
    if fieldnames is None:
        fieldnames = []
        for row in rows:
            fieldnames += [k for k in row if k not in fieldnames]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row.get(k)) for k in fieldnames})
    write_bytes_atomic(path, buf.getvalue().encode())


def _csv_value(v: Any) -> Any:
    v = jsonable(v)
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return v


def save_figure_atomic(fig: Any, path: str | Path, dpi: int = 130) -> None:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    write_bytes_atomic(path, buf.getvalue())


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ---- arguments ---------------------------------------------------------------------------------------------
def parse_int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} is empty: {text!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} repeats a value: {text!r}")
    return values


def parse_float_list(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} is empty: {text!r}")
    return values


def warn_synthetic(data_name: str) -> str | None:
    """Print (stderr) and return the warning when the data is synthetic."""
    if data_name != "synthetic":
        return None
    print("\n" + SYNTHETIC_WARNING + "\n", file=sys.stderr, flush=True)
    return SYNTHETIC_WARNING


def eval_device(config_device: str):
    """The device a run's config names, for evaluating its checkpoint here (attentive's one device parser)."""
    from attentive.distributed import resolve_device

    return resolve_device(config_device)


# ---- data ----------------------------------------------------------------------------------------------------
def seeded_subset(dataset: Any, size: int | None, seed: int) -> Any:
    """The whole dataset, or `size` items of it chosen by a seeded permutation (kept in index order)."""
    import torch
    from torch.utils.data import Subset

    n = len(dataset)
    if size is None or size >= n:
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values
    return Subset(dataset, order.tolist())


# ---- statistics --------------------------------------------------------------------------------------------
def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    """mean, sample std (ddof=1; 0 for one value), min, max and n over the finite values."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}


def fmt_spread(s: dict[str, float | None], digits: int = 2) -> str:
    if s["mean"] is None:
        return "n/a"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def fmt(v: float | None, digits: int = 2) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


# ---- training runs -------------------------------------------------------------------------------------------
def demo_step_updates(out: str | Path, threads: int, steps: int, channels_last: bool = True) -> dict[str, Any]:
    """Config updates for a Trainer whose steps have the Fashion-MNIST demo's shape on synthetic data (tiny space,
    28 px, batch 128, 3 subnets, a new uniform middle subnet each step), with images for `steps` steps: what the
    CPU speed benches time."""
    batch = 128
    return {"space": "tiny", "output_dir": str(out), "device": "cpu", "num_threads": threads,
            "channels_last": channels_last, "data.name": "synthetic", "data.image_size": 28, "data.batch_size": batch,
            "data.synthetic_num_train": batch * (steps + 1) * 10 // 9 + 8, "data.synthetic_num_test": 8,
            "train.num_subnets": 3, "sampler.name": "uniform", "sched.epochs": 1, "sched.warmup_epochs": 0,
            "log.progress": False, "log.tensorboard": False}


def config_differences(saved: dict, wanted: dict) -> dict[str, tuple[Any, Any]]:
    """Config keys whose values differ, other than those that do not change a run's result."""
    return config_changes(saved, wanted, neutral=NEUTRAL_KEYS)


def run_train(config: str | Path | None, overrides: Sequence[str], log_path: str | Path,
              in_process: bool = False) -> tuple[int, float]:
    """Run `train.py --config config overrides...`; returns (exit status, wall seconds).

    By default a subprocess (a fresh interpreter, its output appended to `log_path`). `in_process=True` calls
    `train.main` in this process instead (no interpreter start-up: used by the smoke test; same arguments)."""
    argv = ([] if config is None else ["--config", str(config)]) + list(overrides)
    start = time.perf_counter()
    if in_process:
        import train

        try:
            rc = train.main(argv)
        except SystemExit as e:  # argparse errors
            rc = e.code if isinstance(e.code, int) else 2
        return int(rc), time.perf_counter() - start
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n$ {sys.executable} train.py {' '.join(argv)}\n")
        log.flush()
        rc = subprocess.call([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT)
    return rc, time.perf_counter() - start


def tail(path: str | Path, lines: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
