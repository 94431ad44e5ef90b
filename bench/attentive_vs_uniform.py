"""Experiment 1: does AttentiveNAS sampling give a better accuracy-vs-FLOPs front than uniform sandwich sampling?

On the tiny space and Fashion-MNIST, with the same seeds, data and epochs (configs/train/fashion_mnist.yaml unless
--config), one train.py run per (method, seed):

    uniform            uniform sandwich sampling
    bestup_predictor   BestUp-3, candidates scored by the XGBoost predictor the run fits on the held-out split
    worstup_predictor  WorstUp-3, same predictor scorer
    bestup_loss        BestUp-3, candidates scored by minus their minibatch loss (AttentiveNAS's released scorer)

All attentive methods use the config's uniform warm-up (sampler.warmup_epochs, 1 epoch in fashion_mnist.yaml),
so between them only the scorer / direction differs. Each run lives in <out>/runs/<method>_seed<seed> with
resume=auto: an interrupted experiment started again resumes its runs, finished runs are not retrained, and
test measurements already made are reused (JSONL per run, keyed by the evaluation settings).

Per run:
  * time: training-loop seconds per epoch (metrics.jsonl "epoch" records), optimizer-step seconds per epoch
    (final.json train_seconds / epochs, exact across resumes) and all-in wall seconds per epoch (the train.py
    process, incl. start-up, validation and predictor fitting; unknown when the run was resumed or reused);
  * the front: TEST top-1 of a fixed set of --num-archs archs (attentive.measure.stratified_archs with
    --arch-seed: the min and max arch plus archs spread over the FLOPs range; the same archs for every run), each
    after BN recalibration on the same --calib-batches batches of training images (seeded);
  * the searched subnet per budget: attentive.search.evolve with the predictor the run fitted (held-out data)
    as the objective, then its test top-1 (reported only). Runs without a predictor (uniform, bestup_loss) skip
    this; the output says so. Searched subnets are plotted but kept out of the hypervolume, so hypervolumes of
    all methods measure the same fixed archs;
  * hypervolume of the front: MFLOPs normalized to the space's range, x = (MFLOPs - min) / (max - min) in
    [0, 1]; reference point (x = 1, top-1 = --hv-floor, default chance = 100 / classes). Area dominated by the
    front = integral over budgets x in [0, 1] of (best top-1 with FLOPs <= x) - floor; since the min arch is in
    the set, HV + floor is the mean best top-1 over budgets spread uniformly over the FLOPs range (in %).
  * top-1 at low / mid / high FLOPs: best test top-1 among the fixed archs within the budgets
    min + f * (max - min) for f in --budget-fractions (default 0.1, 0.4, 1.0); the searches use the same budgets.

Outputs in --out: results.json (everything), results.csv (one row per run), points.csv (one row per run x arch),
front_overlay.png (one colour per method; each seed's front dashed, the front of the per-arch mean over seeds
solid; searched subnets as stars). Test accuracy is reported only: nothing is chosen by it.

    # full scale (the config's 2 epochs over the whole training split, 50 archs, the whole test split)
    python bench/attentive_vs_uniform.py --seeds 0,1 --out runs/exp_attentive_vs_uniform
    # reduced (~25 min on 2 busy cores): extra key=value go to every train.py run
    python bench/attentive_vs_uniform.py --seeds 0,1 --threads 1 --out runs/exp1_small --num-archs 16 \\
        --eval-size 1000 --calib-batches 2 sched.epochs=2 train.max_steps_per_epoch=30 sampler.num_measure=24 \\
        sampler.measure_holdout_size=500 sampler.measure_calib_batches=2 eval.holdout_size=500 \\
        eval.calib_batches=2 eval.test_at_end=false
    python bench/attentive_vs_uniform.py --quick --out /tmp/exp1_smoke   # synthetic smoke test: numbers mean nothing
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _experiment_utils import (ROOT, config_differences, eval_device, fmt, fmt_spread, parse_float_list,  # noqa: E402
                               parse_int_list, pyplot, read_json, run_train, save_figure_atomic, seeded_subset,
                               spread, tail, warn_synthetic, write_csv_atomic, write_json_atomic)

METHODS: dict[str, list[str]] = {
    "uniform": ["sampler.name=uniform"],
    "bestup_predictor": ["sampler.name=bestup", "sampler.scorer=predictor"],
    "worstup_predictor": ["sampler.name=worstup", "sampler.scorer=predictor"],
    "bestup_loss": ["sampler.name=bestup", "sampler.scorer=loss"],
}
NUM_TRIALS = 3  # k candidates per sampled subnet (BestUp-3 / WorstUp-3)
DEFAULT_CONFIG = ROOT / "configs" / "train" / "fashion_mnist.yaml"
# Keys the experiment sets itself: the user may not override them.
RESERVED_KEYS = ("seed", "output_dir", "resume", "sampler.name", "sampler.scorer", "sampler.num_trials",
                 "num_threads")  # num_threads: use --threads (it also sets this process's threads)
BUDGET_NAMES = ("low", "mid", "high")

# --quick: synthetic data, 2 epochs (the predictor methods need 1 warm-up epoch) of 1 step, small everything: a
# smoke test of the pipeline, nothing more.
QUICK_OVERRIDES = [
    "device=cpu", "data.name=synthetic", "data.synthetic_num_train=80", "data.synthetic_num_test=32",
    "data.holdout_fraction=0.2", "data.batch_size=8", "data.eval_batch_size=32", "sched.epochs=2",
    "sched.warmup_epochs=0", "sampler.warmup_epochs=1", "train.max_steps_per_epoch=1", "sampler.pool_size=20000",
    "sampler.num_measure=4", "sampler.measure_holdout_size=16", "sampler.measure_calib_batches=1",
    "eval.calib_batches=1", "eval.holdout_size=16", "eval.num_middle=0", "eval.test_at_end=false",
    "checkpoint.every_steps=0", "checkpoint.keep=1", "log.every_steps=1",
]
QUICK_DEFAULTS = {"num_archs": 5, "calib_batches": 1, "search_population": 16, "search_generations": 2}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Extra key=value arguments are train.py config overrides applied to every run "
                                       "(e.g. sched.epochs=1 train.max_steps_per_epoch=100).")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--seeds", default="0,1", help="comma-separated training seeds (at least 2 to see the noise)")
    p.add_argument("--num-archs", type=int, default=None, help="fixed archs on each front (default 50; --quick 5)")
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the fixed arch set (the same for every run)")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="train.py config YAML (default fashion_mnist.yaml)")
    p.add_argument("--data-root", default=None, help="data.root for training and evaluation")
    p.add_argument("--out", default="runs/exp_attentive_vs_uniform", help="output directory")
    p.add_argument("--calib-batches", type=int, default=None,
                   help="BN recalibration batches (of data.batch_size training images) per arch "
                        "(default: the config's eval.calib_batches)")
    p.add_argument("--calib-seed", type=int, default=0, help="seed of the calibration images (same for every run)")
    p.add_argument("--eval-size", type=int, default=None,
                   help="test images per arch (a seeded subset; default: the whole test split)")
    p.add_argument("--budget-fractions", default="0.1,0.4,1.0",
                   help="low,mid,high budgets as fractions of the space's FLOPs range (min + f * (max - min))")
    p.add_argument("--hv-floor", type=float, default=None,
                   help="top-1 (%%) of the hypervolume reference point (default: chance, 100 / classes)")
    p.add_argument("--search-population", type=int, default=None, help="evolve population (default 512; --quick 16)")
    p.add_argument("--search-generations", type=int, default=None, help="evolve generations (default 24; --quick 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads here and in every run (num_threads=N); default torch's own. On a shared "
                        "machine use 1: with busy cores, 2 threads ran a forward pass ~50x slower than 1 (measured)")
    p.add_argument("--quick", action="store_true",
                   help="synthetic smoke mode: tiny data, 2 epochs x 1 step, 5 archs (results mean nothing)")
    p.add_argument("--in-process", action="store_true",
                   help="call train.main in this process instead of a train.py subprocess (smoke test speed; "
                        "wall times then exclude interpreter start-up)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="train.py config overrides for every run")
    return p


# ---------------------------------------------------------------------------------------------------------------
def resolve_runs(args: argparse.Namespace, methods: list[str], seeds: list[int], out: Path) -> list[dict]:
    """One dict per (method, seed): name, run dir, overrides, resolved config (validated here, before any run)."""
    from attentive.config import load_config

    runs = []
    for method in methods:
        for seed in seeds:
            name = f"{method}_seed{seed}"
            run_dir = out / "runs" / name
            overrides = [f"seed={seed}", f"output_dir={run_dir}", "resume=auto", "log.progress=false",
                         "log.tensorboard=false", f"sampler.num_trials={NUM_TRIALS}", *METHODS[method]]
            if args.quick:
                overrides += QUICK_OVERRIDES
            if args.data_root is not None:
                overrides.append(f"data.root={args.data_root}")
            if args.threads is not None:
                overrides.append(f"num_threads={args.threads}")
            overrides += args.overrides
            cfg = load_config(args.config, overrides)
            runs.append({"method": method, "seed": seed, "name": name, "run_dir": run_dir, "overrides": overrides,
                         "cfg": cfg})
    # Same data, epochs and recipe for every run: only seed and sampler may differ.
    base = runs[0]["cfg"]
    for r in runs[1:]:
        diff = {k: v for k, v in config_differences(base, r["cfg"]).items()
                if k not in ("seed", "sampler.name", "sampler.scorer")}
        if diff:
            raise ValueError(f"runs {runs[0]['name']} and {r['name']} differ in {diff}")
    return runs


def train_run(run: dict, config: str, in_process: bool) -> dict:
    """Train (or resume, or reuse) one run; returns its timing record. Raises RuntimeError on failure."""
    run_dir: Path = run["run_dir"]
    record_path = run_dir / "bench_run.json"
    saved_cfg_path = run_dir / "config.yaml"
    if saved_cfg_path.is_file():
        import yaml

        saved = yaml.safe_load(saved_cfg_path.read_text())
        diff = config_differences(saved, run["cfg"])
        if diff:
            raise ValueError(f"{run_dir} holds a run with other settings ({diff}); use another --out")
    final = read_json(run_dir / "final.json")
    record = read_json(record_path)
    if final is not None and final.get("epochs") == run["cfg"]["sched"]["epochs"] and record is not None:
        return {**record, "reused": True}
    resumed = (run_dir / "last.pt").is_file()
    rc, wall = run_train(config, run["overrides"], run_dir / "bench_train_output.log", in_process)
    if rc != 0:
        raise RuntimeError(f"train.py exited with status {rc} for {run['name']}; last lines of "
                           f"{run_dir / 'bench_train_output.log'} / train.log:\n{tail(run_dir / 'train.log')}")
    record = {"overrides": run["overrides"], "wall_seconds": None if resumed else wall, "resumed": resumed,
              "in_process": in_process}
    write_json_atomic(record_path, record)
    return {**record, "reused": False}


def timing(run: dict, record: dict) -> dict[str, Any]:
    run_dir: Path = run["run_dir"]
    final = read_json(run_dir / "final.json") or {}
    epochs = final.get("epochs") or run["cfg"]["sched"]["epochs"]
    epoch_secs, predictor_secs = [], []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if rec.get("kind") == "epoch":
                epoch_secs.append(float(rec["seconds"]))
            elif rec.get("kind") == "predictor":
                predictor_secs.append(float(rec["seconds"]))
    wall = record.get("wall_seconds")
    return {
        "epochs": epochs, "steps": final.get("steps"),
        "epoch_s": float(np.mean(epoch_secs)) if epoch_secs else None,
        "epoch_s_each": epoch_secs,
        "train_step_s_per_epoch": final["train_seconds"] / epochs if final.get("train_seconds") else None,
        "predictor_fit_s": float(np.sum(predictor_secs)) if predictor_secs else 0.0,
        "allin_s_per_epoch": wall / epochs if wall else None,
        "run_wall_s": wall, "resumed": record.get("resumed"), "in_process": record.get("in_process"),
        "final_json": final,
    }


class Evaluator:
    """Test top-1 of archs inside each run's supernet, BN recalibrated on fixed training batches."""

    def __init__(self, cfg: dict, args: argparse.Namespace, calib_batches: int, eval_size: int | None) -> None:
        from attentive.cpu_runtime import use_channels_last
        from attentive.data import build_loader, calibration_batches, datasets_from_config
        from attentive.space import load_space

        d = cfg["data"]
        self.space = load_space(cfg["space"])
        self.data = datasets_from_config(d, num_classes=self.space.num_classes)
        self.num_classes = self.data.num_classes
        self.device = eval_device(cfg["device"])
        self.channels_last = use_channels_last(self.device, cfg["channels_last"])
        self.calib = calibration_batches(self.data, d["batch_size"], calib_batches, seed=args.calib_seed)
        test = seeded_subset(self.data.test, eval_size, seed=args.calib_seed)
        self.num_test = len(test)
        self.test_loader = build_loader(test, d["eval_batch_size"], train=False, num_workers=d["num_workers"])
        self.settings = {"calib_batches": calib_batches, "calib_batch_size": d["batch_size"],
                         "calib_seed": args.calib_seed, "eval_size": self.num_test,
                         "test_split_size": len(self.data.test)}

    def measure(self, run: dict, archs: list) -> tuple[list[dict], Any]:
        """(rows with test top-1 for `archs`, the checkpoint dict). Rows are cached per run in a JSONL file whose
        name hashes the checkpoint's position and the evaluation settings: reruns reuse them."""
        from attentive.checkpoint import load_supernet
        from attentive.measure import measure_archs

        model, ckpt = load_supernet(run["run_dir"] / "last.pt", map_location=self.device)
        if ckpt["space_hash"] != self.space.hash:
            raise ValueError(f"{run['name']}: checkpoint space {ckpt['space_hash']} is not {self.space.hash}")
        if self.channels_last:
            import torch

            model = model.to(memory_format=torch.channels_last)
        tag = json.dumps({"split": "test", "epoch": ckpt["epoch"], "step": ckpt["step"], **self.settings},
                         sort_keys=True)
        path = run["run_dir"] / f"bench_test_top1_{hashlib.sha256(tag.encode()).hexdigest()[:12]}.jsonl"
        rows = measure_archs(model, archs, self.calib, self.test_loader, self.device, out_path=path,
                             progress=False, channels_last=self.channels_last, tag=tag)
        return rows, ckpt


def front_stats(mflops: np.ndarray, top1: np.ndarray, lo: float, hi: float, floor: float,
                budgets: Sequence[float]) -> dict[str, Any]:
    from attentive.search import hypervolume, non_dominated

    x = (np.asarray(mflops) - lo) / max(hi - lo, 1e-12)
    hv = hypervolume(x, top1, (1.0, floor))
    at = {}
    for name, b in zip(BUDGET_NAMES, budgets):
        inside = mflops <= b + 1e-9
        at[name] = float(top1[inside].max()) if inside.any() else None
    return {"hypervolume": hv, "hv_mean_best_top1": hv + floor, "front": non_dominated(mflops, top1).tolist(),
            "top1_at": at}


def search_run(ckpt: dict, space, budgets: Sequence[float], seed: int, population: int,
               generations: int, num_classes: int) -> tuple[list[dict], str | None]:
    """Searched subnet per budget with the run's fitted predictor; ([], reason) when the run has none."""
    if ckpt.get("predictor") is None:
        return [], "no predictor in this run (only bestup/worstup with sampler.scorer=predictor fit one)"
    from attentive.scoring import predictor_scorer
    from attentive.search import evolve
    from predictors.xgb import AccuracyPredictor

    predictor = AccuracyPredictor.from_state(ckpt["predictor"], space)
    out = []
    for name, budget in zip(BUDGET_NAMES, budgets):
        arch, mflops, score = evolve(space, predictor_scorer(predictor), budget, seed=seed,
                                     population=population, generations=generations, num_classes=num_classes)
        out.append({"budget": name, "budget_mflops": budget, "arch": arch, "mflops": mflops,
                    "predicted_holdout_top1": score})
    return out, None


# ---------------------------------------------------------------------------------------------------------------
def plot(path: Path, runs: list[dict], methods: list[str], lo: float, hi: float, budgets: Sequence[float],
         warning: str | None) -> None:
    plt = pyplot()
    from attentive.search import non_dominated

    fig, ax = plt.subplots(figsize=(9, 6))
    colors = plt.get_cmap("tab10")

    def staircase(f: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = non_dominated(f, t)
        return np.append(f[idx], hi), np.append(t[idx], t[idx][-1])

    for m_i, method in enumerate(methods):
        color = colors(m_i % 10)
        done = [r for r in runs if r["method"] == method and r.get("points")]
        if not done:
            continue
        for r in done:
            f = np.array([p["mflops"] for p in r["points"]])
            t = np.array([p["top1"] for p in r["points"]])
            ax.scatter(f, t, s=8, color=color, alpha=0.25, linewidths=0)
            ax.plot(*staircase(f, t), drawstyle="steps-post", linestyle="--", linewidth=1, color=color, alpha=0.7)
            for s in r.get("searched", []):
                if s.get("test_top1") is not None:
                    ax.scatter([s["mflops"]], [s["test_top1"]], marker="*", s=90, color=color, edgecolors="black",
                               linewidths=0.5, zorder=5)
        f = np.array([p["mflops"] for p in done[0]["points"]])
        mean_t = np.mean([[p["top1"] for p in r["points"]] for r in done], axis=0)
        hv = spread(r["hypervolume"] for r in done)
        ax.plot(*staircase(f, mean_t), drawstyle="steps-post", linewidth=2, color=color,
                label=f"{method} (HV {fmt_spread(hv)}, {len(done)} seeds)")
    for b in budgets:
        ax.axvline(b, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlabel("MFLOPs")
    ax.set_ylabel("test top-1 (%) after BN recalibration")
    ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    title = "Accuracy-vs-FLOPs fronts: solid = front of the per-arch mean over seeds, dashed = each seed, * = searched"
    if warning:
        title = "SYNTHETIC DATA - MEANINGLESS NUMBERS\n" + title
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure_atomic(fig, path)
    plt.close(fig)


def print_table(runs: list[dict], methods: list[str], budgets: Sequence[float], warning: str | None) -> None:
    bcols = [f"top1@{b:.3g}MF" for b in budgets]
    head = (f"{'method':<18} {'seed':>4} {'s/epoch':>8} {'allin s/ep':>10} {'HV':>7} "
            + " ".join(f"{c:>12}" for c in bcols) + "  searched test top-1 (low/mid/high)")
    print("\n" + head)
    print("-" * len(head))
    for r in runs:
        if r["status"] != "done":
            print(f"{r['method']:<18} {r['seed']:>4}  {r['status']}: {r.get('error', '')[:80]}")
            continue
        t = r["timing"]
        searched = "/".join(fmt(s.get("test_top1")) for s in r["searched"]) or f"skipped"
        print(f"{r['method']:<18} {r['seed']:>4} {fmt(t['epoch_s'], 1):>8} {fmt(t['allin_s_per_epoch'], 1):>10} "
              f"{r['hypervolume']:>7.2f} " + " ".join(f"{fmt(r['top1_at'][n]):>12}" for n in BUDGET_NAMES)
              + f"  {searched}")
    print("\nmean ± std [min, max] over seeds")
    for method in methods:
        done = [r for r in runs if r["method"] == method and r["status"] == "done"]
        if not done:
            continue
        print(f"  {method} ({len(done)} seeds)")
        print(f"    time/epoch (s)       {fmt_spread(spread(r['timing']['epoch_s'] for r in done), 1)}")
        print(f"    hypervolume          {fmt_spread(spread(r['hypervolume'] for r in done))}")
        for n, b in zip(BUDGET_NAMES, budgets):
            print(f"    top-1 {n:<4} <= {b:5.3g} MF {fmt_spread(spread(r['top1_at'][n] for r in done))}")
    if warning:
        print("\n" + warning)


# ---------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    from attentive.config import ConfigError, parse_override

    try:
        methods = [m for m in args.methods.split(",") if m]
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise ValueError(f"--methods: unknown {bad or args.methods!r}; allowed: {', '.join(METHODS)}")
        seeds = parse_int_list(args.seeds, "--seeds")
        fractions = parse_float_list(args.budget_fractions, "--budget-fractions")
        if len(fractions) != 3 or not all(0 <= f <= 1 for f in fractions) or sorted(fractions) != fractions:
            raise ValueError(f"--budget-fractions needs 3 increasing fractions in [0, 1], got {args.budget_fractions}")
        for text in args.overrides:
            key, _ = parse_override(text)
            if key in RESERVED_KEYS:
                raise ValueError(f"override {text!r}: {key} is set by the experiment (use --seeds / --methods)")
        defaults = QUICK_DEFAULTS if args.quick else {"num_archs": 50, "calib_batches": None,
                                                      "search_population": 512, "search_generations": 24}
        for k, v in defaults.items():
            if getattr(args, k) is None:
                setattr(args, k, v)
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.num_archs < 2:
            raise ValueError(f"--num-archs must be >= 2, got {args.num_archs}")
        if args.eval_size is not None and args.eval_size < 1:
            raise ValueError(f"--eval-size must be >= 1, got {args.eval_size}")
        out = Path(args.out)
        runs = resolve_runs(args, methods, seeds, out)
    except (ValueError, ConfigError) as e:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    if len(seeds) < 2:
        print("note: one seed: the noise between seeds is not visible (use --seeds 0,1)", file=sys.stderr)

    import torch

    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _experiment(args, methods, seeds, fractions, out, runs)
    finally:
        torch.set_num_threads(threads_before)


def _experiment(args: argparse.Namespace, methods: list[str], seeds: list[int], fractions: list[float], out: Path,
                runs: list[dict]) -> int:
    from tqdm import tqdm

    from attentive.flops import count_flops
    from attentive.search import flops_range
    from attentive.measure import stratified_archs

    cfg = runs[0]["cfg"]
    warning = warn_synthetic(cfg["data"]["name"])
    calib_batches = args.calib_batches or cfg["eval"]["calib_batches"]
    evaluator = Evaluator(cfg, args, calib_batches, args.eval_size)
    space, num_classes = evaluator.space, evaluator.num_classes
    lo, hi = flops_range(space, num_classes)
    budgets = [lo + f * (hi - lo) for f in fractions]
    floor = 100.0 / num_classes if args.hv_floor is None else args.hv_floor
    archs = stratified_archs(space, args.num_archs, np.random.Generator(np.random.PCG64(args.arch_seed)))
    arch_mflops = np.array([count_flops(space, a, num_classes) for a in archs])

    failed = 0
    with tqdm(total=len(runs), desc="runs", unit="run", dynamic_ncols=True) as bar:
        for run in runs:
            bar.set_postfix_str(f"{run['name']}: train")
            result: dict[str, Any] = {"method": run["method"], "seed": run["seed"], "run_dir": str(run["run_dir"])}
            run["result"] = result
            try:
                record = train_run(run, args.config, args.in_process)
                result["timing"] = timing(run, record)
                bar.set_postfix_str(f"{run['name']}: evaluate")
                rows, ckpt = evaluator.measure(run, archs)
                top1 = np.array([r["top1"] for r in rows])
                result["points"] = [{"arch_index": i, "mflops": float(f), "top1": float(t)}
                                    for i, (f, t) in enumerate(zip(arch_mflops, top1))]
                result.update(front_stats(arch_mflops, top1, lo, hi, floor, budgets))
                searched, reason = search_run(ckpt, space, budgets, run["seed"], args.search_population,
                                              args.search_generations, num_classes)
                if searched:
                    bar.set_postfix_str(f"{run['name']}: searched subnets")
                    srows, _ = evaluator.measure(run, [s["arch"] for s in searched])
                    for s, row in zip(searched, srows):
                        s["arch"] = s["arch"].to_dict()
                        s["test_top1"] = row["top1"]
                result["searched"] = searched
                result["search_skipped"] = reason
                result["status"] = "done"
            except (RuntimeError, ValueError, FileNotFoundError) as e:
                failed += 1
                result.update(status="failed", error=str(e))
                tqdm.write(f"{run['name']} failed: {e}", file=sys.stderr)
            bar.update(1)

    results = [r["result"] for r in runs]
    summary = {}
    for method in methods:
        done = [r for r in results if r["method"] == method and r["status"] == "done"]
        summary[method] = {
            "num_seeds": len(done),
            "hypervolume": spread(r["hypervolume"] for r in done),
            "epoch_s": spread(r["timing"]["epoch_s"] for r in done),
            "train_step_s_per_epoch": spread(r["timing"]["train_step_s_per_epoch"] for r in done),
            "allin_s_per_epoch": spread(r["timing"]["allin_s_per_epoch"] for r in done),
            **{f"top1_{n}": spread(r["top1_at"][n] for r in done) for n in BUDGET_NAMES},
            **{f"searched_top1_{n}": spread(next((s["test_top1"] for s in r["searched"] if s["budget"] == n), None)
                                            for r in done) for n in BUDGET_NAMES},
        }
        if done:  # front of the per-arch mean over seeds (same archs in every run)
            mean_top1 = np.mean([[p["top1"] for p in r["points"]] for r in done], axis=0)
            summary[method]["mean_front"] = front_stats(arch_mflops, mean_top1, lo, hi, floor, budgets)
    report = {
        "experiment": "attentive_vs_uniform",
        "warning": warning,
        "space": space.name, "space_hash": space.hash, "num_classes": num_classes,
        "data": cfg["data"], "train_config": args.config, "extra_overrides": args.overrides, "quick": args.quick,
        "methods": {m: METHODS[m] + [f"sampler.num_trials={NUM_TRIALS}"] for m in methods}, "seeds": seeds,
        "sched_epochs": cfg["sched"]["epochs"], "max_steps_per_epoch": cfg["train"]["max_steps_per_epoch"],
        "evaluation": {**evaluator.settings, "split": "test (reported only; nothing is chosen by it)",
                       "num_archs": args.num_archs, "arch_seed": args.arch_seed},
        "flops_range_mflops": [lo, hi],
        "budgets": {n: {"fraction": f, "mflops": b} for n, f, b in zip(BUDGET_NAMES, fractions, budgets)},
        "hypervolume": {"floor_top1": floor, "reference": [1.0, floor],
                        "definition": "area dominated by the front in (x = (MFLOPs - min) / (max - min), test top-1 %) "
                                      "w.r.t. reference (1, floor); = mean over budgets x in [0, 1] of the best "
                                      "top-1 within x, minus the floor (the min arch is always in the set)"},
        "search": {"objective": "the run's fitted XGBoost predictor (held-out top-1)",
                   "population": args.search_population, "generations": args.search_generations,
                   "note": "searched subnets are not part of the hypervolume"},
        "archs": [{"arch_index": i, "arch": a.to_dict(), "mflops": float(f)} for i, (a, f) in
                  enumerate(zip(archs, arch_mflops))],
        "runs": results,
        "summary": summary,
    }
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", report)
    csv_rows, point_rows = [], []
    for r in results:
        row = {"method": r["method"], "seed": r["seed"], "status": r["status"]}
        if r["status"] == "done":
            t = r["timing"]
            row.update({k: t[k] for k in ("epochs", "steps", "epoch_s", "train_step_s_per_epoch", "allin_s_per_epoch",
                                          "predictor_fit_s")})
            row.update(hypervolume=r["hypervolume"], hv_mean_best_top1=r["hv_mean_best_top1"],
                       **{f"top1_{n}": r["top1_at"][n] for n in BUDGET_NAMES},
                       **{f"searched_top1_{s['budget']}": s["test_top1"] for s in r["searched"]},
                       **{f"searched_mflops_{s['budget']}": s["mflops"] for s in r["searched"]})
            point_rows += [{"method": r["method"], "seed": r["seed"], **p, "on_front": p["arch_index"] in r["front"]}
                           for p in r["points"]]
        else:
            row["error"] = r.get("error")
        csv_rows.append(row)
    fields = ["method", "seed", "status", "epochs", "steps", "epoch_s", "train_step_s_per_epoch", "allin_s_per_epoch",
              "predictor_fit_s", "hypervolume", "hv_mean_best_top1", *[f"top1_{n}" for n in BUDGET_NAMES],
              *[f"searched_top1_{n}" for n in BUDGET_NAMES], *[f"searched_mflops_{n}" for n in BUDGET_NAMES], "error"]
    write_csv_atomic(out / "results.csv", csv_rows, fields)
    write_csv_atomic(out / "points.csv", point_rows,
                     ["method", "seed", "arch_index", "mflops", "top1", "on_front"])
    plot(out / "front_overlay.png", results, methods, lo, hi, budgets, warning)
    print_table(results, methods, budgets, warning)
    if any(not r["searched"] and r["status"] == "done" for r in results):
        print("searched subnets: skipped for runs without a fitted predictor (uniform, bestup_loss): "
              "a held-out-driven search per run would need its own predictor")
    print(f"\nwrote {out / 'results.json'}, results.csv, points.csv, front_overlay.png")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
