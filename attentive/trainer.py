"""Supernet training: the loop around the sandwich step, AttentiveNAS sampling, BN-recalibrated validation,
predictor refreshes, exact resume, and torch.distributed without DDP (see attentive/distributed.py for why).

Where each job lives: one step in `attentive.train_step.sandwich_step`; checkpoint state, checks and resume in
`attentive.train_state`; top-1 evaluation in `attentive.evaluate`; samplers from `attentive.sampling.build_sampler`.
This module builds the parts from a resolved config, picks each step's archs, and runs the epochs.

The trainer fits its accuracy predictor through a `PredictorBackend` (attentive/predictor.py) handed to it:
`attentive` never imports `predictors`; train.py passes `predictors.xgb.AccuracyPredictor`.

Reproducibility: model init under a forked, seeded RNG; data order and augmentation from (seed, epoch); samplers
and the supernet's dropout generator carry their own seeded generators, all checkpointed. A run killed mid-epoch
and resumed ends with bit-identical weights on CPU (tests/test_train.py).
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from .calibration import preserved_bn_state
from .checkpoint import LAST_NAME
from .config import ELASTIC_FIELDS, save_config
from .cpu_runtime import use_channels_last
from .data import build_loader, calibration_batches, datasets_from_config, set_loader_epoch
from .distributed import DistEnv, all_gather_json, all_reduce_mean, all_reduce_sum, broadcast_json, broadcast_module
from .environment import ENVIRONMENT_NAME, describe_environment, record_start
from .evaluate import amp_autocast, evaluate_arch
from .fileio import write_json_atomic, write_text_atomic
from .flops import count_flops, count_flops_batch
from .logging_utils import MetricsLogger, get_logger
from .measure import measure_archs, stratified_archs
from .metrics import kendall_tau
from .predictor import PredictorBackend
from .sampling import build_sampler
from .scoring import predictor_scorer
from .space import Arch, SearchSpace, load_space
from .supernet import Supernet
from .train_state import CheckpointMismatchError, TrainState, find_resume
from .train_step import NonFiniteLossError, SandwichOptions, StepOutput, distill_loss, sandwich_step

__all__ = ["Trainer", "NonFiniteLossError", "CheckpointMismatchError", "StepOutput", "distill_loss",
           "fixed_middle_archs", "needs_predictor_backend", "run_training"]

# Called after every optimizer step (and the checkpoint due at it, if any): tests use it to kill the process at a
# chosen step; never set by train.py.
AfterStepHook = Callable[["Trainer"], None]


def fixed_middle_archs(space: SearchSpace, num: int, seed: int, num_classes: int | None = None) -> list[Arch]:
    """`num` archs at evenly spaced FLOPs quantiles of a seeded random pool: the fixed 'middle' validation set."""
    if num == 0:
        return []
    rng = np.random.Generator(np.random.PCG64(seed))
    pool = space.sample_indices(rng, 4096)
    order = np.argsort(count_flops_batch(space, pool, num_classes), kind="stable")
    picks = [order[int(round(q * (len(order) - 1)))] for q in np.arange(1, num + 1) / (num + 1)]
    return [space.arch_from_indices(pool[i]) for i in picks]


def needs_predictor_backend(cfg: dict[str, Any]) -> bool:
    """Whether a run of `cfg` fits or loads an accuracy predictor (attentive sampling scored by a predictor)."""
    return cfg["sampler"]["scorer"] == "predictor" and cfg["sampler"]["name"] != "uniform"


def _shard(dataset: Dataset, n: int | None, env: DistEnv) -> Dataset:
    """The first `n` items (all if None), then every world_size-th from this rank: exact global counts."""
    total = len(dataset) if n is None else min(n, len(dataset))
    return Subset(dataset, list(range(env.rank, total, env.world_size)))


def _state_field(name: str, doc: str) -> property:
    """A Trainer attribute that lives in its `TrainState` (what checkpoints hold)."""
    return property(lambda self: getattr(self.state, name), lambda self, value: setattr(self.state, name, value),
                    doc=doc)


class Trainer:
    """Builds data, supernet, optimizer, scheduler, samplers and logs from a resolved config (see
    attentive/config.py); `fit()` trains, validates, checkpoints and reports.

    `predictor_backend` fits, restores and loads the accuracy predictor (attentive.predictor.PredictorBackend);
    required when the config scores candidates with a predictor. `after_step(trainer)` runs after every optimizer
    step and the checkpoint due at it (a test hook)."""

    epoch = _state_field("epoch", "epoch in progress (== epochs completed at an epoch boundary)")
    batch_in_epoch = _state_field("batch_in_epoch", "batches of `epoch` already trained")
    global_step = _state_field("global_step", "optimizer steps taken")
    train_seconds = _state_field("train_seconds", "seconds spent in training steps, over resumes")
    last_eval = _state_field("last_eval", "the latest held-out top-1 per named arch")
    predictor = _state_field("predictor", "the accuracy predictor scoring candidates, or None")
    predictor_source = _state_field("predictor_source", "where the predictor came from")

    def __init__(self, cfg: dict[str, Any], env: DistEnv | None = None,
                 predictor_backend: PredictorBackend | None = None, after_step: AfterStepHook | None = None) -> None:
        self.cfg = cfg
        self.env = env = env or DistEnv()
        if needs_predictor_backend(cfg) and predictor_backend is None:
            raise ValueError(f"sampler.name={cfg['sampler']['name']} with sampler.scorer=predictor needs an accuracy "
                             f"predictor: pass Trainer(cfg, predictor_backend=...) (train.py passes the XGBoost "
                             f"AccuracyPredictor class), or use sampler.scorer=loss or sampler.name=uniform")
        if predictor_backend is not None and not isinstance(predictor_backend, PredictorBackend):
            raise TypeError(f"predictor_backend must have fit, from_state and load "
                            f"(attentive.predictor.PredictorBackend), got {predictor_backend!r}")
        self.predictor_backend = predictor_backend
        self.after_step = after_step
        self.device = env.device
        self.run_dir = Path(cfg["output_dir"])
        self.seed = seed = cfg["seed"]
        if cfg["num_threads"] is not None:
            torch.set_num_threads(cfg["num_threads"])
        self.log = get_logger(env.is_main, self.run_dir / "train.log" if env.is_main else None)
        self.space = load_space(cfg["space"])

        # ---- data ----
        d = cfg["data"]
        self.data = datasets_from_config(d, num_classes=self.space.num_classes)
        self.num_classes = self.data.num_classes
        self.batch_size = d["batch_size"]
        self.train_loader = build_loader(self.data.train, self.batch_size, train=True, seed=seed,
                                         num_workers=d["num_workers"], distributed=env.distributed)
        set_loader_epoch(self.train_loader, 0)
        self.steps_per_epoch = len(self.train_loader)
        if cfg["train"]["max_steps_per_epoch"] is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg["train"]["max_steps_per_epoch"])
        if self.steps_per_epoch == 0:
            raise ValueError(f"the training split has {len(self.data.train)} images, fewer than one batch of "
                             f"{self.batch_size} per process x {env.world_size} processes; lower data.batch_size")
        ev = cfg["eval"]
        self.holdout_loader = build_loader(_shard(self.data.holdout, ev["holdout_size"], env), d["eval_batch_size"],
                                           train=False, num_workers=d["num_workers"])
        self.test_loader = build_loader(_shard(self.data.test, None, env), d["eval_batch_size"], train=False,
                                        num_workers=d["num_workers"])

        # ---- model ----
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global RNG
            torch.manual_seed(seed)
            model = Supernet(self.space, num_classes=self.num_classes, seed=seed)
        self.channels_last = use_channels_last(self.device, cfg["channels_last"])
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=self.memory_format)
        broadcast_module(self.model, env)  # identical replicas even if init differed somewhere
        self.max_arch, self.min_arch = self.space.max_arch(), self.space.min_arch()
        self.middle_archs = fixed_middle_archs(self.space, ev["num_middle"], seed + 3, self.num_classes)

        # ---- optimization ----
        o, sc, t = cfg["optim"], cfg["sched"], cfg["train"]
        decay, no_decay = [], []
        for p in self.model.parameters():
            (no_decay if o["no_decay_bn_bias"] and p.ndim <= 1 else decay).append(p)
        self.global_batch = self.batch_size * env.world_size
        self.lr = o["lr"] * self.global_batch / 256
        self.optimizer = torch.optim.SGD(
            [{"params": decay, "weight_decay": o["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.lr, momentum=o["momentum"], nesterov=o["nesterov"])
        from timm.scheduler import CosineLRScheduler

        total = sc["epochs"] * self.steps_per_epoch
        warmup = int(round(sc["warmup_epochs"] * self.steps_per_epoch))
        self.scheduler = CosineLRScheduler(
            self.optimizer, t_initial=max(1, total - warmup), lr_min=sc["min_lr"], warmup_t=warmup,
            warmup_lr_init=sc["warmup_lr_init"], warmup_prefix=True, t_in_epochs=False)
        self.criterion = nn.CrossEntropyLoss(label_smoothing=t["label_smoothing"])
        self.step_options = SandwichOptions.from_config(t)
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["amp"]]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 on cpu")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None

        # ---- sampling ----
        s = cfg["sampler"]
        self.uniform_sampler = build_sampler("uniform", self.space, seed=seed + 1)
        self.attentive_sampler = None
        if s["name"] != "uniform":
            # Only rank 0 writes the bucket cache; the others compute the same buckets (same seed) in memory.
            self.attentive_sampler = build_sampler(
                s["name"], self.space, seed=seed + 2, num_trials=s["num_trials"], step_mflops=s["flops_step"],
                pool_size=s["pool_size"], buckets_seed=seed, num_classes=self.num_classes, use_cache=env.is_main)

        # ---- checkpointed state and position ----
        self.state = TrainState(cfg=cfg, space=self.space, num_classes=self.num_classes, model=self.model,
                                optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler,
                                uniform_sampler=self.uniform_sampler, attentive_sampler=self.attentive_sampler,
                                steps_per_epoch=self.steps_per_epoch, world_size=env.world_size)
        if self.attentive_sampler is not None and s["scorer"] == "predictor" and s["predictor"] is not None:
            self.predictor = self.predictor_backend.load(s["predictor"], self.space)
            self.predictor_source = str(s["predictor"])
        self.metrics: MetricsLogger | None = None

    # ------------------------------------------------------------------------------------------------------
    # picking each step's archs
    def attentive_active(self) -> bool:
        """Whether this epoch's middle subnets come from the attentive sampler (else uniform warm-up)."""
        s = self.cfg["sampler"]
        if self.attentive_sampler is None:
            return False
        if s["scorer"] == "predictor":
            return self.predictor is not None
        return self.epoch >= s["warmup_epochs"]

    def _loss_scorer(self, images: torch.Tensor, labels: torch.Tensor) -> Callable[[list[Arch]], np.ndarray]:
        """AttentiveNAS's released scorer: minus each candidate's minibatch loss (no gradients, BN stats left
        as they were), averaged over ranks so that every rank keeps the same candidates."""

        def score(archs: Sequence[Arch]) -> np.ndarray:
            losses = []
            with torch.no_grad(), preserved_bn_state(self.model), amp_autocast(self.device.type, self.amp_dtype):
                for arch in archs:
                    self.model.set_arch(arch)
                    losses.append(self.criterion(self.model(images).float(), labels))
            return -all_reduce_mean(torch.stack(losses).double().cpu(), self.env).numpy()

        return score

    def held_at_largest(self) -> tuple[str, ...]:
        """The Arch fields that progressive shrinking (train.elastic_*_from) still holds at the largest net's
        values in this epoch; empty once every dimension is elastic (the default: from the start)."""
        t = self.cfg["train"]
        return tuple(field for name, field in ELASTIC_FIELDS.items() if self.epoch < t[f"elastic_{name}_from"])

    def sample_middle(self, num: int, images: torch.Tensor, labels: torch.Tensor) -> list[Arch]:
        """The step's `num` middle subnets: uniform in warm-up (with the dimensions that are not elastic yet held at
        their largest values), else the attentive sampler's picks."""
        if num == 0:
            return []
        if not self.attentive_active():  # the config starts the attentive sampler only once all is elastic
            held = self.held_at_largest()
            return [self.space.with_largest(a, held) for a in self.uniform_sampler.sample(num)]
        if self.cfg["sampler"]["scorer"] == "loss":
            return self.attentive_sampler.sample(num, self._loss_scorer(images, labels))
        return self.attentive_sampler.sample(num, predictor_scorer(self.predictor))

    def sandwich_ends(self) -> tuple[Arch, Arch]:
        """The largest and smallest subnets of the coming step (the smallest: of the dimensions that are elastic in
        this epoch). With train.sandwich_resolution=random both run
        at one resolution drawn from (seed, step), with random_min only the smallest; with
        train.sandwich_kernel=random_max the largest takes a kernel size per stage drawn from (seed, step) once
        kernels are elastic. No generator state to checkpoint: resumes stay exact."""
        held = self.held_at_largest()
        max_arch = self.max_arch
        if self.cfg["train"]["sandwich_kernel"] == "random_max" and "kernel_size" not in held:
            rng = np.random.Generator(np.random.PCG64([self.seed, 6, self.global_step]))
            kernels = tuple(int(rng.choice(stage.kernel_sizes)) for stage in self.space.stages)
            max_arch = dataclasses.replace(max_arch, kernel_size=kernels)
        mode = self.cfg["train"]["sandwich_resolution"]
        min_arch = self.space.with_largest(self.min_arch, held)  # smallest of what is elastic
        if mode == "fixed":
            return max_arch, min_arch
        rng = np.random.Generator(np.random.PCG64([self.seed, 5, self.global_step]))
        r = int(rng.choice(self.space.resolutions))
        if mode == "random":
            max_arch = dataclasses.replace(max_arch, resolution=r)
        return max_arch, dataclasses.replace(min_arch, resolution=r)

    # ------------------------------------------------------------------------------------------------------
    # one step
    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """One sandwich step on a batch; advances `global_step`. Raises NonFiniteLossError before the update."""
        self.model.train()  # the loss scorer scores candidates in training mode, as the step runs them
        images, labels = self._to_device(images, labels)
        max_arch, min_arch = self.sandwich_ends()
        middle = self.sample_middle(self.cfg["train"]["num_subnets"] - 2, images, labels)
        out = sandwich_step(self.model, images, labels, [max_arch, *middle, min_arch], self.criterion,
                            self.optimizer, self.step_options, env=self.env, amp_dtype=self.amp_dtype,
                            scaler=self.scaler, step=self.global_step + 1, epoch=self.epoch)
        self.global_step += 1
        self.scheduler.step_update(self.global_step)
        return out

    # ------------------------------------------------------------------------------------------------------
    # epochs
    def train_one_epoch(self, epoch: int, start_batch: int = 0) -> dict[str, float]:
        from tqdm import tqdm

        state = self.state
        self.epoch, self.batch_in_epoch = epoch, start_batch
        set_loader_epoch(self.train_loader, epoch, skip_batches=start_batch)
        ck, lg = self.cfg["checkpoint"], self.cfg["log"]
        if start_batch == 0:  # the epoch's running loss sums travel in checkpoints: same epoch log after resume
            state.epoch_sums, state.epoch_count = [0.0, 0.0], 0
        window_images, window_start = 0, time.perf_counter()
        epoch_start = time.perf_counter()
        held = self.held_at_largest()
        if held and start_batch == 0:
            self.log.info("epoch %d: progressive shrinking holds %s at the largest values", epoch, ", ".join(held))
        bar = tqdm(total=self.steps_per_epoch, initial=start_batch, desc=f"epoch {epoch}", unit="step",
                   disable=not (self.env.is_main and lg["progress"]), dynamic_ncols=True, leave=True)
        try:
            for batch_idx, (images, labels) in enumerate(self.train_loader, start=start_batch):
                if batch_idx >= self.steps_per_epoch:
                    break
                step_start = time.perf_counter()
                out = self.train_step(images, labels)
                self.batch_in_epoch = batch_idx + 1
                self.train_seconds += time.perf_counter() - step_start
                # the other subnets' mean loss: KL to the teacher, or cross-entropy with train.inplace_distill=false
                others = float(np.mean(out.losses[1:]))
                state.epoch_sums = [state.epoch_sums[0] + out.losses[0], state.epoch_sums[1] + others]
                state.epoch_count += 1
                window_images += images.shape[0] * self.env.world_size
                bar.update(1)
                if self.global_step % lg["every_steps"] == 0 or self.batch_in_epoch == self.steps_per_epoch:
                    elapsed = time.perf_counter() - window_start
                    ips = window_images / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{out.losses[0]:.3f}", others=f"{others:.3f}", lr=f"{out.lr:.4g}",
                                    img_s=f"{ips:.0f}")
                    self._log("train", epoch=epoch, batch=batch_idx, loss_max=out.losses[0], loss_others=others,
                              lr=out.lr, images_per_s=ips,
                              mflops_sampled=[count_flops(self.space, a, self.num_classes) for a in out.archs[1:-1]])
                    window_images, window_start = 0, time.perf_counter()
                if (ck["every_steps"] and self.global_step % ck["every_steps"] == 0
                        and self.batch_in_epoch < self.steps_per_epoch):
                    self.save_checkpoint()
                if self.after_step is not None:
                    self.after_step(self)
        finally:
            bar.close()
        count = max(state.epoch_count, 1)
        return {"loss_max": state.epoch_sums[0] / count, "loss_others": state.epoch_sums[1] / count,
                "steps": state.epoch_count,
                "seconds": time.perf_counter() - epoch_start}

    # ------------------------------------------------------------------------------------------------------
    # evaluation (attentive.evaluate; correct/total counts summed over ranks)
    def _calibration(self, num_batches: int) -> list[torch.Tensor]:
        """The same un-augmented training images for every arch and every rank (seeded), for BN recalibration."""
        return calibration_batches(self.data, self.batch_size, num_batches, seed=self.seed)

    def _sum_over_ranks(self, correct: int, total: int) -> tuple[float, float]:
        correct, total = all_reduce_sum([correct, total], self.env).tolist()
        return correct, total

    def top1(self, arch: Arch, calib: Sequence[torch.Tensor], loader) -> float:
        """BN-recalibrated top-1 (%) of `arch` over the (sharded) `loader`, summed over ranks."""
        return evaluate_arch(self.model, arch, calib, loader, self.device, self.channels_last, self.amp_dtype,
                             reduce_counts=self._sum_over_ranks)

    def evaluate(self, loader=None, archs: dict[str, Arch] | None = None,
                 calib_batches: int | None = None) -> dict[str, float]:
        """Top-1 (%) per named arch (default: max, min, the fixed middle ones) on the held-out split. Training
        state is untouched: BN running stats and module modes are restored afterwards."""
        loader = self.holdout_loader if loader is None else loader
        if archs is None:
            archs = {"max": self.max_arch, "min": self.min_arch,
                     **{f"mid{i}": a for i, a in enumerate(self.middle_archs)}}
        calib = self._calibration(calib_batches or self.cfg["eval"]["calib_batches"])
        with preserved_bn_state(self.model):
            return {name: self.top1(arch, calib, loader) for name, arch in archs.items()}

    # ------------------------------------------------------------------------------------------------------
    # predictor
    def predictor_due(self, epochs_done: int) -> bool:
        s = self.cfg["sampler"]
        if self.attentive_sampler is None or s["scorer"] != "predictor" or epochs_done >= self.cfg["sched"]["epochs"]:
            return False
        if self.predictor is None:
            return epochs_done == s["warmup_epochs"]
        R = s["refresh_every"]
        return R > 0 and epochs_done > s["warmup_epochs"] and (epochs_done - s["warmup_epochs"]) % R == 0

    def _measure_stratified(self, epochs_done: int, rng: np.random.Generator) -> list[dict]:
        """Measure `sampler.num_measure` stratified subnets (BN-recalibrated, on the held-out split: never the
        test split), split over ranks; every rank gets all rows, in the order of the stratified draw."""
        s = self.cfg["sampler"]
        archs = stratified_archs(self.space, s["num_measure"], rng)
        calib = self._calibration(s["measure_calib_batches"])
        holdout = self.data.holdout
        n = len(holdout) if s["measure_holdout_size"] is None else min(s["measure_holdout_size"], len(holdout))
        loader = build_loader(Subset(holdout, list(range(n))), self.cfg["data"]["eval_batch_size"], train=False,
                              num_workers=self.cfg["data"]["num_workers"])
        mine = archs[self.env.rank::self.env.world_size]  # archs split over ranks, each on the whole subset
        rows = measure_archs(self.model, mine, calib, loader, self.device, out_path=None,
                             progress=self.env.is_main and self.cfg["log"]["progress"],
                             channels_last=self.channels_last, tag=f"epoch{epochs_done}")
        gathered = all_gather_json(rows, self.env)
        ordered: list[dict] = [None] * len(archs)  # type: ignore[list-item]
        for r, part in enumerate(gathered):
            for j, row in enumerate(part):
                ordered[r + j * self.env.world_size] = row
        return ordered

    def fit_predictor(self, epochs_done: int) -> dict[str, Any]:
        """Measure N stratified subnets, fit the predictor (with `predictor_backend`) on rank 0 and share it
        (JSON) so every rank scores candidates identically. Returns the metrics record of the fit."""
        if self.predictor_backend is None:
            raise ValueError("fit_predictor needs a predictor_backend: pass Trainer(cfg, predictor_backend=...)")
        backend = self.predictor_backend
        s = self.cfg["sampler"]
        start = time.perf_counter()
        rng = np.random.Generator(np.random.PCG64([self.seed, 4, epochs_done]))
        ordered = self._measure_stratified(epochs_done, rng)
        top1 = np.array([row["top1"] for row in ordered])
        measured = [Arch.from_dict(r["arch"]) for r in ordered]
        # How well the predictor ranks subnets it was not fitted on, reported in the metrics at every fit: the
        # previous predictor on these freshly measured subnets, and this fit's own tau on a seeded fifth of them
        # (fitted once more on the other four fifths; the predictor kept is fitted on all of them).
        quality: dict[str, Any] = {}
        state = None
        if self.env.is_main:
            if self.predictor is not None:
                quality["tau_previous_predictor"] = kendall_tau(self.predictor.predict(measured), top1)["tau"]
            held = rng.permutation(len(measured))[: max(2, len(measured) // 5)]
            fit_part = np.setdiff1d(np.arange(len(measured)), held)
            probe = backend.fit(self.space, [measured[i] for i in fit_part], top1[fit_part], seed=self.seed,
                                teacher=s["predictor_teacher"])
            quality["tau_holdout"] = kendall_tau(probe.predict([measured[i] for i in held]), top1[held])["tau"]
            quality["tau_holdout_archs"] = int(len(held))
            fitted = backend.fit(self.space, measured, top1, seed=self.seed, teacher=s["predictor_teacher"])
            state = fitted.to_state()
        state, quality = broadcast_json([state, quality], self.env)
        # Every rank, rank 0 included, uses the deserialized copy: identical to what a resumed run loads.
        self.predictor = backend.from_state(state, self.space)
        self.predictor_source = f"fitted after epoch {epochs_done}"
        if self.env.is_main:
            out_dir = self.run_dir / "predictor"
            out_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomic(out_dir / f"measured_epoch_{epochs_done:04d}.jsonl",
                              "".join(json.dumps(row, sort_keys=True) + "\n" for row in ordered))
            self.predictor.save(out_dir / f"epoch_{epochs_done:04d}")
        summary = {"num_archs": len(ordered), "top1_min": float(top1.min()), "top1_max": float(top1.max()),
                   "top1_mean": float(top1.mean()), **quality, "seconds": time.perf_counter() - start}

        def fmt(tau: float | None) -> str:
            return "undefined" if tau is None else f"{tau:.3f}"

        previous = (f", previous predictor on the new subnets {fmt(quality['tau_previous_predictor'])}"
                    if "tau_previous_predictor" in quality else "")
        self.log.info("predictor fitted after epoch %d on %d subnets (held-out top-1 %.2f..%.2f; Kendall tau on "
                      "%d subnets it was not fitted on %s%s) in %.1fs", epochs_done, len(ordered),
                      summary["top1_min"], summary["top1_max"], quality["tau_holdout_archs"],
                      fmt(quality["tau_holdout"]), previous, summary["seconds"])
        return summary

    # ------------------------------------------------------------------------------------------------------
    # checkpoints (attentive.train_state)
    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def save_checkpoint(self, epoch_end: bool = False) -> None:
        if self.env.is_main:
            self.state.save(self.run_dir, epoch_end=epoch_end, keep=self.cfg["checkpoint"]["keep"])

    def check_checkpoint(self, path: Path, ckpt: dict) -> None:
        """Refuse a checkpoint of another space or model (CheckpointMismatchError), saying what differs."""
        self.state.check(path, ckpt)

    def resume_from(self, path: Path, ckpt: dict) -> None:
        self.state.resume(path, ckpt, self.predictor_backend)

    # ------------------------------------------------------------------------------------------------------
    # the run
    def _log(self, kind: str, **values: Any) -> None:
        if self.metrics is not None:
            self.metrics.log(kind, self.global_step, **values)

    def setup(self) -> None:
        """Resume if asked (else refuse to overwrite a run), save the resolved config, record the machine and
        library versions (`attentive.environment`: a warning names what changed since the previous start), open
        the logs. Raises BadFileError (CheckpointMismatchError among them) naming the checkpoint that cannot be
        resumed."""
        found = find_resume(self.cfg["resume"], self.run_dir, self.env, self.check_checkpoint)
        if found is not None:
            self.resume_from(*found)
        per_rank = all_gather_json(describe_environment(self.device.type), self.env)
        if self.env.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
            changes = record_start(self.run_dir, per_rank, self.global_step, resumed=found is not None)
            if changes:
                self.log.warning("resumed at step %d on another machine or software than the run's previous start "
                                 "(%s): from here the run will not repeat it bit for bit; %s",
                                 self.global_step, self.run_dir / ENVIRONMENT_NAME, "; ".join(changes))
        self.metrics = MetricsLogger(self.run_dir, self.env.is_main, self.cfg["log"]["tensorboard"],
                                     resume_step=self.global_step if found is not None else None)

    def fit(self) -> dict[str, Any]:
        """Train to `sched.epochs`, validating and checkpointing every epoch; returns the final report."""
        if self.metrics is None:
            self.setup()
        cfg = self.cfg
        epochs = cfg["sched"]["epochs"]
        self.log.info("training %s supernet on %s: %d epochs x %d steps, global batch %d, lr %.4g, sampler %s%s, "
                      "%d process(es) on %s%s", self.space.name, self.data.name, epochs, self.steps_per_epoch,
                      self.global_batch, self.lr, cfg["sampler"]["name"],
                      f" ({cfg['sampler']['scorer']})" if cfg["sampler"]["name"] != "uniform" else "",
                      self.env.world_size, self.device, ", channels_last" if self.channels_last else "")
        try:
            while self.epoch < epochs:
                epoch = self.epoch
                stats = self.train_one_epoch(epoch, self.batch_in_epoch)
                self._log("epoch", epoch=epoch, **stats)
                self.epoch, self.batch_in_epoch = epoch + 1, 0
                every = cfg["eval"]["every_epochs"]
                if every and (self.epoch % every == 0 or self.epoch == epochs):
                    self.last_eval = self.evaluate()
                    self._log("val", epoch=epoch, **{f"top1_{k}": v for k, v in self.last_eval.items()})
                    self.log.info("epoch %d: loss %.4f, held-out top-1 %s", epoch, stats["loss_max"],
                                  ", ".join(f"{k} {v:.2f}" for k, v in self.last_eval.items()))
                if self.predictor_due(self.epoch):
                    self._log("predictor", epoch=epoch, **self.fit_predictor(self.epoch))
                self.save_checkpoint(epoch_end=True)
            return self.final_report()
        finally:
            if self.metrics is not None:
                self.metrics.close()

    def final_report(self) -> dict[str, Any]:
        """Held-out top-1 (max, min, middle) and, reported only, test-split top-1 of max and min."""
        report: dict[str, Any] = {
            "epochs": self.epoch, "steps": self.global_step, "train_seconds": self.train_seconds,
            "world_size": self.env.world_size, "checkpoint": str(self.run_dir / LAST_NAME),
            "mflops": {"max": count_flops(self.space, self.max_arch, self.num_classes),
                       "min": count_flops(self.space, self.min_arch, self.num_classes)},
        }
        if not self.last_eval:
            self.last_eval = self.evaluate()
        report["holdout_top1"] = self.last_eval
        if self.cfg["eval"]["test_at_end"]:
            report["test_top1"] = self.evaluate(self.test_loader, {"max": self.max_arch, "min": self.min_arch})
        self._log("final", **{f"holdout_top1_{k}": v for k, v in report["holdout_top1"].items()},
                  **{f"test_top1_{k}": v for k, v in report.get("test_top1", {}).items()})
        if self.env.is_main:
            write_json_atomic(self.run_dir / "final.json", report)
        self.log.info("done: held-out top-1 %s; test top-1 %s (reported only)",
                      ", ".join(f"{k} {v:.2f}" for k, v in report["holdout_top1"].items()),
                      ", ".join(f"{k} {v:.2f}" for k, v in report.get("test_top1", {}).items()) or "not run")
        return report


def run_training(cfg: dict[str, Any], predictor_backend: PredictorBackend | None = None,
                 after_step: AfterStepHook | None = None) -> dict[str, Any]:
    """What train.py runs: the CPU runtime settings (attentive/cpu_runtime.py: faster steps, same numbers), the
    process group when launched by torchrun, then `Trainer(cfg, ...).fit()`; returns the final report.

    Raises `BadFileError` (`CheckpointMismatchError` among them) for a checkpoint that cannot be resumed and
    `NonFiniteLossError` when a loss goes NaN or infinite (the last good checkpoint is kept)."""
    from .cpu_runtime import tune_cpu_runtime
    from .distributed import cleanup, init_distributed

    tune_cpu_runtime()
    env = init_distributed(cfg["device"], cfg["dist_backend"])
    try:
        return Trainer(cfg, env, predictor_backend=predictor_backend, after_step=after_step).fit()
    finally:
        cleanup()
