"""Experiment 2: do weight-shared (inherited) accuracies rank subnets as training them from scratch does?

K >= 8 subnets of different FLOPs (attentive.measure.stratified_archs with --arch-seed: the min and max arch and
the rest spread over the FLOPs range) are each trained from scratch with the same recipe and budget: a fresh
StaticNet.from_arch (init seeded by --seed), SGD with Nesterov momentum, cosine learning rate per step to 0,
cross-entropy with label smoothing, the same --epochs x --max-steps batches in the same seeded order for every
arch, no early stopping (the last weights are tested); with --scratch-seeds once per seed, and the mean is the
target. Their TEST top-1 is compared with:

  * inherited top-1: the accuracy of the same arch inside the supernet checkpoint (--checkpoint, a train.py
    last.pt), BN recalibrated on --calib-batches seeded batches of training images, on the test split (the same
    images as the from-scratch models) and, for reference, on the held-out split (what a search would use);
  * training-free proxies on a fresh seeded init (predictors.proxies.score_archs: ntk, grad_norm, synflow) on one
    seeded minibatch of training images;
  * MFLOPs alone (the baseline any ranking must beat).

Kendall tau (scipy.stats.kendalltau, tau-b) of each against the from-scratch test top-1. Test accuracy is only
reported: nothing is chosen by it. Data (dataset, held-out split) comes from the checkpoint's config.

How far the target itself can be trusted: with two or more --scratch-seeds, the Kendall tau between the seeds'
from-scratch columns (same archs, same recipe, another init and data order) is printed too. Where archs trained
alone differ by less than their seed noise, no scorer can rank them better than the seeds rank each other.

Outputs in --out: results.json, results.csv (one row per arch), ranking_gap.png (inherited vs from-scratch
scatter; Kendall tau of every scorer). Each arch's from-scratch result is saved as it finishes (<out>/scratch/,
or --scratch-dir), named by a hash of the arch and the recipe (seed included), so an interrupted run resumes with
the next arch, and any run that points --scratch-dir at the same directory reuses what it finds there: a new
supernet is scored against an earlier run's from-scratch column (taus included) without training anything.

    CKPT=runs/exp_attentive_vs_uniform/runs/bestup_predictor_seed0/last.pt     # any train.py last.pt
    python bench/ranking_gap.py --checkpoint $CKPT --out runs/exp_ranking_gap           # 5 epochs per arch
    python bench/ranking_gap.py --checkpoint $CKPT --out runs/exp2_small --threads 1 --epochs 1 --max-steps 80 \\
        --eval-size 2000 --holdout-size 1000 --calib-batches 4                          # ~10 min on 2 busy cores
    python bench/ranking_gap.py --checkpoint runs/demo/train/last.pt --out runs/exp2_inherited --num-archs 12 \\
        --inherited-only --calib-batches 8      # inherited top-1 and proxies only: no training, no taus
    python bench/ranking_gap.py --checkpoint runs/new/last.pt --out runs/exp2_new --num-archs 12 --epochs 4 \\
        --calib-batches 8 --scratch-dir runs/exp2/scratch   # a new supernet against exp2's from-scratch column
    python bench/ranking_gap.py --checkpoint demo_out/train/last.pt --out runs/exp2_exports --num-archs 12 \\
        --epochs 4 --extra-archs demo_out/search/subnet_*/arch.json   # + the demo's exports against from scratch
    python bench/ranking_gap.py --checkpoint demo_out/train/last.pt --out runs/exp2_exports --num-archs 0 \\
        --epochs 4 --extra-archs demo_out/search/subnet_*/arch.json   # the exports alone: their gaps, no taus
    python bench/ranking_gap.py --checkpoint $CKPT --out runs/exp2 --num-archs 12 --epochs 4 \\
        --scratch-seeds 0,1 --shard 0/2   # and --shard 1/2 beside it, then once more without --shard: the seeds'
                                          # agreement, and the taus against their mean
    python bench/ranking_gap.py --quick --out /tmp/exp2_smoke      # synthetic smoke test: numbers mean nothing
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _experiment_utils import (ROOT, eval_device, fmt, pyplot, read_json, run_train,  # noqa: E402
                               save_figure_atomic, seeded_subset, tail, warn_synthetic, write_csv_atomic,
                               write_json_atomic)
from attentive.metrics import kendall_tau  # noqa: E402

PROXIES = ("ntk", "grad_norm", "synflow")
QUICK_SUPERNET = ROOT / "configs" / "train" / "smoke.yaml"
QUICK_SUPERNET_OVERRIDES = ["sched.epochs=1", "sched.warmup_epochs=0", "sampler.name=uniform", "train.max_steps_per_epoch=2",
                            "checkpoint.every_steps=0", "log.progress=false", "log.tensorboard=false"]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="supernet checkpoint (train.py last.pt); required unless --quick, which trains a tiny one")
    p.add_argument("--num-archs", type=int, default=8,
                   help="K stratified subnets (>= 8), or 0 to measure only --extra-archs (no taus)")
    p.add_argument("--arch-seed", type=int, default=0, help="seed of the stratified arch choice")
    p.add_argument("--extra-archs", nargs="+", default=[], metavar="ARCH_JSON",
                   help="more archs to measure after the stratified ones, each a JSON file: an export's arch.json "
                        "or metrics.json, a pareto.json row (e.g. is my exported subnet as good as the same net "
                        "trained alone?). Listed with their gap to from scratch; left out of the taus, which "
                        "stay those of the stratified archs (exports are chosen by inherited accuracy)")
    p.add_argument("--epochs", type=int, default=None, help="from-scratch epochs per arch (default 5; --quick 1)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="cap on steps per epoch (default: the whole training split; --quick 2)")
    p.add_argument("--batch-size", type=int, default=None, help="from-scratch batch (default: the checkpoint's)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate per 256 images, scaled by batch / 256 (default: the checkpoint's optim.lr)")
    p.add_argument("--weight-decay", type=float, default=None,
                   help="on conv/linear weights, not BN or biases (default: the checkpoint's optim.weight_decay)")
    p.add_argument("--label-smoothing", type=float, default=None,
                   help="default: the checkpoint's train.label_smoothing")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default torch's own; 1 on a busy shared machine, where 2 threads were "
                        "measured ~50x slower)")
    p.add_argument("--seed", type=int, default=0,
                   help="calibration batches, proxy minibatch and init, and the from-scratch init and data order "
                        "unless --scratch-seeds")
    p.add_argument("--scratch-seeds", default=None, metavar="S1,S2,...",
                   help="train every arch from scratch once per seed (init and data order; default: --seed): the "
                        "target is their mean, and the seeds' agreement with each other is reported")
    p.add_argument("--calib-batches", type=int, default=None,
                   help="BN recalibration batches for inherited accuracy (default: the checkpoint's eval.calib_batches)")
    p.add_argument("--eval-size", type=int, default=None, help="test images (seeded subset; default: all)")
    p.add_argument("--holdout-size", type=int, default=None, help="held-out images for inherited accuracy (default: all)")
    p.add_argument("--proxy-batch", type=int, default=None, help="minibatch for the proxies (default 64; --quick 8)")
    p.add_argument("--data-root", default=None, help="data root (default: the checkpoint's data.root)")
    p.add_argument("--out", default="runs/exp_ranking_gap", help="output directory")
    p.add_argument("--scratch-dir", default=None, metavar="DIR",
                   help="where from-scratch results are saved and looked up (default: <out>/scratch); runs that "
                        "share it train each (arch, recipe, seed) once, whatever their --out and arch order")
    p.add_argument("--shard", default=None, metavar="K/N",
                   help="train from scratch only the runs j with j %% N == K, run j being arch j // S with seed "
                        "j %% S of the S --scratch-seeds (one process per core or GPU, same --out or --scratch-dir), "
                        "then stop; a last run without --shard reuses every saved run and writes the results")
    p.add_argument("--inherited-only", action="store_true",
                   help="measure only the inherited top-1 and the proxies of the same archs (no from-scratch "
                        "training, no taus): the supernet changes, the from-scratch column of an earlier run "
                        "with the same --num-archs and --arch-seed does not")
    p.add_argument("--quick", action="store_true",
                   help="synthetic smoke mode: without --checkpoint a 2-step synthetic supernet is trained first; "
                        "1 epoch x 2 steps per arch (results mean nothing)")
    p.add_argument("--in-process", action="store_true", help="train the --quick supernet in this process")
    return p


# ---------------------------------------------------------------------------------------------------------------
def train_from_scratch(space, arch, data, num_classes: int, *, epochs: int, max_steps: int | None, batch_size: int,
                       lr: float, weight_decay: float, label_smoothing: float, seed: int, device, channels_last: bool,
                       test_loader) -> dict[str, Any]:
    """Plain supervised training of StaticNet.from_arch; returns test top-1 of the last weights and the cost."""
    import time

    import torch
    import torch.nn as nn

    from attentive.data import build_loader, set_loader_epoch
    from attentive.evaluate import accuracy
    from attentive.static import StaticNet

    with torch.random.fork_rng(devices=[]):  # seeded init, caller's global RNG untouched
        torch.manual_seed(seed)
        net = StaticNet.from_arch(space, arch, num_classes)
    fmt_ = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device, memory_format=fmt_)
    loader = build_loader(data.train, batch_size, train=True, seed=seed)
    steps_per_epoch = len(loader) if max_steps is None else min(len(loader), max_steps)
    total = epochs * steps_per_epoch
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    peak = lr * batch_size / 256
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
                          lr=peak, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total) / total)))
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    start, step, last_loss = time.perf_counter(), 0, float("nan")
    net.train()
    for epoch in range(epochs):
        set_loader_epoch(loader, epoch)
        for i, (images, labels) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            images = images.to(device).contiguous(memory_format=fmt_)
            loss = criterion(net(images), labels.to(device))
            if not torch.isfinite(loss):
                return {"status": "diverged", "test_top1": None, "steps": step, "final_loss": float(loss.detach()),
                        "train_seconds": time.perf_counter() - start}
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            last_loss = float(loss.detach())
    train_seconds = time.perf_counter() - start
    return {"status": "done", "test_top1": accuracy(net, test_loader, device, channels_last), "steps": step,
            "final_loss": last_loss, "train_seconds": train_seconds}


def scratch_summary(runs: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """One arch's from-scratch columns over its runs (one per seed): the mean test top-1 of the runs that did not
    diverge (None if all did), each seed's own, their standard deviation (with two or more), the summed time."""
    done = [r["test_top1"] for r in runs if r["status"] == "done"]
    statuses = sorted({r["status"] for r in runs})
    return {"scratch_test_top1": float(np.mean(done)) if done else None,
            "scratch_status": "done" if statuses == ["done"] else ",".join(statuses),
            "scratch_train_seconds": sum(r["train_seconds"] for r in runs), "scratch_steps": runs[0]["steps"],
            **({f"scratch_test_top1_seed{s}": r["test_top1"] if r["status"] == "done" else None
                for s, r in zip(seeds, runs)} if len(seeds) > 1 else {}),
            **({"scratch_seed_std": float(np.std(done, ddof=1))} if len(seeds) > 1 and len(done) > 1 else {})}


def scratch_seed_list(value: str | None, default: int) -> list[int]:
    """--scratch-seeds as a list (`[default]`, --seed, when not given); ValueError unless distinct integers."""
    seeds = [int(v) for v in value.split(",")] if value is not None else [default]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"repeated seed in {value!r}")
    return seeds


def quick_checkpoint(out: Path, in_process: bool) -> Path:
    run_dir = out / "supernet"
    ckpt = run_dir / "last.pt"
    if (run_dir / "final.json").is_file() and ckpt.is_file():
        return ckpt
    import torch

    overrides = [f"output_dir={run_dir}", "resume=auto", f"num_threads={torch.get_num_threads()}",
                 *QUICK_SUPERNET_OVERRIDES]
    rc, _ = run_train(QUICK_SUPERNET, overrides,
                      run_dir / "bench_train_output.log", in_process)
    if rc != 0:
        raise RuntimeError(f"training the --quick supernet failed (status {rc}):\n{tail(run_dir / 'train.log')}")
    return ckpt


def plot(path: Path, rows: list[dict], taus: dict[str, dict], warning: str | None) -> None:
    plt = pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    ok = [r for r in rows if r["scratch_test_top1"] is not None]
    mflops = [r["mflops"] for r in ok]
    norm = plt.Normalize(min(mflops, default=None), max(mflops, default=None))  # one colour scale for both markers
    sc = None
    for extra, marker in ((False, "o"), (True, "*")):  # --extra-archs: stars, outside the tau
        part = [r for r in ok if (r["source"] != "stratified") == extra]
        if part:
            sc = ax.scatter([r["inherited_test_top1"] for r in part], [r["scratch_test_top1"] for r in part],
                            c=[r["mflops"] for r in part], cmap="viridis", norm=norm, marker=marker,
                            s=50 if marker == "o" else 150, edgecolors="black", linewidths=0.5)
    spread = [r for r in ok if r.get("scratch_seed_std") is not None]  # --scratch-seeds: one std either way
    if spread:
        ax.errorbar([r["inherited_test_top1"] for r in spread], [r["scratch_test_top1"] for r in spread],
                    yerr=[r["scratch_seed_std"] for r in spread], fmt="none", ecolor="gray", elinewidth=0.8,
                    capsize=2, zorder=0)
    for r in ok:
        ax.annotate(str(r["arch_index"]), (r["inherited_test_top1"], r["scratch_test_top1"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    if sc is not None:
        fig.colorbar(sc, ax=ax, label="MFLOPs")
    t = taus["inherited_test"]
    ax.set_xlabel("inherited test top-1 (%) (supernet weights, BN recalibrated)")
    ax.set_ylabel("from-scratch test top-1 (%)" + (" (mean over seeds, bars: std)" if spread else ""))
    ax.set_title(f"{len(ok)} subnets: Kendall tau = {fmt(t['tau'], 3)} over the {t['n']} stratified ones"
                 + (" (stars: --extra-archs)" if len(ok) > t["n"] else ""), fontsize=10)
    ax.grid(alpha=0.3)
    names = list(taus)
    vals = [taus[n]["tau"] if taus[n]["tau"] is not None else 0.0 for n in names]
    bx.barh(names, vals, color=["tab:blue" if v >= 0 else "tab:red" for v in vals])
    for i, n in enumerate(names):
        bx.text(vals[i], i, f" {fmt(taus[n]['tau'], 2)}", va="center", fontsize=8)
    bx.axvline(0, color="black", linewidth=0.8)
    bx.set_xlim(-1, 1)
    bx.set_xlabel("Kendall tau vs from-scratch test top-1")
    bx.invert_yaxis()
    if warning:
        fig.suptitle("SYNTHETIC DATA - MEANINGLESS NUMBERS", color="red")
    save_figure_atomic(fig, path)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.epochs is None:
        args.epochs = 1 if args.quick else 5
    if args.max_steps is None and args.quick:
        args.max_steps = 2
    if args.proxy_batch is None:
        args.proxy_batch = 8 if args.quick else 64
    problems = []
    if args.checkpoint is None and not args.quick:
        problems.append("--checkpoint is required (a train.py last.pt) unless --quick")
    if args.num_archs < 8 and not (args.num_archs == 0 and args.extra_archs):
        problems.append(f"--num-archs must be >= 8 (or 0 with --extra-archs: their gaps only), got {args.num_archs}")
    for name in ("threads", "epochs", "max_steps", "batch_size", "calib_batches", "eval_size", "holdout_size", "proxy_batch"):
        v = getattr(args, name)
        if v is not None and v < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        problems.append(f"--checkpoint: file not found: {args.checkpoint}")
    problems += [f"--extra-archs: file not found: {p}" for p in args.extra_archs if not Path(p).is_file()]
    args.shard_index = args.shard_count = None
    if args.shard is not None:
        try:
            args.shard_index, args.shard_count = (int(v) for v in args.shard.split("/"))
            assert 0 <= args.shard_index < args.shard_count
        except (ValueError, AssertionError):
            problems.append(f"--shard must be K/N with 0 <= K < N (e.g. 0/2), got {args.shard!r}")
    try:
        args.scratch_seeds = scratch_seed_list(args.scratch_seeds, args.seed)
    except ValueError:
        problems.append(f"--scratch-seeds must be distinct integers separated by commas (e.g. 0,1), "
                        f"got {args.scratch_seeds!r}")
    if args.shard is not None and args.inherited_only:
        problems.append("--shard splits the from-scratch training, which --inherited-only skips: use one of them")
    if args.scratch_dir is not None:
        if args.inherited_only:
            problems.append("--scratch-dir holds from-scratch results, which --inherited-only neither reads nor "
                            "writes: use one of them")
        elif not Path(args.scratch_dir).is_dir():
            # a mistyped directory would otherwise retrain every arch (hours) without a word
            problems.append(f"--scratch-dir: directory not found: {args.scratch_dir} (create it to start a new "
                            f"shared one)")
    if problems:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {'; '.join(problems)}", file=sys.stderr)
        return 2

    import torch

    threads_before = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _experiment(args)
    finally:
        torch.set_num_threads(threads_before)


def _experiment(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from attentive.checkpoint import load_supernet
    from attentive.data import build_loader, calibration_batches, datasets_from_config
    from attentive.cpu_runtime import use_channels_last
    from attentive.flops import count_flops
    from attentive.distributed import resolve_device
    from attentive.fileio import BadFileError
    from attentive.measure import measure_archs, stratified_archs
    from attentive.select import read_arch_file
    from predictors.proxies import random_minibatch, score_archs

    out = Path(args.out)
    scratch_dir = Path(args.scratch_dir) if args.scratch_dir is not None else out / "scratch"
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = Path(args.checkpoint) if args.checkpoint else quick_checkpoint(out, args.in_process)
    device = resolve_device("auto")
    supernet, ckpt = load_supernet(checkpoint, map_location=device)
    space, num_classes = supernet.space, supernet.num_classes
    cfg = ckpt["config"]
    d = cfg["data"]
    warning = warn_synthetic(d["name"])
    data = datasets_from_config(d, num_classes=space.num_classes, root=args.data_root or None)
    if data.num_classes != num_classes:
        raise SystemExit(f"error: the checkpoint has {num_classes} classes, its data {data.num_classes}")
    channels_last = use_channels_last(device)
    batch_size = args.batch_size or d["batch_size"]
    lr = cfg["optim"]["lr"] if args.lr is None else args.lr
    weight_decay = cfg["optim"]["weight_decay"] if args.weight_decay is None else args.weight_decay
    label_smoothing = cfg["train"]["label_smoothing"] if args.label_smoothing is None else args.label_smoothing
    calib_batches = args.calib_batches or cfg["eval"]["calib_batches"]
    test = seeded_subset(data.test, args.eval_size, seed=0)
    holdout = seeded_subset(data.holdout, args.holdout_size, seed=0)
    test_loader = build_loader(test, d["eval_batch_size"], train=False)
    holdout_loader = build_loader(holdout, d["eval_batch_size"], train=False)
    archs = (stratified_archs(space, args.num_archs, np.random.Generator(np.random.PCG64(args.arch_seed)))
             if args.num_archs else [])
    sources = ["stratified"] * len(archs)
    for path in args.extra_archs:  # appended, so the stratified archs keep their indices (and saved results)
        try:
            archs.append(read_arch_file(path, space))
        except BadFileError as e:
            print(f"error: --extra-archs: {e}", file=sys.stderr)
            return 2
        sources.append(str(path))
    mflops = [count_flops(space, a, num_classes) for a in archs]

    # ---- inherited accuracy (supernet weights, BN recalibrated) and proxies ----
    print(f"inherited accuracy of {len(archs)} subnets from {checkpoint} (epoch {ckpt.get('epoch')})", file=sys.stderr)
    calib = calibration_batches(data, d["batch_size"], calib_batches, seed=args.seed)
    if channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    inherited_test = [r["top1"] for r in measure_archs(supernet, archs, calib, test_loader, device, progress=True,
                                                       channels_last=channels_last)]
    inherited_holdout = [r["top1"] for r in measure_archs(supernet, archs, calib, holdout_loader, device,
                                                          progress=True, channels_last=channels_last)]
    images, labels = random_minibatch(data.train, args.proxy_batch, seed=args.seed)
    proxy_scores = {p: score_archs(space, archs, p, images, labels, seed=args.seed, device=device,
                                   num_classes=num_classes).tolist() for p in PROXIES}

    measured = [{"arch_index": i, "source": sources[i], "mflops": mflops[i], "inherited_test_top1": inherited_test[i],
                 "inherited_holdout_top1": inherited_holdout[i], **{p: proxy_scores[p][i] for p in PROXIES},
                 "arch": arch.to_dict()} for i, arch in enumerate(archs)]
    header = {
        "experiment": "ranking_gap", "mode": "inherited_only" if args.inherited_only else "full",
        "warning": warning, "checkpoint": str(checkpoint),
        "checkpoint_epoch": ckpt.get("epoch"), "checkpoint_step": ckpt.get("step"),
        "checkpoint_sampler": cfg.get("sampler", {}).get("name"),
        "space": space.name, "space_hash": space.hash, "num_archs": args.num_archs, "arch_seed": args.arch_seed,
        "extra_archs": list(args.extra_archs),
        "inherited": {"calib_batches": calib_batches, "calib_batch_size": d["batch_size"], "calib_seed": args.seed,
                      "test_images": len(test), "holdout_images": len(holdout)},
        "proxies": {"names": list(PROXIES), "minibatch": args.proxy_batch, "seed": args.seed},
    }
    if args.inherited_only:
        return _write_inherited_only(out, header, measured, warning)

    # ---- from scratch, one arch at a time, each result saved as it finishes ----
    recipe = {"epochs": args.epochs, "max_steps_per_epoch": args.max_steps, "batch_size": batch_size,
              "lr_per_256": lr, "peak_lr": lr * batch_size / 256, "weight_decay": weight_decay,
              "label_smoothing": label_smoothing, "momentum": 0.9, "nesterov": True,
              "schedule": "cosine per step to 0, no warm-up", "augment": d["augment"],
              "data": {k: d[k] for k in ("name", "holdout_fraction", "split_seed", "synthetic_num_train",
                                         "synthetic_num_test")},
              "eval_size": len(test), "device": device.type}
    seeds = args.scratch_seeds
    scratch: list[list[dict]] = [[] for _ in archs]  # per arch, one result per seed
    with tqdm(total=len(archs) * len(seeds), desc="from scratch", unit="run", dynamic_ncols=True) as bar:
        for j in range(len(archs) * len(seeds)):
            i, seed = j // len(seeds), seeds[j % len(seeds)]
            # the seed inside the hashed recipe: a single-seed run's saved results stay valid for --scratch-seeds
            seeded = {**recipe, "seed": seed}
            key = hashlib.sha256(json.dumps({"arch": archs[i].to_dict(), "recipe": seeded}, sort_keys=True)
                                 .encode()).hexdigest()[:16]
            # looked up by the hash alone: the same arch saved under another index (another run's order) counts
            saved = sorted(scratch_dir.glob(f"arch_*_{key}.json"))
            path = saved[0] if saved else scratch_dir / f"arch_{i:02d}_{key}.json"
            res = read_json(path)
            if res is None and args.shard_count is not None and j % args.shard_count != args.shard_index:
                bar.update(1)  # another shard's run
                continue
            if res is None:
                bar.set_postfix_str(f"arch {i}: {mflops[i]:.2f} MFLOPs, seed {seed}")
                res = train_from_scratch(space, archs[i], data, num_classes, epochs=args.epochs,
                                         max_steps=args.max_steps, batch_size=batch_size, lr=lr,
                                         weight_decay=weight_decay, label_smoothing=label_smoothing, seed=seed,
                                         device=device, channels_last=channels_last, test_loader=test_loader)
                write_json_atomic(path, {**res, "arch": archs[i].to_dict(), "recipe": seeded})
            if res["status"] != "done":
                tqdm.write(f"arch {i} seed {seed} diverged (loss {res['final_loss']}); left out of its mean",
                           file=sys.stderr)
            scratch[i].append(res)
            bar.update(1)
    if args.shard_count is not None:
        done = sum(len(runs) for runs in scratch)
        print(f"shard {args.shard} done: {done} of {len(archs) * len(seeds)} from-scratch runs saved so far in "
              f"{scratch_dir}; run again without --shard to write the results once every shard is done")
        return 0

    # arch_index and mflops named first only to keep the CSV's column order: the scratch columns come next
    rows = [{"arch_index": m["arch_index"], "mflops": m["mflops"], **scratch_summary(runs, seeds), **m}
            for m, runs in zip(measured, scratch)]
    for r in rows:
        r["gap"] = None if r["scratch_test_top1"] is None else r["scratch_test_top1"] - r["inherited_test_top1"]
    k = args.num_archs  # the taus rank the stratified archs only
    target = [np.nan if r["scratch_test_top1"] is None else r["scratch_test_top1"] for r in rows[:k]]
    taus = {"inherited_test": kendall_tau(inherited_test[:k], target),
            "inherited_holdout": kendall_tau(inherited_holdout[:k], target),
            **{p: kendall_tau(proxy_scores[p][:k], target) for p in PROXIES},
            "mflops": kendall_tau(mflops[:k], target)}
    by_seed = {s: [runs[n]["test_top1"] if runs[n]["status"] == "done" else np.nan for runs in scratch[:k]]
               for n, s in enumerate(seeds)}  # each arch's runs are in --scratch-seeds order
    agreement = {f"{a}_vs_{b}": kendall_tau(by_seed[a], by_seed[b])
                 for n, a in enumerate(seeds) for b in seeds[n + 1:]}
    report = {
        **header,
        "scratch_recipe": {**recipe, "seeds": seeds},
        "scratch_dir": str(scratch_dir),
        "kendall_tau_vs_scratch_test_top1": taus,
        "kendall_tau_between_scratch_seeds": agreement,
        "note": "test accuracies are reported only; nothing is chosen by them",
        "rows": rows,
    }
    write_json_atomic(out / "results.json", report)
    write_csv_atomic(out / "results.csv", rows)
    plot(out / "ranking_gap.png", rows, taus, warning)

    per_seed = [f"seed{s}" for s in seeds] if len(seeds) > 1 else []  # each seed's own from-scratch top-1
    print(f"\n{'#':>2} {'MFLOPs':>7} {'scratch':>8} " + "".join(f"{name:>8} " for name in per_seed)
          + f"{'inh.test':>8} {'gap':>6} {'inh.hold':>8} " + " ".join(f"{p:>10}" for p in PROXIES) + "  source")
    for r in rows:
        print(f"{r['arch_index']:>2} {r['mflops']:>7.2f} {fmt(r['scratch_test_top1']):>8} "
              + "".join(f"{fmt(r.get('scratch_test_top1_' + name)):>8} " for name in per_seed)
              + f"{fmt(r['inherited_test_top1']):>8} {fmt(r['gap']):>6} {fmt(r['inherited_holdout_top1']):>8} "
              + " ".join(f"{r[p]:>10.3g}" for p in PROXIES) + f"  {r['source']}")
    if k:  # no taus for --num-archs 0: only the extra archs' gaps
        print(f"\nKendall tau vs from-scratch test top-1 ({k} stratified archs):")
        for name, t in taus.items():
            print(f"  {name:<18} tau {fmt(t['tau'], 3):>6}  (p {fmt(t['p_value'], 3)}, n {t['n']})")
        if agreement:
            print(f"from scratch, seed against seed (the same archs and recipe; no scorer ranks them better than "
                  f"the seeds rank each other):")
            for name, t in agreement.items():
                print(f"  seeds {name:<12} tau {fmt(t['tau'], 3):>6}  (p {fmt(t['p_value'], 3)}, n {t['n']})")
    if warning:
        print("\n" + warning)
    print(f"\nwrote {out / 'results.json'}, results.csv, ranking_gap.png")
    return 0


def _write_inherited_only(out: Path, header: dict[str, Any], rows: list[dict[str, Any]], warning: str | None) -> int:
    """--inherited-only: the same report without the from-scratch column and the taus (results.json, .csv)."""
    report = {**header, "note": "no from-scratch training in this mode; test accuracies are reported only",
              "rows": rows}
    write_json_atomic(out / "results.json", report)
    write_csv_atomic(out / "results.csv", rows)
    print(f"\n{'#':>2} {'MFLOPs':>7} {'inh.test':>8} {'inh.hold':>8}  source")
    for r in rows:
        print(f"{r['arch_index']:>2} {r['mflops']:>7.2f} {fmt(r['inherited_test_top1']):>8} "
              f"{fmt(r['inherited_holdout_top1']):>8}  {r['source']}")
    if warning:
        print("\n" + warning)
    print(f"\nwrote {out / 'results.json'}, results.csv (inherited only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
