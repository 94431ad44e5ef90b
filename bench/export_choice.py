"""Which measured arch should a budget export? Replays search.py's choice (attentive.select.choose_per_budget) at
several --tie-z on finished searches, and scores each rule's exports on images it did not choose with.

For every search directory given (a `search.py --out` directory, or a demo's output directory holding search/),
the supernet of its checkpoint is loaded and every arch the search measured (pareto.json rows with a held-out
top-1) is recalibrated as the search did (its seed, calibration batches and batch size) and evaluated image by
image on the held-out and the test split. The re-measured held-out top-1 must match pareto.json's (same machine,
same environment); the largest difference is printed. Then, for each tie_z and each budget of the search:

  * two-fold on the held-out split: the rule chooses with one seeded half of the images and its export is scored
    on the other half, then the halves swap; the mean is the rule's held-out score. Choosing a rule uses this.
  * the rule as search.py runs it (the whole held-out split chooses, with the search's own held-out top-1 from
    pareto.json and the re-measured per-image results for the paired errors); the export's test top-1 is printed
    for the report, and whether the exports are different archs with rising MFLOPs and rising held-out and test
    top-1.

    python bench/export_choice.py runs/demo4s0 runs/demo4s1 runs/demo4s2 --tie-z 0,0.5,1,2
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from attentive.cpu_runtime import tune_cpu_runtime  # noqa: E402
from attentive.data import build_loader, datasets_from_config, default_calib_batch_size  # noqa: E402
from attentive.environment import environment_summary  # noqa: E402
from attentive.measure import measure_archs  # noqa: E402
from attentive.select import (SelectOptions, check_tie_z, choose_per_budget, load_search_checkpoint,  # noqa: E402
                              selection_data)
from attentive.space import Arch  # noqa: E402


def search_dir(path: Path) -> Path:
    """`path` itself when it holds search.json, else its search/ (a demo's output directory)."""
    for d in (path, path / "search"):
        if (d / "search.json").is_file() and (d / "pareto.json").is_file():
            return d
    raise ValueError(f"{path}: no search.json and pareto.json here or in {path / 'search'} (a search.py --out?)")


def remeasure(d: Path, data_root: str | None) -> dict[str, Any]:
    """The search's measured rows, their per-image held-out and test correctness, and its budgets."""
    summary = json.loads((d / "search.json").read_text())
    rows = [r for r in json.loads((d / "pareto.json").read_text())["rows"] if r["holdout_top1"] is not None]
    export = json.loads(next(d.glob("*/metrics.json")).read_text())
    supernet, ckpt = load_search_checkpoint(summary["checkpoint"])
    data_cfg = ckpt["config"]["data"]
    splits = datasets_from_config(data_cfg, supernet.num_classes, data_root)
    options = SelectOptions(seed=export["seed"], calib_batches=export["calib_batches"],
                            calib_batch_size=default_calib_batch_size(data_cfg))  # as search.py's default
    data = selection_data(splits, options, torch.device("cpu"))
    if data.rerank_images != summary["rerank_holdout_images"]:
        raise ValueError(f"{d}: the search re-ranked on {summary['rerank_holdout_images']} held-out images (search.py "
                         f"--holdout-size); this script replays whole-split searches only")
    archs = [Arch.from_dict(r["arch"]) for r in rows]
    test = build_loader(splits.test, options.eval_batch_size, train=False)
    held = measure_archs(supernet, archs, data.calib, data.holdout, progress=False, channels_last=data.channels_last,
                         keep_correct=True)
    tested = measure_archs(supernet, archs, data.calib, test, progress=False, channels_last=data.channels_last,
                           keep_correct=True)
    mismatch = max(abs(h["top1"] - r["holdout_top1"]) for h, r in zip(held, rows))
    budgets = [float(b) for b in summary["budgets"]]
    return {"rows": rows, "holdout": {r["id"]: h["correct"] for r, h in zip(rows, held)},
            "test": {r["id"]: t["correct"] for r, t in zip(rows, tested)}, "budgets": budgets, "mismatch": mismatch}


def with_top1(rows: Sequence[dict], correct: dict[int, np.ndarray], images: np.ndarray) -> list[dict]:
    """Copies of `rows` whose "holdout_top1" is measured on `images` (indices into the correctness vectors)."""
    return [{**r, "holdout_top1": 100.0 * float(correct[r["id"]][images].mean())} for r in rows]


def replay(run: dict[str, Any], tie_z: float, folds: int, seed: int) -> dict[str, Any]:
    rows, holdout, test = run["rows"], run["holdout"], run["test"]
    n = len(next(iter(holdout.values())))
    parts = np.array_split(np.random.default_rng(seed).permutation(n), folds)
    cross = []  # per budget: the mean over folds of the export's top-1 on the images it was not chosen with
    for b in run["budgets"]:
        scores = []
        for k in range(folds):
            choose_on = np.concatenate([p for j, p in enumerate(parts) if j != k])
            sliced = {i: c[choose_on] for i, c in holdout.items()}
            row = choose_per_budget(with_top1(rows, holdout, choose_on), [b], tie_z, sliced)[b].row
            scores.append(100.0 * float(holdout[row["id"]][parts[k]].mean()))
        cross.append(float(np.mean(scores)))
    chosen = choose_per_budget(rows, run["budgets"], tie_z, holdout)
    exports = [chosen[b].row for b in run["budgets"]]
    test_top1 = [100.0 * float(test[r["id"]].mean()) for r in exports]
    held = [r["holdout_top1"] for r in exports]
    ids = [r["id"] for r in exports]
    rising = {"archs": len(set(ids)) == len(ids) and bool(np.all(np.diff([r["mflops"] for r in exports]) > 0)),
              "held-out": bool(np.all(np.diff(held) > 0)), "test": bool(np.all(np.diff(test_top1) > 0))}
    return {"cross": cross, "mflops": [r["mflops"] for r in exports], "holdout": held, "test": test_top1,
            "rising": rising}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", type=Path, help="search.py --out directories, or demo output directories")
    p.add_argument("--tie-z", default="0,0.5,1,2", help="comma-separated tie_z values to replay (0: the best "
                   "measured top-1 wins; search.py's default is 1)")
    p.add_argument("--folds", type=int, default=2, help="held-out folds: choose on the rest, score on one")
    p.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    p.add_argument("--data-root", help="dataset root (default: each checkpoint config's data.root)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    try:
        zs = [check_tie_z(float(z)) for z in args.tie_z.split(",")]
    except ValueError:
        p.error(f"--tie-z: give numbers >= 0 separated by commas (0: the best measured top-1 wins), got "
                f"{args.tie_z!r}")
    if args.folds < 2:
        p.error(f"--folds must be >= 2, got {args.folds}")
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_cpu_runtime()
    print(f"machine: {environment_summary()}")
    runs = {}
    for path in args.dirs:
        try:
            runs[str(path)] = run = remeasure(search_dir(path), args.data_root)
        except ValueError as e:  # a directory this script cannot replay: a usage error (exit 2)
            p.error(str(e))
        print(f"{path}: {len(run['rows'])} measured archs, budgets {', '.join(f'{b:g}' for b in run['budgets'])}; "
              f"re-measured held-out top-1 differs from pareto.json by at most {run['mismatch']:.4f}", flush=True)
    totals = {}
    for z in zs:
        print(f"\ntie_z {z:g}")
        cross, test, rising = [], [], {"archs": 0, "held-out": 0, "test": 0}
        for name, run in runs.items():
            r = replay(run, z, args.folds, args.seed)
            cross += r["cross"]
            test += r["test"]
            for k, v in r["rising"].items():
                rising[k] += v
            print(f"  {name}: MFLOPs {' / '.join(f'{m:.2f}' for m in r['mflops'])}; held-out "
                  f"{' / '.join(f'{h:.2f}' for h in r['holdout'])}; test {' / '.join(f'{t:.2f}' for t in r['test'])}"
                  f"; cross-fold {' / '.join(f'{c:.2f}' for c in r['cross'])}; rising: "
                  f"{', '.join(k for k, v in r['rising'].items() if v) or 'none'}")
        totals[z] = (float(np.mean(cross)), float(np.mean(test)), rising)
    base = totals[zs[0]]
    print(f"\nmean over {len(runs)} searches x their budgets (differences against tie_z {zs[0]:g}); rising: the "
          f"searches whose exports are different archs of rising MFLOPs / whose held-out / test top-1 rise:")
    print("  tie_z | cross-fold held-out top-1 | test top-1 (report only) | rising archs / held-out / test")
    for z, (c, t, r) in totals.items():
        print(f"  {z:5g} | {c:6.3f} ({c - base[0]:+.3f})          | {t:6.3f} ({t - base[1]:+.3f})        | "
              f"{r['archs']} / {r['held-out']} / {r['test']} of {len(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
