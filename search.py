"""Search a trained supernet for the best subnet under each FLOPs budget, export them, and plot the trade-off.

    python search.py --checkpoint CKPT --budgets 10,20,40 --out DIR [--predictor DIR | --proxy ntk]
    python search.py --checkpoint CKPT --export-arch ARCH.json --max-mflops 20 --out DIR

Budget search:

1. The fast objective scores archs: an XGBoost accuracy predictor (``--predictor DIR``, else the one stored in
   the checkpoint), or a training-free proxy (``--proxy``, NASI's penalized form ``s - mu * max(s - nu, 0)``).
2. For each budget, evolution under the FLOPs constraint (attentive.search.evolve_search) keeps the top-K
   archs; a whole-front search (attentive.search.pareto_search) traces the predicted front over the space's
   FLOPs range.
3. The top-K of every budget, the min and max nets and a sample of the predicted front are measured: BN
   recalibrated on training images, top-1 on the held-out split of the training set (rebuilt from the
   checkpoint's config). For each budget the measured arch with the best held-out top-1 among those that fit
   it (its top-K, and any other measured arch within the budget) is exported (attentive.export), and only then
   is its test top-1 measured, for the report.

Outputs in DIR: ``subnet_<B>mflops/`` per budget (see attentive.export), ``pareto.csv`` / ``pareto.json`` (every
evaluated arch: MFLOPs, predicted and measured accuracy, on-front flags), ``pareto.png`` and ``search.json``
(timings and settings). DIR is written to a temporary sibling and renamed at the end: never half-written; an
existing DIR is replaced only with ``--force``. Usage errors exit with status 2.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Subset

from attentive.cpu_runtime import tune_cpu_runtime
from attentive.checkpoint import load_supernet
from attentive.data import DataSplits, build_loader, calibration_batches, datasets_from_config
from attentive.evaluate import evaluate_arch
from attentive.export import atomic_directory, check_output_dir, export_subnet, write_json_atomic, write_text_atomic
from attentive.flops import count_flops, count_params
from attentive.search import (EvolutionOptions, Objective, ParetoOptions, check_budget, choose_per_budget,
                              evolve_search, flops_range, hypervolume, non_dominated, pareto_search)
from attentive.space import Arch, SearchSpace, load_space

PROXIES = ("ntk", "grad_norm", "synflow")
# Training-free proxies cost a forward/backward pass of a fresh subnet per arch: far smaller searches.
PROXY_SEARCH = {"population": 16, "generations": 4}
PROXY_FRONT = {"population": 16, "generations": 3, "num_buckets": 8, "elites_per_bucket": 1}


class UsageError(ValueError):
    """Bad command-line input: reported as one line, exit status 2."""


# ---------------------------------------------------------------------------------------------------------------
# Arguments


def parse_budgets(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        try:
            v = float(part)
        except ValueError:
            raise UsageError(f"--budgets: {part.strip()!r} is not a number; give MFLOPs separated by commas, "
                             f"e.g. --budgets 10,20,40") from None
        if not math.isfinite(v) or v <= 0:
            raise UsageError(f"--budgets: {part.strip()!r} must be a positive number of MFLOPs")
        values.append(v)
    return sorted(set(values))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="search.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python search.py --checkpoint runs/fmnist/last.pt --budgets 3,5,8 --out search_out")
    p.add_argument("--checkpoint", required=True, help="training checkpoint (train.py's last.pt or epoch_N.pt)")
    p.add_argument("--out", required=True, help="output directory (refused if it exists, unless --force)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--budgets", help="comma-separated FLOPs budgets in MFLOPs, e.g. 10,20,40")
    mode.add_argument("--export-arch", metavar="ARCH.json",
                      help="export this arch (AttentiveNAS dict layout) instead of searching; needs --max-mflops")
    p.add_argument("--max-mflops", type=float, help="with --export-arch: refuse the arch if it has more MFLOPs")
    objective = p.add_mutually_exclusive_group()
    objective.add_argument("--predictor", metavar="DIR", help="saved AccuracyPredictor (default: the checkpoint's)")
    objective.add_argument("--proxy", choices=PROXIES, help="training-free objective instead of a predictor")
    p.add_argument("--proxy-batch-size", type=int, default=32, help="training images per proxy evaluation")
    p.add_argument("--proxy-mu", type=float, default=2.0, help="NASI penalty slope above nu (default 2)")
    p.add_argument("--proxy-nu", type=float, default=None,
                   help="NASI threshold; default: the 0.9 quantile of the proxy over 16 seeded random archs")
    p.add_argument("--space", help="refuse the checkpoint unless its space is this one (name or YAML path)")
    p.add_argument("--top-k", type=int, default=5, help="candidates per budget re-ranked by held-out top-1")
    p.add_argument("--front-measure", type=int, default=8,
                   help="archs of the predicted front also measured on the held-out split (plot)")
    p.add_argument("--population", type=int, help="evolution population (default: 256; 16 with --proxy)")
    p.add_argument("--generations", type=int, help="evolution generations (default: 24; 4 with --proxy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (cuda when available) | cpu | cuda[:N]")
    p.add_argument("--calib-batches", type=int, default=16, help="BN recalibration batches of training images")
    p.add_argument("--calib-batch-size", type=int, default=None,
                   help="images per calibration batch (default: the checkpoint's data.batch_size, else 128)")
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--holdout-size", type=int, default=None,
                   help="held-out images used to re-rank candidates (default: the whole held-out split); exported "
                        "subnets are always measured on the whole held-out and test splits")
    p.add_argument("--data-root", help="dataset root (default: the checkpoint config's data.root)")
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def check_args(args: argparse.Namespace) -> None:
    if args.export_arch is not None and args.max_mflops is None:
        raise UsageError("--export-arch needs --max-mflops B (the budget the arch must fit)")
    if args.budgets is not None and args.max_mflops is not None:
        raise UsageError("--max-mflops goes with --export-arch; with --budgets give the budgets only")
    for name in ("top_k", "front_measure", "population", "generations", "calib_batches", "calib_batch_size",
                 "eval_batch_size", "proxy_batch_size", "holdout_size"):
        v = getattr(args, name)
        minimum = 0 if name in ("front_measure", "generations") else 1
        if v is not None and v < minimum:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {minimum}, got {v}")
    if args.population is not None and args.population < 4:
        raise UsageError(f"--population must be >= 4, got {args.population}")
    if args.max_mflops is not None and not (math.isfinite(args.max_mflops) and args.max_mflops > 0):
        raise UsageError(f"--max-mflops must be a positive number, got {args.max_mflops}")
    if args.proxy_mu < 0:
        raise UsageError(f"--proxy-mu must be >= 0, got {args.proxy_mu}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use cpu")
    return device


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint, data, objective


def load_checkpoint_checked(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.Module, dict]:
    try:
        supernet, ckpt = load_supernet(args.checkpoint, map_location=device)
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UsageError(f"--checkpoint {args.checkpoint}: {e}") from None
    if args.space is not None:
        try:
            wanted = load_space(args.space)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--space {args.space}: {e}") from None
        if wanted.hash != supernet.space.hash:
            raise UsageError(f"--checkpoint {args.checkpoint} is a supernet of space '{supernet.space.name}' "
                             f"({supernet.space.hash}), not of --space {args.space} ({wanted.hash})")
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt["config"].get("data"), dict):
        raise UsageError(f"--checkpoint {args.checkpoint} has no config['data'] (written by train.py?): the "
                         f"held-out split cannot be rebuilt")
    return supernet.eval(), ckpt


def build_data(args: argparse.Namespace, ckpt: dict, num_classes: int) -> tuple[DataSplits, dict]:
    """The checkpoint's splits: the same seeded held-out split the trainer used."""
    data_cfg = dict(ckpt["config"]["data"])
    if args.data_root is not None:
        data_cfg["root"] = args.data_root
    try:
        splits = datasets_from_config(data_cfg, num_classes=num_classes)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot rebuild the checkpoint's data ({data_cfg.get('name')}, root "
                         f"{data_cfg.get('root')}): {e}; pass --data-root") from None
    return splits, data_cfg


ScoreFn = Callable[[Any], np.ndarray]


def build_objective(args: argparse.Namespace, space: SearchSpace, ckpt: dict, num_classes: int,
                    splits: Any, device: torch.device) -> tuple[ScoreFn, str, str, bool]:
    """(score_fn, score_input, description, scores are accuracies)."""
    if args.proxy is not None:
        from predictors.proxies import nasi_penalized, random_minibatch, score_archs

        images, labels = random_minibatch(splits.train, min(args.proxy_batch_size, len(splits.train)), args.seed)

        def raw(archs: Sequence[Arch]) -> np.ndarray:
            return score_archs(space, archs, args.proxy, images, labels, seed=args.seed, device=device,
                               num_classes=num_classes)

        nu = args.proxy_nu
        if nu is None:
            rng = np.random.Generator(np.random.PCG64(args.seed))
            sample = [space.arch_from_indices(r) for r in space.sample_indices(rng, 16)]
            nu = float(np.quantile(raw(sample), 0.9))
        mu = args.proxy_mu
        description = f"proxy {args.proxy}, NASI penalty mu={mu:g} nu={nu:.6g}"
        return (lambda archs: nasi_penalized(raw(archs), mu, nu)), "archs", description, False

    from predictors.xgb import AccuracyPredictor

    if args.predictor is not None:
        try:
            predictor = AccuracyPredictor.load(args.predictor, space)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(f"--predictor {args.predictor}: {e}") from None
        return predictor.predict, "indices", f"predictor {args.predictor}", True
    if ckpt.get("predictor"):
        try:
            predictor = AccuracyPredictor.from_state(ckpt["predictor"], space)
        except ValueError as e:
            raise UsageError(f"the predictor stored in --checkpoint {args.checkpoint} is refused: {e}") from None
        return predictor.predict, "indices", "predictor stored in the checkpoint", True
    raise UsageError(f"--checkpoint {args.checkpoint} stores no accuracy predictor: pass --predictor DIR (a saved "
                     f"AccuracyPredictor, e.g. from predictors.retrain) or --proxy {{{','.join(PROXIES)}}}")


def read_arch_file(path: str, space: SearchSpace) -> Arch:
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--export-arch {path}: file not found") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--export-arch {path}: not valid JSON ({e})") from None
    if isinstance(data, dict) and isinstance(data.get("arch"), dict):
        data = data["arch"]  # a pareto.json row or a Candidate dict
    try:
        return space.validate(Arch.from_dict(data))
    except ValueError as e:
        raise UsageError(f"--export-arch {path}: not an arch of space '{space.name}': {e}") from None


# ---------------------------------------------------------------------------------------------------------------
# Measuring, choosing, reporting


def budget_dir_name(budget: float) -> str:
    return f"subnet_{budget:g}mflops"


class Rows:
    """Every evaluated arch, keyed by its JSON, with predicted and measured accuracy and its roles."""

    def __init__(self, space: SearchSpace, num_classes: int) -> None:
        self.space, self.num_classes = space, num_classes
        self.rows: dict[str, dict[str, Any]] = {}

    def add(self, arch: Arch, predicted: float | None, role: str | None = None) -> dict[str, Any]:
        key = arch.to_json()
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = {
                "id": len(self.rows), "arch": arch.to_dict(),
                "mflops": count_flops(self.space, arch, self.num_classes),
                "mparams": count_params(self.space, arch, self.num_classes),
                "predicted": predicted, "holdout_top1": None, "test_top1": None, "roles": [],
                "on_front": False, "on_predicted_front": False, "exported_for_mflops": [],
            }
        if predicted is not None:
            row["predicted"] = predicted
        if role is not None and role not in row["roles"]:
            row["roles"].append(role)
        return row

    def mark_fronts(self) -> None:
        rows = list(self.rows.values())
        scored = [r for r in rows if r["predicted"] is not None]
        if scored:
            for i in non_dominated([r["mflops"] for r in scored], [r["predicted"] for r in scored]):
                scored[i]["on_predicted_front"] = True
        measured = [r for r in rows if r["holdout_top1"] is not None]
        if measured:
            for i in non_dominated([r["mflops"] for r in measured], [r["holdout_top1"] for r in measured]):
                measured[i]["on_front"] = True

    def sorted(self) -> list[dict[str, Any]]:
        return sorted(self.rows.values(), key=lambda r: (r["mflops"], r["id"]))


CSV_COLUMNS = ("id", "mflops", "mparams", "predicted", "holdout_top1", "test_top1", "on_front",
               "on_predicted_front", "roles", "exported_for_mflops", "arch")


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in rows:
        writer.writerow([
            r["id"], f"{r['mflops']:.6f}", f"{r['mparams']:.6f}",
            "" if r["predicted"] is None else f"{r['predicted']:.6f}",
            "" if r["holdout_top1"] is None else f"{r['holdout_top1']:.4f}",
            "" if r["test_top1"] is None else f"{r['test_top1']:.4f}",
            int(r["on_front"]), int(r["on_predicted_front"]), ";".join(r["roles"]),
            ";".join(f"{b:g}" for b in r["exported_for_mflops"]), json.dumps(r["arch"], sort_keys=True),
        ])
    return buf.getvalue()


def plot_pareto(path: Path, rows: list[dict[str, Any]], budgets: list[float], title: str,
                predicted_is_accuracy: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    measured = [r for r in rows if r["holdout_top1"] is not None]
    if predicted_is_accuracy:
        pf = sorted((r for r in rows if r["on_predicted_front"]), key=lambda r: r["mflops"])
        if pf:
            ax.step([r["mflops"] for r in pf], [r["predicted"] for r in pf], where="post", color="tab:gray",
                    ls="--", lw=1, label="predicted front (predictor)")
    ax.scatter([r["mflops"] for r in measured], [r["holdout_top1"] for r in measured], s=18, color="tab:blue",
               alpha=0.6, label="evaluated archs (held-out top-1)")
    front = sorted((r for r in measured if r["on_front"]), key=lambda r: r["mflops"])
    ax.step([r["mflops"] for r in front], [r["holdout_top1"] for r in front], where="post", color="tab:blue",
            lw=1.5, label="measured front")
    exported = [r for r in measured if r["exported_for_mflops"]]
    ax.scatter([r["mflops"] for r in exported], [r["holdout_top1"] for r in exported], marker="*", s=220,
               color="tab:red", zorder=5, label="exported subnets")
    for r in exported:
        label = f"≤{', '.join(f'{b:g}' for b in r['exported_for_mflops'])} MFLOPs"
        ax.annotate(label, (r["mflops"], r["holdout_top1"]), textcoords="offset points", xytext=(6, -12),
                    fontsize=8, color="tab:red")
    for role, label in (("min", "min net"), ("max", "max net")):
        for r in measured:
            if role in r["roles"]:
                ax.scatter([r["mflops"]], [r["holdout_top1"]], marker="s", s=50, color="black", zorder=6)
                ax.annotate(label, (r["mflops"], r["holdout_top1"]), textcoords="offset points", xytext=(6, 4),
                            fontsize=9)
    max_mflops = max(r["mflops"] for r in rows)
    for b in budgets:
        if b <= max_mflops:  # a budget above the largest subnet is marked by its exported star only
            ax.axvline(b, color="tab:red", lw=0.6, alpha=0.4)
    ax.set_xlabel("MFLOPs (multiply-adds)")
    ax.set_ylabel("top-1 (%), held-out split of the training set")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _progress(iterable: Any, enabled: bool, desc: str, total: int | None = None) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# Modes


def export_one(args: argparse.Namespace) -> dict[str, Any]:
    """--export-arch: export a given arch, refused if it exceeds --max-mflops."""
    device = resolve_device(args.device)
    check_output_dir_usage(args.out, args.force)
    supernet, ckpt = load_checkpoint_checked(args, device)
    space, num_classes = supernet.space, supernet.num_classes
    arch = read_arch_file(args.export_arch, space)
    mflops = count_flops(space, arch, num_classes)
    if mflops > args.max_mflops:
        raise UsageError(f"--export-arch {args.export_arch} has {mflops:.4g} MFLOPs, over --max-mflops "
                         f"{args.max_mflops:g}; pick a smaller arch or raise the budget")
    splits, data_cfg = build_data(args, ckpt, num_classes)
    calib, holdout, test, channels_last = loaders(args, splits, data_cfg, device)
    metrics = export_subnet(args.out, supernet, arch, calib, holdout_loader=holdout, test_loader=test,
                            budget=args.max_mflops, device=device, onnx=not args.no_onnx, force=args.force,
                            channels_last=channels_last, extra=provenance(args, ckpt))
    log(f"exported {arch} ({mflops:.4g} MFLOPs, held-out top-1 {metrics['holdout_top1']:.2f}%, "
        f"test top-1 {metrics['test_top1']:.2f}%) to {args.out}")
    return metrics


def check_output_dir_usage(out: str, force: bool) -> None:
    try:
        check_output_dir(out, force)
    except FileExistsError as e:
        raise UsageError(f"--out: {e}") from None


def loaders(args: argparse.Namespace, splits: DataSplits, data_cfg: dict, device: torch.device):
    calib_bs = args.calib_batch_size or int(data_cfg.get("batch_size") or 128)
    calib = calibration_batches(splits, min(calib_bs, len(splits.train_plain)), args.calib_batches, seed=args.seed)
    holdout = build_loader(splits.holdout, args.eval_batch_size, train=False)
    test = build_loader(splits.test, args.eval_batch_size, train=False)
    return calib, holdout, test, device.type == "cpu"  # channels_last: ~2x faster convs on CPU


def provenance(args: argparse.Namespace, ckpt: dict) -> dict[str, Any]:
    return {"checkpoint": str(args.checkpoint), "checkpoint_epoch": ckpt.get("epoch"),
            "calib_batches": args.calib_batches, "seed": args.seed,
            "data": {k: v for k, v in ckpt["config"]["data"].items() if isinstance(v, (str, int, float, type(None)))}}


def search_budgets(args: argparse.Namespace, score_fn: ScoreFn | None = None,
                   score_input: str = "archs") -> dict[str, Any]:
    """--budgets: search, measure, export. `score_fn` replaces the predictor/proxy (tests, notebooks)."""
    start = time.perf_counter()
    progress = not args.no_progress
    budgets = parse_budgets(args.budgets)
    device = resolve_device(args.device)
    check_output_dir_usage(args.out, args.force)
    supernet, ckpt = load_checkpoint_checked(args, device)
    space, num_classes = supernet.space, supernet.num_classes
    lo, hi = flops_range(space, num_classes)
    for b in budgets:
        try:
            check_budget(space, b, num_classes)
        except ValueError as e:
            raise UsageError(f"--budgets: {e}") from None
        if b > hi:
            log(f"budget {b:g} MFLOPs is above the largest subnet ({hi:.4g} MFLOPs): searching the whole space")
    if score_fn is not None:
        objective_name, is_accuracy = "score function given by the caller", True
    elif args.proxy is None:  # refuse a missing or foreign predictor before loading any data
        score_fn, score_input, objective_name, is_accuracy = build_objective(args, space, ckpt, num_classes,
                                                                             None, device)
    splits, data_cfg = build_data(args, ckpt, num_classes)
    if score_fn is None:
        score_fn, score_input, objective_name, is_accuracy = build_objective(args, space, ckpt, num_classes,
                                                                             splits, device)
    objective = Objective(space, score_fn, score_input)
    evo_kw: dict[str, Any] = dict(PROXY_SEARCH) if args.proxy else {}
    front_kw: dict[str, Any] = dict(PROXY_FRONT) if args.proxy else {}
    for kw in (evo_kw, front_kw):
        kw.update({k: v for k, v in (("population", args.population), ("generations", args.generations))
                   if v is not None})

    # 1. Fast objective: per-budget evolution and the whole predicted front.
    results = {}
    for b in budgets:
        r = evolve_search(space, objective, b, seed=args.seed, top_k=args.top_k, num_classes=num_classes,
                          progress=progress, **evo_kw)
        results[b] = r
        log(f"budget {b:g} MFLOPs: {r.generations} generations, {r.num_seen} archs scored "
            f"({r.archs_per_second:,.0f}/s, {r.seconds:.2f}s); best predicted {r.best.score:.3f} at "
            f"{r.best.mflops:.4g} MFLOPs")
    front = pareto_search(space, objective, seed=args.seed, num_classes=num_classes, progress=progress, **front_kw)
    log(f"predicted front: {len(front.front)} archs over {lo:.4g}..{hi:.4g} MFLOPs, hypervolume "
        f"{front.hypervolume:.4g}, {front.num_seen} archs scored in {front.seconds:.2f}s")

    # 2. What to measure on the held-out split.
    rows = Rows(space, num_classes)
    rows.add(space.min_arch(), float(objective(np.array([space.arch_to_indices(space.min_arch())]))[0]), "min")
    rows.add(space.max_arch(), float(objective(np.array([space.arch_to_indices(space.max_arch())]))[0]), "max")
    for b, r in results.items():
        for rank, c in enumerate(r.top):
            rows.add(c.arch, c.score, f"top{rank + 1}@{b:g}")
    for c in front.front:
        rows.add(c.arch, c.score)
    if args.front_measure and front.front:
        picks = np.unique(np.linspace(0, len(front.front) - 1, args.front_measure).round().astype(int))
        for i in picks:
            rows.add(front.front[i].arch, front.front[i].score, "front")
    to_measure = [r for r in rows.sorted() if r["roles"]]

    calib, holdout, test, channels_last = loaders(args, splits, data_cfg, device)
    rerank_set = splits.holdout
    if args.holdout_size is not None and args.holdout_size < len(splits.holdout):
        rerank_set = Subset(splits.holdout, range(args.holdout_size))  # the split is a seeded random subset
    rerank = build_loader(rerank_set, args.eval_batch_size, train=False)
    measure_start = time.perf_counter()
    for row in _progress(to_measure, progress, "held-out top-1"):
        row["holdout_top1"] = evaluate_arch(supernet, Arch.from_dict(row["arch"]), calib, rerank, device,
                                            channels_last)
    measure_seconds = time.perf_counter() - measure_start
    log(f"measured {len(to_measure)} archs on the held-out split ({len(rerank_set)} images) in "
        f"{measure_seconds:.1f}s")

    # 3. Re-rank by held-out top-1: each budget's top-K, and every other measured arch that fits the budget (the
    #    min net fits all; front samples may beat the predictor's picks).
    chosen = choose_per_budget(to_measure, budgets)
    for b, row in chosen.items():
        row["exported_for_mflops"].append(b)
    rows.mark_fronts()

    summary: dict[str, Any] = {"budgets": {}}
    with atomic_directory(args.out, args.force) as tmp:
        for b in _progress(budgets, progress, "export"):
            row = chosen[b]
            arch = Arch.from_dict(row["arch"])
            metrics = export_subnet(
                tmp / budget_dir_name(b), supernet, arch, calib, holdout_loader=holdout, test_loader=test,
                budget=b, device=device, onnx=not args.no_onnx, channels_last=channels_last,
                extra={**provenance(args, ckpt), "objective": objective_name, "predicted": row["predicted"],
                       "search_holdout_top1": row["holdout_top1"], "search_roles": row["roles"],
                       "rerank_holdout_images": len(rerank_set)})
            row["test_top1"] = metrics["test_top1"]
            summary["budgets"][f"{b:g}"] = {
                "dir": budget_dir_name(b), "mflops": metrics["mflops"], "fvcore_mflops": metrics["fvcore_mflops"],
                "mparams": metrics["mparams"], "predicted": row["predicted"],
                "holdout_top1": metrics["holdout_top1"], "test_top1": metrics["test_top1"],
                "search": {"generations": results[b].generations, "archs_scored": results[b].num_seen,
                           "archs_per_second": results[b].archs_per_second, "seconds": results[b].seconds,
                           "clamped_to_mflops": results[b].max_mflops},
            }
        table = rows.sorted()
        measured = [r for r in table if r["holdout_top1"] is not None]
        ref = (hi, min(r["holdout_top1"] for r in measured))
        summary.update({
            "checkpoint": str(args.checkpoint), "space_name": space.name, "space_hash": space.hash,
            "objective": objective_name, "seed": args.seed, "top_k": args.top_k,
            "flops_range_mflops": [lo, hi],
            "evolution_options": {**asdict(EvolutionOptions(**evo_kw)), "top_k": args.top_k,
                                  "num_classes": num_classes, "score_input": score_input, "progress": progress},
            "front_options": {**asdict(ParetoOptions(**front_kw)), "num_classes": num_classes,
                              "score_input": score_input, "progress": progress},
            "predicted_front": {"size": len(front.front), "hypervolume": front.hypervolume,
                                "reference": list(front.reference), "archs_scored": front.num_seen,
                                "seconds": front.seconds},
            "measured_front": {"size": sum(r["on_front"] for r in table),
                               "hypervolume": hypervolume([r["mflops"] for r in measured],
                                                          [r["holdout_top1"] for r in measured], ref),
                               "reference": list(ref)},
            "archs_scored_total": objective.num_scored, "objective_seconds": objective.seconds,
            "archs_measured": len(measured), "measure_seconds": measure_seconds,
            "rerank_holdout_images": len(rerank_set), "holdout_images": len(splits.holdout),
            "test_images": len(splits.test),
        })
        pareto = {"space_name": space.name, "space_hash": space.hash, "objective": objective_name,
                  "predicted_is_accuracy": is_accuracy, "columns": list(CSV_COLUMNS), "rows": table}
        write_json_atomic(tmp / "pareto.json", pareto)
        write_text_atomic(tmp / "pareto.csv", rows_to_csv(table))
        plot_pareto(tmp / "pareto.png", table, budgets,
                    f"{space.name}: held-out top-1 vs MFLOPs ({objective_name})", is_accuracy)
        summary["seconds"] = time.perf_counter() - start
        write_json_atomic(tmp / "search.json", summary)
    print(format_summary(summary))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'budget':>8} {'MFLOPs':>8} {'fvcore':>8} {'Mparams':>8} {'pred':>7} {'held-out':>9} {'test':>7}  dir"]
    for b, s in summary["budgets"].items():
        pred = "" if s["predicted"] is None else f"{s['predicted']:.4g}"
        lines.append(f"{b:>8} {s['mflops']:8.3f} {s['fvcore_mflops']:8.3f} {s['mparams']:8.3f} {pred:>7} "
                     f"{s['holdout_top1']:9.2f} {s['test_top1']:7.2f}  {s['dir']}")
    lines.append(f"predicted front hypervolume {summary['predicted_front']['hypervolume']:.4g}; measured front "
                 f"hypervolume {summary['measured_front']['hypervolume']:.4g}; total {summary['seconds']:.1f}s")
    return "\n".join(lines)


def run(args: argparse.Namespace, score_fn: ScoreFn | None = None, score_input: str = "archs") -> dict[str, Any]:
    check_args(args)
    if args.export_arch is not None:
        return export_one(args)
    return search_budgets(args, score_fn, score_input)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on its own usage errors
    tune_cpu_runtime()  # faster CPU steps, same numbers (attentive/cpu_runtime.py)
    try:
        run(args)
    except UsageError as e:
        parser.print_usage(sys.stderr)
        print(f"search.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
