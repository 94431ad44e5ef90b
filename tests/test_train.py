"""Training: the sandwich step, samplers and scorers, checkpoints, exact resume after SIGKILL, NaN stop, logs.

Everything runs the tiny space on small synthetic data (configs/train/smoke.yaml with fewer steps)."""
import copy
import ctypes
import dataclasses
import json
import platform
import re
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import attentive.train_step as step_mod
import train
from attentive.checkpoint import load_supernet
from attentive import load_space
from attentive.config import ConfigError, load_config
from attentive.data import build_datasets, calibration_batches, datasets_from_config, set_loader_epoch
from attentive.environment import describe_environment
from attentive.evaluate import evaluate_arch
from attentive.fileio import BadFileError
from attentive.train_state import CheckpointMismatchError
from attentive.train_step import sandwich_step
from attentive.trainer import Trainer as _Trainer
from predictors.xgb import AccuracyPredictor

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "train" / "smoke.yaml"
# 3 epochs x 4 steps; predictor (with its GP teacher) fitted after epoch 1 and refreshed after epoch 2; last.pt
# every 3 steps.
RUN_ARGS = ["train.max_steps_per_epoch=4", "checkpoint.every_steps=3", "log.tensorboard=true",
            "sampler.predictor_teacher=gp"]


def _cfg(tmp_path, *overrides):
    return load_config(SMOKE, [f"output_dir={tmp_path}", *RUN_ARGS, *overrides])


def Trainer(cfg, **kw):
    """The trainer as train.py builds it: with the XGBoost predictor backend."""
    return _Trainer(cfg, predictor_backend=AccuracyPredictor, **kw)


def _run_cli(out_dir, *extra, kill_at_step=None):
    """train.py with the smoke config; with `kill_at_step`, tests/kill_at_step.py instead: the same training,
    SIGKILLed right after that step (through the trainer's after_step hook)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    program = ([str(ROOT / "train.py"), "--config"] if kill_at_step is None
               else [str(ROOT / "tests" / "kill_at_step.py"), str(kill_at_step)])
    cmd = [sys.executable, *program, str(SMOKE), f"output_dir={out_dir}", *RUN_ARGS, *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _first_batch(trainer, epoch=0):
    set_loader_epoch(trainer.train_loader, epoch)
    return next(iter(trainer.train_loader))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    proc = _run_cli(out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


# ---- one step --------------------------------------------------------------------------------------------
def test_sandwich_step_order_clip_and_update(tmp_path):
    t = Trainer(_cfg(tmp_path, "train.num_subnets=4", "sampler.name=uniform", "train.clip_grad_value=0.01",
                        "sched.warmup_epochs=0"))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    images, labels = _first_batch(t)
    out = t.train_step(images, labels)
    assert len(out.archs) == 4 and len(out.losses) == 4
    assert out.archs[0] == t.space.max_arch() and out.archs[-1] == t.space.min_arch()
    assert all(np.isfinite(out.losses)) and t.global_step == 1
    assert t.model.dropout_rate == 0 and all(b.drop_connect_rate == 0 for b in t.model.blocks)  # max-only regularization
    assert max(p.grad.abs().max().item() for p in t.model.parameters()) <= 0.01 + 1e-9  # one clip by value
    changed = [k for k, v in t.model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)


def test_sandwich_step_alone_is_the_trainers_step(tmp_path):
    """attentive.train_step.sandwich_step on the trainer's archs gives the trainer's step, bit for bit."""
    cfg = _cfg(tmp_path, "train.num_subnets=4", "sampler.name=uniform")
    a, b = Trainer(cfg), Trainer(copy.deepcopy(cfg))
    images, labels = _first_batch(a)
    out = a.train_step(images, labels)
    alone = sandwich_step(b.model, *b._to_device(images, labels), out.archs, b.criterion, b.optimizer,
                          b.step_options)
    assert alone.losses == out.losses and alone.lr == out.lr
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    with pytest.raises(ValueError, match="at least the largest and the smallest"):
        sandwich_step(b.model, *b._to_device(images, labels), out.archs[:1], b.criterion, b.optimizer,
                      b.step_options)


def test_predictor_scoring_needs_a_backend(tmp_path):
    with pytest.raises(ValueError, match="predictor_backend"):
        _Trainer(_cfg(tmp_path))  # bestup scored by a predictor, and no backend
    with pytest.raises(TypeError, match="PredictorBackend"):
        _Trainer(_cfg(tmp_path), predictor_backend=object())
    # Neither the loss scorer nor uniform sampling needs one.
    assert _Trainer(_cfg(tmp_path / "loss", "sampler.scorer=loss")).predictor_backend is None
    assert _Trainer(_cfg(tmp_path / "uniform", "sampler.name=uniform")).attentive_sampler is None


def test_trainer_evaluates_through_evaluate_arch(tmp_path):
    t = Trainer(_cfg(tmp_path, "sampler.name=uniform"))
    t.train_step(*_first_batch(t))
    calib = t._calibration(2)
    bn = {k: v.clone() for k, v in t.model.state_dict().items() if "running" in k}
    got = t.evaluate(archs={"min": t.min_arch}, calib_batches=2)
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in bn.items()) and t.model.training
    expected = evaluate_arch(t.model, t.min_arch, calib, t.holdout_loader, t.device, t.channels_last)
    assert got == {"min": expected}


@pytest.mark.parametrize("resolution", ["fixed", "random", "random_min"])
def test_distillation_targets_are_the_largest_subnets_logits(tmp_path, monkeypatch, resolution):
    """Every distilled subnet's target is the largest subnet's own logits on the same batch in this step."""
    t = Trainer(_cfg(tmp_path, "sampler.name=uniform", "train.dropout=0", "train.drop_connect=0",
                     "train.num_subnets=4", f"train.sandwich_resolution={resolution}"))
    seen = []
    real = step_mod.distill_loss

    def recording(student, teacher):
        seen.append((student.detach().clone(), teacher.clone()))
        return real(student, teacher)

    monkeypatch.setattr(step_mod, "distill_loss", recording)
    images, labels = _first_batch(t)
    for _ in range(3):  # a few steps: with random resolution, the draws differ between steps
        reference = copy.deepcopy(t.model)
        max_arch, min_arch = t.sandwich_ends()
        reference.set_arch(max_arch)
        with torch.no_grad():
            expected = reference(t._to_device(images, labels)[0]).float()
        seen.clear()
        out = t.train_step(images, labels)
        assert out.archs[0] == max_arch and out.archs[-1] == min_arch
        assert len(seen) == 3  # two sampled subnets and the smallest one
        for student, teacher in seen:
            assert torch.equal(teacher, expected)
            assert not torch.equal(student, teacher)
    assert real(torch.zeros(4, 10), expected[:4]).item() > 0


def test_without_inplace_distillation_every_subnet_learns_the_labels(tmp_path, monkeypatch):
    """train.inplace_distill=false (the demo's setting): each subnet's loss is the label-smoothed cross-entropy
    of its own logits against the labels, and no distillation loss is computed."""
    t = Trainer(_cfg(tmp_path, "sampler.name=uniform", "train.dropout=0", "train.drop_connect=0",
                     "train.num_subnets=4", "train.inplace_distill=false", "train.sandwich_resolution=random_min"))

    def refuse(student, teacher):
        raise AssertionError("distill_loss called with inplace_distill=false")

    monkeypatch.setattr(step_mod, "distill_loss", refuse)
    images, labels = _first_batch(t)
    for _ in range(2):
        reference = copy.deepcopy(t.model).train()  # the weights every subnet of the coming step sees
        out = t.train_step(images, labels)
        assert len(out.losses) == 4
        x, y = t._to_device(images, labels)
        for arch, loss in zip(out.archs, out.losses):
            reference.set_arch(arch)
            with torch.no_grad():
                expected = t.criterion(reference(x).float(), y).item()
            assert loss == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert t.criterion.label_smoothing == t.cfg["train"]["label_smoothing"] > 0  # for every subnet


def _sandwich_ends_per_step(t: Trainer, steps: int = 40) -> list[tuple]:
    """`t.sandwich_ends()` at global steps 0 .. steps-1."""
    ends = []
    for step in range(steps):
        t.global_step = step
        ends.append(t.sandwich_ends())
    return ends


def test_random_sandwich_resolution_is_drawn_per_step_from_the_seed(tmp_path):
    t = Trainer(_cfg(tmp_path, "sampler.name=uniform", "train.sandwich_resolution=random"))
    draws = []
    for max_arch, min_arch in _sandwich_ends_per_step(t):
        assert max_arch.resolution == min_arch.resolution
        assert dataclasses.replace(max_arch, resolution=t.max_arch.resolution) == t.max_arch
        draws.append(max_arch.resolution)
    assert set(draws) == set(t.space.resolutions)  # both resolutions of the tiny space occur
    t.global_step = 7
    assert t.sandwich_ends()[0].resolution == draws[7]  # a function of (seed, step): resumes redraw it
    only_min = Trainer(_cfg(tmp_path / "only_min", "sampler.name=uniform", "train.sandwich_resolution=random_min"))
    for step in range(40):  # the same draws, for the smallest subnet only; the teacher stays at full size
        only_min.global_step = step
        assert only_min.sandwich_ends() == (t.max_arch, dataclasses.replace(t.min_arch, resolution=draws[step]))
    fixed = Trainer(_cfg(tmp_path / "fixed", "sampler.name=uniform"))
    assert fixed.sandwich_ends() == (fixed.max_arch, fixed.min_arch)
    assert fixed.max_arch.resolution == max(fixed.space.resolutions)


def test_random_max_kernel_is_drawn_per_stage_and_step_from_the_seed(tmp_path):
    t = Trainer(_cfg(tmp_path, "sampler.name=uniform", "train.sandwich_kernel=random_max"))
    draws = []
    for max_arch, min_arch in _sandwich_ends_per_step(t):
        assert dataclasses.replace(max_arch, kernel_size=t.max_arch.kernel_size) == t.max_arch  # kernels only
        assert min_arch == t.min_arch
        assert all(k in stage.kernel_sizes for k, stage in zip(max_arch.kernel_size, t.space.stages))
        draws.append(max_arch.kernel_size)
    per_stage = list(zip(*draws))
    assert all(set(ks) == set(stage.kernel_sizes) for ks, stage in zip(per_stage, t.space.stages))  # 3 and 5 occur
    assert len(set(draws)) > 20  # stages drawn independently, not one coin for all
    t.global_step = 7
    assert t.sandwich_ends()[0].kernel_size == draws[7]  # a function of (seed, step): resumes redraw it
    both = Trainer(_cfg(tmp_path / "both", "sampler.name=uniform", "train.sandwich_kernel=random_max",
                        "train.sandwich_resolution=random"))
    both.global_step = 7
    assert both.sandwich_ends()[0].kernel_size == draws[7]
    # Progressive shrinking holds the kernels at the largest until they turn elastic.
    held = Trainer(_cfg(tmp_path / "held", "sampler.name=uniform", "sched.epochs=2",
                        "train.sandwich_kernel=random_max", "train.elastic_kernel_from=1"))
    assert all(ends[0] == held.max_arch for ends in _sandwich_ends_per_step(held, 10))
    held.epoch = 1
    assert len({ends[0].kernel_size for ends in _sandwich_ends_per_step(held, 10)}) > 1


def test_progressive_shrinking_holds_dimensions_at_the_largest_until_their_epoch(tmp_path):
    t = Trainer(_cfg(tmp_path, "sampler.name=uniform", "sched.epochs=3", "train.elastic_depth_from=1",
                     "train.elastic_expand_from=2", "train.elastic_width_from=2"))
    largest, smallest = t.space.max_arch(), t.space.min_arch()
    images, labels = _first_batch(t)
    t.epoch = 0  # kernels elastic (OFA's first phase), the rest held at the largest values
    assert t.held_at_largest() == ("depth", "expand_ratio", "width")
    assert t.sandwich_ends() == (largest, dataclasses.replace(largest, kernel_size=smallest.kernel_size,
                                                              resolution=smallest.resolution))
    middle = t.sample_middle(40, images, labels)
    assert all((a.depth, a.expand_ratio, a.width) == (largest.depth, largest.expand_ratio, largest.width)
               for a in middle)
    assert len({a.kernel_size for a in middle}) > 1  # the elastic dimension still varies
    t.epoch = 1
    assert t.held_at_largest() == ("expand_ratio", "width")
    assert t.sandwich_ends()[1].depth == smallest.depth and t.sandwich_ends()[1].width == largest.width
    t.epoch = 2  # everything elastic: the plain sandwich
    assert t.held_at_largest() == ()
    assert t.sandwich_ends() == (largest, smallest)
    assert len({a.width for a in t.sample_middle(40, images, labels)}) > 1


@pytest.mark.parametrize("overrides, message", [
    (["train.elastic_kernel_from=3"], "train.elastic_kernel_from (3) must be < sched.epochs (3)"),
    (["sampler.name=bestup", "sampler.warmup_epochs=1", "train.elastic_width_from=2"],
     "set sampler.warmup_epochs >= 2"),
    (["sampler.name=bestup", "sampler.scorer=loss", "sampler.warmup_epochs=0", "train.elastic_depth_from=1"],
     "set sampler.warmup_epochs >= 1"),
])
def test_progressive_shrinking_refuses_schedules_that_cannot_run(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        _cfg(tmp_path, "sched.epochs=3", *overrides)


def test_with_largest_replaces_named_fields_only():
    space = load_space("tiny")
    small = space.min_arch()
    held = space.with_largest(small, ["kernel_size", "width"])
    assert held.kernel_size == space.max_arch().kernel_size and held.width == space.max_arch().width
    assert (held.depth, held.expand_ratio, held.resolution) == (small.depth, small.expand_ratio, small.resolution)
    assert space.with_largest(small, []) == small
    with pytest.raises(ValueError, match="unknown arch fields \\['kernel'\\]"):
        space.with_largest(small, ["kernel"])


def test_bf16_autocast_step_runs_on_cpu(tmp_path):
    t = Trainer(_cfg(tmp_path, "amp=bf16", "sampler.name=uniform", "channels_last=false"))
    out = t.train_step(*_first_batch(t))
    assert all(np.isfinite(out.losses))


def test_loss_scorer_is_minus_minibatch_loss_without_side_effects(tmp_path):
    t = Trainer(_cfg(tmp_path, "sampler.scorer=loss", "sampler.warmup_epochs=0"))
    images, labels = t._to_device(*_first_batch(t))
    archs = t.uniform_sampler.sample(3)
    bn_before = {k: v.clone() for k, v in t.model.state_dict().items() if "running" in k or "num_batches" in k}
    scores = t._loss_scorer(images, labels)(archs)
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in bn_before.items())
    assert all(p.grad is None for p in t.model.parameters())
    with torch.no_grad():
        t.model.set_arch(archs[1])
        expected = -t.criterion(t.model(images), labels).item()
    assert scores.shape == (3,) and scores[1] == pytest.approx(expected, rel=1e-5)
    # bestup keeps the candidate with the lowest loss: the chosen arch scores highest among what it saw.
    assert t.attentive_active()
    chosen = t.sample_middle(1, images, labels)
    assert len(chosen) == 1 and chosen[0] != t.space.max_arch()


def test_predictor_schedule(tmp_path):
    t = Trainer(_cfg(tmp_path, "sched.epochs=10", "sampler.warmup_epochs=2", "sampler.refresh_every=3"))
    assert not t.attentive_active()  # uniform warm-up until the predictor exists
    due = [e for e in range(1, 11) if t.predictor_due(e)]
    assert due == [2]
    t.predictor = object()  # fitted: now refreshes every 3 epochs, never after the last epoch
    assert [e for e in range(1, 11) if t.predictor_due(e)] == [5, 8]
    assert t.attentive_active()


# ---- whole runs -------------------------------------------------------------------------------------------
def test_run_writes_checkpoints_logs_and_report(finished_run):
    files = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "last.pt", "metrics.jsonl", "final.json", "train.log", "tb", "predictor",
            "environment.json"} <= files
    starts = json.loads((finished_run / "environment.json").read_text())["starts"]
    assert len(starts) == 1 and starts[0]["step"] == 0 and starts[0]["machines"][0]["threads"] == 1  # OMP_NUM_THREADS
    assert sorted(p.name for p in finished_run.glob("epoch_*.pt")) == ["epoch_0002.pt", "epoch_0003.pt"]  # keep: 2
    report = json.loads((finished_run / "final.json").read_text())
    assert report["epochs"] == 3 and report["steps"] == 12
    assert set(report["holdout_top1"]) == {"max", "min", "mid0"} and set(report["test_top1"]) == {"max", "min"}
    kinds = [json.loads(line)["kind"] for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("val") == 3 and kinds.count("predictor") == 2 and kinds[-1] == "final"
    # each fit reports how its predictor ranks subnets it was not fitted on; the refresh also scores the
    # previous predictor on the newly measured subnets
    fits = [r for r in map(json.loads, (finished_run / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "predictor"]
    assert [f["tau_holdout_archs"] for f in fits] == [2, 2]
    assert all(f["tau_holdout"] is None or -1 <= f["tau_holdout"] <= 1 for f in fits)
    assert "tau_previous_predictor" not in fits[0] and "tau_previous_predictor" in fits[1]
    assert list((finished_run / "tb").iterdir())
    measured = (finished_run / "predictor" / "measured_epoch_0001.jsonl").read_text().splitlines()
    assert len(measured) == 6 and (finished_run / "predictor" / "epoch_0001" / "model.json").is_file()
    meta = json.loads((finished_run / "predictor" / "epoch_0001" / "meta.json").read_text())
    assert meta["teacher"]["kind"] == "gp" and meta["num_archs"] == 6  # sampler.predictor_teacher reached the fit
    # The checkpoint contract: load_supernet rebuilds the model, the config names the data split.
    model, ckpt = load_supernet(finished_run / "last.pt")
    assert ckpt["config"]["data"]["name"] == "synthetic" and "holdout_fraction" in ckpt["config"]["data"]
    assert ckpt["epoch"] == 3 and ckpt["batch_in_epoch"] == 0 and ckpt["predictor"] is not None
    assert torch.equal(model.state_dict()["classifier.weight"], ckpt["model"]["classifier.weight"])


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(finished_run, tmp_path):
    out = tmp_path / "killed"
    # Step 10 is batch 2 of epoch 2 (after a predictor fit and refresh); last.pt was written at step 9.
    proc = _run_cli(out, kill_at_step=10)
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (9, 2, 1)
    proc = _run_cli(out, "--resume", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "will not repeat" not in proc.stderr  # same machine
    assert [s["step"] for s in json.loads((out / "environment.json").read_text())["starts"]] == [0, 9]
    a = torch.load(finished_run / "last.pt", weights_only=True)
    b = torch.load(out / "last.pt", weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["sampler"] == b["sampler"] and torch.equal(a["rng"]["supernet"], b["rng"]["supernet"])
    # The log has no duplicate records from the steps redone after the kill.
    def records(d):
        return [(r["kind"], r["step"], r.get("loss_max")) for r in map(json.loads, (d / "metrics.jsonl").open())]
    assert records(finished_run) == records(out)


def test_resume_auto_skips_truncated_checkpoint(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    data = (run / "last.pt").read_bytes()
    (run / "last.pt").unlink()  # a hard link of epoch_0003.pt: write a torn copy instead
    (run / "last.pt").write_bytes(data[: len(data) // 2])
    os.utime(run / "last.pt")
    (run / "epoch_0003.pt").unlink()
    t = Trainer(_cfg(run, "resume=auto"))
    with pytest.warns(RuntimeWarning, match="skipping checkpoint .*last.pt"):
        t.setup()
    assert (t.epoch, t.batch_in_epoch, t.global_step) == (2, 0, 8)
    t.metrics.close()


def test_resume_on_another_machine_warns_naming_what_changed(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    record = json.loads((run / "environment.json").read_text())
    record["starts"][0]["machines"][0].update(cpu="another CPU", threads=64)
    (run / "environment.json").write_text(json.dumps(record))
    t = Trainer(_cfg(run, "resume=auto"))
    t.setup()
    t.metrics.close()
    log = (run / "train.log").read_text()
    assert "resumed at step 12 on another machine or software" in log and "will not repeat it bit for bit" in log
    assert f"cpu: another CPU -> {describe_environment()['cpu']}" in log and "threads: 64 -> 1" in log
    assert len(json.loads((run / "environment.json").read_text())["starts"]) == 2


def test_truncated_resume_file_exits_2_naming_it(finished_run, tmp_path, capsys):
    torn = tmp_path / "torn.pt"
    data = (finished_run / "last.pt").read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    assert train.main(["-c", str(SMOKE), f"output_dir={tmp_path / 'x'}", "--resume", str(torn)]) == 2
    err = capsys.readouterr().err
    assert f"error: {torn}: not a readable checkpoint" in err
    assert issubclass(CheckpointMismatchError, BadFileError)  # every bad checkpoint is refused the same way


def test_checkpoint_of_another_space_is_refused(finished_run, tmp_path, capsys):
    space = tmp_path / "other_space.yaml"
    text = (ROOT / "attentive" / "spaces" / "tiny.yaml").read_text().replace("widths: [256, 320]", "widths: [256, 384]")
    space.write_text(text.replace("name: tiny", "name: tiny_wide_head"))
    code = train.main(["-c", str(SMOKE), f"output_dir={tmp_path / 'x'}", f"space={space}",
                       f"resume={finished_run / 'last.pt'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "was trained on space 'tiny'" in err and "tiny_wide_head" in err


def test_fresh_run_refuses_to_overwrite_checkpoints(finished_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert train.main(["-c", str(SMOKE), f"output_dir={run}"]) == 2
    assert "resume=auto" in capsys.readouterr().err
    # train.py applies the CPU runtime settings before building anything (attentive/cpu_runtime.py).
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16384"


def test_non_finite_loss_stops_naming_step_and_arch(tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = step_mod.distill_loss

    def poisoned(student, teacher):  # the 4th step's first distilled subnet goes NaN
        calls["n"] += 1
        loss = real(student, teacher)
        return loss * float("nan") if calls["n"] == 7 else loss

    monkeypatch.setattr(step_mod, "distill_loss", poisoned)
    code = train.main(["-c", str(SMOKE), f"output_dir={tmp_path}", "train.max_steps_per_epoch=6",
                       "checkpoint.every_steps=2", "sampler.name=uniform", "log.tensorboard=false"])
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite loss nan at step 4" in err and "sampled #1 subnet" in err and '"resolution"' in err
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_channels_last_is_default_on_cpu(tmp_path):
    t = Trainer(_cfg(tmp_path, "sampler.name=uniform"))
    assert t.channels_last
    w = t.model.blocks[0].conv_dw.weight
    assert w.is_contiguous(memory_format=torch.channels_last)


# ---- data -------------------------------------------------------------------------------------------------
def test_trainer_data_is_datasets_from_config_and_calibrates_on_plain_images(tmp_path):
    cfg = _cfg(tmp_path, "sampler.name=uniform")
    t = Trainer(cfg)
    d = cfg["data"]
    assert d["augment"] == "basic" and t.data.train.pad > 0  # the smoke run trains on augmented images
    # The splits as the trainer built them before datasets_from_config existed, key by key.
    before = build_datasets(d["name"], d["root"], image_size=d["image_size"], holdout_fraction=d["holdout_fraction"],
                            split_seed=d["split_seed"], augment=d["augment"],
                            synthetic_num_train=d["synthetic_num_train"], synthetic_num_test=d["synthetic_num_test"],
                            num_classes_synthetic=t.space.num_classes)
    for splits in (before, datasets_from_config(d, num_classes=t.space.num_classes)):
        assert (splits.name, splits.num_classes, splits.image_size) == (t.data.name, t.data.num_classes,
                                                                        t.data.image_size)
        for part in ("train", "train_plain", "holdout", "test"):
            ours, theirs = getattr(t.data, part), getattr(splits, part)
            assert (len(ours), ours.pad, ours.seed) == (len(theirs), theirs.pad, theirs.seed), part
            assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.images, theirs.images), part
    calib = t._calibration(2)
    expected = calibration_batches(before, t.batch_size, 2, seed=cfg["seed"])
    assert all(torch.equal(x, y) for x, y in zip(calib, expected))
    # Un-augmented: each image is one of train_plain's, none pad-cropped or flipped.
    plain = torch.stack([t.data.train_plain[i][0] for i in range(len(t.data.train_plain))])
    assert all(any(torch.equal(image, p) for p in plain) for image in torch.cat(calib))


# ---- CPU runtime settings ------------------------------------------------------------------------------
class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@pytest.mark.skipif(not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"),
                    reason="mallopt is glibc's")
def test_keep_freed_memory_serves_and_keeps_16mib_blocks_in_the_heap():
    from attentive.cpu_runtime import keep_freed_memory

    assert keep_freed_memory() is True  # both mallopt calls accepted (an out-of-range value returns False)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = _Mallinfo2
    mmapped_before = libc.mallinfo2().hblkhd
    block = libc.malloc(16 << 20)  # an activation-sized block: glibc's defaults would mmap it
    assert block
    try:
        assert libc.mallinfo2().hblkhd == mmapped_before  # served from the heap, not by mmap
    finally:
        libc.free(block)
    assert libc.mallinfo2().fordblks >= 16 << 20  # and kept there after free, not trimmed back to the OS


def test_keep_freed_memory_is_a_no_op_outside_glibc(monkeypatch):
    from attentive import cpu_runtime

    monkeypatch.setattr(cpu_runtime.platform, "libc_ver", lambda: ("", ""))
    assert cpu_runtime.keep_freed_memory() is False


@pytest.mark.parametrize("device, setting, expected", [
    ("cpu", "auto", True), ("cpu", None, True), (torch.device("cpu"), "auto", True), ("cuda", "auto", False),
    ("cuda:1", None, False), ("cpu", False, False), ("cuda", True, True)])
def test_channels_last_is_on_for_cpu_unless_set(device, setting, expected):
    from attentive.cpu_runtime import use_channels_last

    assert use_channels_last(device, setting) is expected


def test_channels_last_setting_must_be_a_bool_or_auto():
    from attentive.cpu_runtime import use_channels_last

    with pytest.raises(ValueError, match="channels_last must be true, false or 'auto', got 'yes'"):
        use_channels_last("cpu", "yes")


def test_primitive_cache_capacity_is_set_unless_the_user_chose_one(monkeypatch):
    from attentive import cpu_runtime

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert cpu_runtime.enlarge_primitive_cache() is True
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == str(cpu_runtime.PRIMITIVE_CACHE_CAPACITY)
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    assert cpu_runtime.enlarge_primitive_cache() is False
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


# ---- logs -------------------------------------------------------------------------------------------------
def test_metrics_log_is_strict_json_with_null_for_undefined_values(tmp_path):
    from attentive.logging_utils import MetricsLogger

    log = MetricsLogger(tmp_path, enabled=True, tensorboard=False)
    log.log("predictor", 3, tau=float("nan"), top1=np.float32(50.0), losses=[torch.tensor(1.5), float("inf")])
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "kind": "predictor", "step": 3, "tau": None, "top1": 50.0, "losses": [1.5, None]}
