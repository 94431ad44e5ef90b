"""Supernet training: the sandwich rule with in-place distillation, AttentiveNAS sampling, BN-recalibrated
validation, exact resume, and torch.distributed without DDP (see attentive/distributed.py for why).

One training step (`Trainer.train_step`):

1. the largest subnet, regularized (dropout, drop-connect), cross-entropy with label smoothing against the
   labels; its detached logits are the teacher;
2. `num_subnets - 2` subnets from the sampler, then the smallest, each distilled towards the teacher (KL);

gradients accumulate over the subnets, are averaged over ranks once, clipped once, one optimizer step.

Reproducibility: model init under a forked, seeded RNG; data order and augmentation from (seed, epoch); samplers
and the supernet's dropout generator carry their own seeded generators, all checkpointed. A run killed mid-epoch
and resumed ends with bit-identical weights on CPU (tests/test_train.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from .calibration import calibrate_bn
from .checkpoint import (LAST_NAME, TRAIN_CHECKPOINT_FORMAT, TRAIN_CHECKPOINT_VERSION, checkpoint_candidates,
                         load_checkpoint, load_newest_checkpoint, save_training_checkpoint)
from .config import diff_configs, save_config
from .data import build_loader, calibration_batches, datasets_from_config, set_loader_epoch
from .distributed import (DistEnv, all_gather_json, all_reduce_gradients, all_reduce_mean, all_reduce_sum,
                          broadcast_json, broadcast_module)
from .fileio import write_json_atomic, write_text_atomic
from .flops import count_flops, count_flops_batch
from .logging_utils import MetricsLogger, get_logger
from .space import Arch, load_space
from .supernet import Supernet

# Fault injection for the crash-resume test: the process SIGKILLs itself right after this global step (and the
# checkpoint due at it, if any). Read from the environment, never from the config, so resumes don't inherit it.
KILL_AT_STEP_ENV = "ATTENTIVE_FAULT_KILL_AT_STEP"
# Config keys that may differ between a checkpoint and the run resuming it without changing the result.
_RESUME_NEUTRAL_KEYS = ("resume", "output_dir", "log.", "checkpoint.", "data.num_workers", "data.root",
                        "eval.test_at_end")


class NonFiniteLossError(RuntimeError):
    """A subnet's loss was NaN or infinite: training stops, the last good checkpoint stays."""

    def __init__(self, step: int, epoch: int, arch: Arch, role: str, loss: float) -> None:
        self.step, self.epoch, self.arch, self.role, self.loss = step, epoch, arch, role, loss
        super().__init__(f"non-finite loss {loss} at step {step} (epoch {epoch}) for the {role} subnet {arch}; "
                         f"stopped before the optimizer step, the last good checkpoint is kept")


class CheckpointMismatchError(ValueError):
    """A checkpoint that belongs to another space, model or run layout."""


@dataclass
class StepOutput:
    losses: list[float]  # per subnet, averaged over ranks: [largest (CE), sampled... (KL), smallest (KL)]
    archs: list[Arch]  # [largest, sampled..., smallest]
    lr: float


@contextlib.contextmanager
def _preserved_bn_buffers(model: nn.Module) -> Iterator[None]:
    """Forward passes inside (candidate scoring, evaluation) leave BN running stats and counters untouched."""
    bufs = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for b in m.buffers()]
    saved = [b.detach().clone() for b in bufs]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(bufs, saved):
                b.copy_(s)


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) per sample, batch mean: in-place distillation towards the soft targets (same
    gradient as AttentiveNAS's soft cross-entropy)."""
    return F.kl_div(F.log_softmax(student_logits, dim=1), F.log_softmax(teacher_logits, dim=1),
                    reduction="batchmean", log_target=True)


def _kendall_tau(predicted: np.ndarray, measured: np.ndarray) -> float | None:
    """Kendall tau-b (scipy); None where it is undefined (constant inputs), so the metrics stay JSON."""
    from scipy.stats import kendalltau

    tau = kendalltau(predicted, measured).statistic
    return None if not np.isfinite(tau) else float(tau)


def fixed_middle_archs(space, num: int, seed: int, num_classes: int | None = None) -> list[Arch]:
    """`num` archs at evenly spaced FLOPs quantiles of a seeded random pool: the fixed 'middle' validation set."""
    if num == 0:
        return []
    rng = np.random.Generator(np.random.PCG64(seed))
    pool = space.sample_indices(rng, 4096)
    order = np.argsort(count_flops_batch(space, pool, num_classes), kind="stable")
    picks = [order[int(round(q * (len(order) - 1)))] for q in np.arange(1, num + 1) / (num + 1)]
    return [space.arch_from_indices(pool[i]) for i in picks]


def _shard(dataset: Dataset, n: int | None, env: DistEnv) -> Dataset:
    """The first `n` items (all if None), then every world_size-th from this rank: exact global counts."""
    total = len(dataset) if n is None else min(n, len(dataset))
    return Subset(dataset, list(range(env.rank, total, env.world_size)))


class Trainer:
    """Builds data, supernet, optimizer, scheduler, samplers and logs from a resolved config (see
    attentive/config.py); `fit()` trains, validates, checkpoints and reports."""

    def __init__(self, cfg: dict[str, Any], env: DistEnv | None = None) -> None:
        self.cfg = cfg
        self.env = env = env or DistEnv()
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
        self.channels_last = (self.device.type == "cpu") if cfg["channels_last"] == "auto" else cfg["channels_last"]
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
        self.amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg["amp"]]
        if self.amp_dtype is torch.float16 and self.device.type != "cuda":
            raise ValueError("amp=fp16 needs a CUDA device; use amp=bf16 on cpu")
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype is torch.float16 else None

        # ---- sampling ----
        self._build_samplers()

        # ---- position ----
        self.epoch = 0  # epoch in progress (== epochs completed at an epoch boundary)
        self.batch_in_epoch = 0  # batches of `epoch` already trained
        self.global_step = 0
        self.train_seconds = 0.0
        self.last_eval: dict[str, float] = {}
        self._epoch_sums, self._epoch_count = [0.0, 0.0], 0
        self.metrics: MetricsLogger | None = None
        kill = os.environ.get(KILL_AT_STEP_ENV)
        self._kill_at_step = int(kill) if kill else None

    # ------------------------------------------------------------------------------------------------------
    # sampling
    def _build_samplers(self) -> None:
        from .sampling import AttentiveSampler, FlopsBuckets, UniformSampler

        s = self.cfg["sampler"]
        self.uniform_sampler = UniformSampler(self.space, seed=self.seed + 1)
        self.attentive_sampler = None
        self.predictor = None
        self.predictor_source: str | None = None
        if s["name"] == "uniform":
            return
        # Only rank 0 writes the bucket cache; the others compute the same buckets (same seed) in memory.
        buckets = FlopsBuckets.build(self.space, step_mflops=s["flops_step"], pool_size=s["pool_size"], seed=self.seed,
                                     num_classes=self.num_classes, use_cache=self.env.is_main)
        self.attentive_sampler = AttentiveSampler(self.space, buckets, mode=s["name"], num_trials=s["num_trials"],
                                                  seed=self.seed + 2)
        if s["scorer"] == "predictor" and s["predictor"] is not None:
            from predictors.xgb import AccuracyPredictor

            self.predictor = AccuracyPredictor.load(s["predictor"], self.space)
            self.predictor_source = str(s["predictor"])

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
            with torch.no_grad(), _preserved_bn_buffers(self.model), self._autocast():
                for arch in archs:
                    self.model.set_arch(arch)
                    losses.append(self.criterion(self.model(images).float(), labels))
            return -all_reduce_mean(torch.stack(losses).double().cpu(), self.env).numpy()

        return score

    def sample_middle(self, num: int, images: torch.Tensor, labels: torch.Tensor) -> list[Arch]:
        if num == 0:
            return []
        if not self.attentive_active():
            return self.uniform_sampler.sample(num)
        if self.cfg["sampler"]["scorer"] == "loss":
            return self.attentive_sampler.sample(num, self._loss_scorer(images, labels))
        from .scoring import predictor_scorer

        return self.attentive_sampler.sample(num, predictor_scorer(self.predictor))

    def sandwich_ends(self) -> tuple[Arch, Arch]:
        """The largest and smallest subnets of the coming step. With train.sandwich_resolution=random both run
        at one resolution drawn from (seed, step): no generator state to checkpoint, resumes stay exact."""
        if self.cfg["train"]["sandwich_resolution"] == "fixed":
            return self.max_arch, self.min_arch
        rng = np.random.Generator(np.random.PCG64([self.seed, 5, self.global_step]))
        r = int(rng.choice(self.space.resolutions))
        return dataclasses.replace(self.max_arch, resolution=r), dataclasses.replace(self.min_arch, resolution=r)

    # ------------------------------------------------------------------------------------------------------
    # one step
    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.bfloat16,
                              enabled=self.amp_dtype is not None)

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return images, labels.to(self.device, non_blocking=True)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        """One sandwich step on a batch; advances `global_step`. Raises NonFiniteLossError before the update."""
        t = self.cfg["train"]
        model = self.model
        model.train()
        images, labels = self._to_device(images, labels)
        self.optimizer.zero_grad(set_to_none=False)  # zeros, not None: every rank reduces every gradient
        losses: list[torch.Tensor] = []
        max_arch, min_arch = self.sandwich_ends()

        model.set_arch(max_arch)
        with self._autocast(), model.regularization(t["dropout"], t["drop_connect"], t["drop_connect_last_stages"]):
            logits = model(images)
        loss = self.criterion(logits.float(), labels)
        self._backward(loss)
        losses.append(loss.detach())
        teacher = logits.detach().float()

        archs = [max_arch, *self.sample_middle(t["num_subnets"] - 2, images, labels), min_arch]
        for arch in archs[1:]:
            model.set_arch(arch)
            with self._autocast():
                logits = model(images)
            loss = (distill_loss(logits.float(), teacher) if t["inplace_distill"]
                    else self.criterion(logits.float(), labels))
            self._backward(loss)
            losses.append(loss.detach())

        # One reduction: gradients and the losses (so every rank sees the same finiteness verdict).
        mean_losses = all_reduce_gradients(model.parameters(), self.env, torch.stack(losses).float())
        values = mean_losses.tolist()
        bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
        if bad:
            i = bad[0]
            role = "largest" if i == 0 else "smallest" if i == len(archs) - 1 else f"sampled #{i}"
            raise NonFiniteLossError(self.global_step + 1, self.epoch, archs[i], role, values[i])
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if t["clip_grad_value"] is not None:
            nn.utils.clip_grad_value_(model.parameters(), t["clip_grad_value"])
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.global_step += 1
        self.scheduler.step_update(self.global_step)
        return StepOutput(values, archs, lr)

    # ------------------------------------------------------------------------------------------------------
    # epochs
    def train_one_epoch(self, epoch: int, start_batch: int = 0) -> dict[str, float]:
        from tqdm import tqdm

        self.epoch, self.batch_in_epoch = epoch, start_batch
        set_loader_epoch(self.train_loader, epoch, skip_batches=start_batch)
        ck, lg = self.cfg["checkpoint"], self.cfg["log"]
        if start_batch == 0:  # the epoch's running loss sums travel in checkpoints: same epoch log after resume
            self._epoch_sums, self._epoch_count = [0.0, 0.0], 0
        window_images, window_start = 0, time.perf_counter()
        epoch_start = time.perf_counter()
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
                kd = float(np.mean(out.losses[1:]))
                self._epoch_sums = [self._epoch_sums[0] + out.losses[0], self._epoch_sums[1] + kd]
                self._epoch_count += 1
                window_images += images.shape[0] * self.env.world_size
                bar.update(1)
                if self.global_step % lg["every_steps"] == 0 or self.batch_in_epoch == self.steps_per_epoch:
                    elapsed = time.perf_counter() - window_start
                    ips = window_images / max(elapsed, 1e-9)
                    bar.set_postfix(loss=f"{out.losses[0]:.3f}", kd=f"{kd:.3f}", lr=f"{out.lr:.4g}", img_s=f"{ips:.0f}")
                    self._log("train", epoch=epoch, batch=batch_idx, loss_max=out.losses[0], loss_kd=kd, lr=out.lr,
                              images_per_s=ips, mflops_sampled=[count_flops(self.space, a, self.num_classes)
                                                                for a in out.archs[1:-1]])
                    window_images, window_start = 0, time.perf_counter()
                if (ck["every_steps"] and self.global_step % ck["every_steps"] == 0
                        and self.batch_in_epoch < self.steps_per_epoch):
                    self.save_checkpoint()
                if self._kill_at_step is not None and self.global_step == self._kill_at_step:
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            bar.close()
        count = max(self._epoch_count, 1)
        return {"loss_max": self._epoch_sums[0] / count, "loss_kd": self._epoch_sums[1] / count,
                "steps": self._epoch_count,
                "seconds": time.perf_counter() - epoch_start}

    # ------------------------------------------------------------------------------------------------------
    # evaluation
    def _calibration(self, num_batches: int) -> list[torch.Tensor]:
        """The same un-augmented training images for every arch and every rank (seeded), for BN recalibration."""
        return calibration_batches(self.data, self.batch_size, num_batches, seed=self.seed)

    @torch.no_grad()
    def _count_correct(self, loader) -> tuple[int, int]:
        correct = total = 0
        for images, labels in loader:
            images, labels = self._to_device(images, labels)
            with self._autocast():
                logits = self.model(images)
            correct += int((logits.argmax(1) == labels).sum())
            total += labels.numel()
        return correct, total

    def top1(self, arch: Arch, calib: Sequence[torch.Tensor], loader) -> float:
        """BN-recalibrated top-1 (%) of `arch` over the (sharded) `loader`, summed over ranks."""
        self.model.set_arch(arch)
        with self._autocast():
            calibrate_bn(self.model, calib, self.device, self.channels_last)
        self.model.eval()
        try:
            correct, total = self._count_correct(loader)
        finally:
            self.model.train()
        correct, total = all_reduce_sum([correct, total], self.env).tolist()
        if total == 0:
            raise ValueError("evaluation split is empty")
        return 100.0 * correct / total

    def evaluate(self, loader=None, archs: dict[str, Arch] | None = None,
                 calib_batches: int | None = None) -> dict[str, float]:
        """Top-1 (%) per named arch (default: max, min, the fixed middle ones) on the held-out split. Training
        state is untouched: BN running stats are restored afterwards."""
        loader = self.holdout_loader if loader is None else loader
        if archs is None:
            archs = {"max": self.max_arch, "min": self.min_arch,
                     **{f"mid{i}": a for i, a in enumerate(self.middle_archs)}}
        calib = self._calibration(calib_batches or self.cfg["eval"]["calib_batches"])
        with _preserved_bn_buffers(self.model):
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

    def fit_predictor(self, epochs_done: int) -> dict[str, Any]:
        """Measure N stratified subnets (BN-recalibrated, on the held-out split: never the test split), fit the
        XGBoost predictor on rank 0 and share it (JSON) so every rank scores candidates identically."""
        from .measure import measure_archs, stratified_archs
        from predictors.xgb import AccuracyPredictor

        s = self.cfg["sampler"]
        start = time.perf_counter()
        rng = np.random.Generator(np.random.PCG64([self.seed, 4, epochs_done]))
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
        top1 = np.array([row["top1"] for row in ordered])
        measured = [Arch.from_dict(r["arch"]) for r in ordered]
        # How well the predictor ranks subnets it was not fitted on, reported in the metrics at every fit: the
        # previous predictor on these freshly measured subnets, and this fit's own tau on a seeded fifth of them
        # (fitted once more on the other four fifths; the predictor kept is fitted on all of them).
        quality: dict[str, Any] = {}
        state = None
        if self.env.is_main:
            if self.predictor is not None:
                quality["tau_previous_predictor"] = _kendall_tau(self.predictor.predict(measured), top1)
            held = rng.permutation(len(measured))[: max(2, len(measured) // 5)]
            fit_part = np.setdiff1d(np.arange(len(measured)), held)
            probe = AccuracyPredictor.fit(self.space, [measured[i] for i in fit_part], top1[fit_part],
                                          seed=self.seed, teacher=s["predictor_teacher"])
            quality["tau_holdout"] = _kendall_tau(probe.predict([measured[i] for i in held]), top1[held])
            quality["tau_holdout_archs"] = int(len(held))
            fitted = AccuracyPredictor.fit(self.space, measured, top1, seed=self.seed, teacher=s["predictor_teacher"])
            state = fitted.to_state()
        state, quality = broadcast_json([state, quality], self.env)
        # Every rank, rank 0 included, uses the deserialized copy: identical to what a resumed run loads.
        self.predictor = AccuracyPredictor.from_state(state, self.space)
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
    # checkpoints
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
            "world_size": self.env.world_size,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "sampler": {"uniform": self.uniform_sampler.state_dict(),
                        "attentive": self.attentive_sampler.state_dict() if self.attentive_sampler else None},
            "rng": {"supernet": self.model.generator.get_state()},
            "predictor": self.predictor.to_state() if self.predictor is not None else None,
            "predictor_source": self.predictor_source,
            "train_seconds": self.train_seconds,
            "epoch_loss_sums": {"sums": self._epoch_sums, "count": self._epoch_count},
            "last_eval": self.last_eval,
        }

    def save_checkpoint(self, epoch_end: bool = False) -> None:
        if self.env.is_main:
            save_training_checkpoint(self.state_dict(), self.run_dir, epoch_end=self.epoch if epoch_end else None,
                                     keep=self.cfg["checkpoint"]["keep"])

    def check_checkpoint(self, path: Path, ckpt: dict) -> None:
        """Refuse a checkpoint of another space or model, saying what differs."""
        if ckpt.get("format") != TRAIN_CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(f"{path} is not a training checkpoint of attentive (format "
                                          f"{ckpt.get('format')!r}); resume needs a file written by train.py")
        if ckpt.get("space_hash") != self.space.hash:
            name = ckpt.get("space", {}).get("name", "?")
            raise CheckpointMismatchError(
                f"{path} was trained on space '{name}' (hash {ckpt.get('space_hash')}), but this run uses space "
                f"'{self.space.name}' (hash {self.space.hash}); set space= to the checkpoint's space or start a new "
                f"output_dir")
        if ckpt.get("num_classes") != self.num_classes:
            raise CheckpointMismatchError(f"{path} has a {ckpt.get('num_classes')}-class classifier, this run's data "
                                          f"({self.cfg['data']['name']}) has {self.num_classes} classes")
        own = self.model.state_dict()
        theirs = ckpt["model"]
        missing, unexpected = sorted(set(own) - set(theirs)), sorted(set(theirs) - set(own))
        shapes = [k for k in own if k in theirs and tuple(own[k].shape) != tuple(theirs[k].shape)]
        if missing or unexpected or shapes:
            raise CheckpointMismatchError(f"{path} does not fit this supernet: missing {missing[:5]}, unexpected "
                                          f"{unexpected[:5]}, shape mismatch {shapes[:5]}")

    def resume_from(self, path: Path, ckpt: dict) -> None:
        self.check_checkpoint(path, ckpt)
        changed = {k: v for k, v in diff_configs(ckpt.get("config", {}), self.cfg).items()
                   if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in _RESUME_NEUTRAL_KEYS)}
        if changed:
            self.log.warning("resuming %s with a different config (the run will not match an uninterrupted one): %s",
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
            from predictors.xgb import AccuracyPredictor

            self.predictor = AccuracyPredictor.from_state(ckpt["predictor"], self.space)
            self.predictor_source = ckpt.get("predictor_source")
        self.epoch, self.batch_in_epoch = int(ckpt["epoch"]), int(ckpt["batch_in_epoch"])
        same_layout = ckpt.get("steps_per_epoch") == self.steps_per_epoch and ckpt.get("world_size") == self.env.world_size
        if same_layout:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        elif self.batch_in_epoch:
            self.log.warning("%s was written with %s steps per epoch on %s processes, this run has %d on %d: "
                             "epoch %d restarts from its first batch", path, ckpt.get("steps_per_epoch"),
                             ckpt.get("world_size"), self.steps_per_epoch, self.env.world_size, self.epoch)
            self.batch_in_epoch = 0
        self.global_step = self.epoch * self.steps_per_epoch + self.batch_in_epoch
        self.scheduler.step_update(self.global_step)
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        if self.batch_in_epoch and "epoch_loss_sums" in ckpt:
            self._epoch_sums = [float(v) for v in ckpt["epoch_loss_sums"]["sums"]]
            self._epoch_count = int(ckpt["epoch_loss_sums"]["count"])
        self.last_eval = dict(ckpt.get("last_eval") or {})
        self.log.info("resumed from %s: epoch %d, batch %d, step %d", path, self.epoch, self.batch_in_epoch,
                      self.global_step)

    def _find_resume(self) -> tuple[Path, dict] | None:
        """The checkpoint named by `resume` (a path, or 'auto': the newest that loads, chosen by rank 0 and
        shared, so that every rank resumes from the same file or all of them stop with the same error)."""
        resume = self.cfg["resume"]
        if resume is None:
            error = None
            if self.env.is_main and checkpoint_candidates(self.run_dir):
                error = (f"output_dir {self.run_dir} already holds checkpoints ({LAST_NAME}, epoch_*.pt) of another "
                         f"run; pass resume=auto (or --resume auto) to continue it, or choose another output_dir")
            error = broadcast_json(error, self.env)
            if error:
                raise CheckpointMismatchError(error)
            return None
        if resume != "auto":
            return Path(resume), load_checkpoint(resume, "cpu")
        found, decision = None, {"path": None, "error": None}
        if self.env.is_main:
            try:
                found = load_newest_checkpoint(self.run_dir, "cpu", self.check_checkpoint)
                decision["path"] = str(found[0]) if found else None
            except CheckpointMismatchError as e:
                decision["error"] = str(e)
        decision = broadcast_json(decision, self.env)
        if decision["error"]:
            raise CheckpointMismatchError(decision["error"])
        if decision["path"] is None:
            self.log.info("resume=auto: no checkpoint in %s, starting a fresh run", self.run_dir)
            return None
        return found if found is not None else (Path(decision["path"]), load_checkpoint(decision["path"], "cpu"))

    # ------------------------------------------------------------------------------------------------------
    # the run
    def _log(self, kind: str, **values: Any) -> None:
        if self.metrics is not None:
            self.metrics.log(kind, self.global_step, **values)

    def setup(self) -> None:
        """Resume if asked (else refuse to overwrite a run), save the resolved config, open the logs."""
        found = self._find_resume()
        if found is not None:
            self.resume_from(*found)
        if self.env.is_main:
            save_config(self.cfg, self.run_dir / "config.yaml")
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
