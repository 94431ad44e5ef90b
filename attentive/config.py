"""Training configuration: built-in defaults <- a YAML file <- ``key=value`` overrides (dotted keys for nested ones).

Every key that may appear is listed in `DEFAULTS`; an unknown key is an error that lists the valid ones, a value
of the wrong type or outside its allowed set is an error naming the key. Values of overrides are parsed as YAML
scalars (``yaml.safe_load``), so ``optim.lr=0.2``, ``amp=bf16``, ``resume=null`` and ``eval.calib_batches=8`` do
what they look like. The resolved config is a plain nested dict (JSON/YAML-able): it is saved beside the run
(``config.yaml``) and inside every checkpoint (``ckpt["config"]``).
"""
from __future__ import annotations

import copy
import difflib
import math
from pathlib import Path
from typing import Any, Iterable

import yaml

from .fileio import write_text_atomic

# Defaults of every key. A comment says what a key does; the same text is in configs/train/*.yaml.
DEFAULTS: dict[str, Any] = {
    "seed": 0,  # seeds model init, samplers, data order and augmentation; runs and resumes reproduce exactly
    "space": "tiny",  # a name in attentive/spaces or a path to a space YAML
    "output_dir": "runs/default",  # checkpoints, config.yaml, metrics.jsonl, tb/ and final.json go here
    "resume": None,  # null: fresh run | auto: newest good checkpoint in output_dir (fresh if none) | a path
    "device": "auto",  # auto (cuda when available) | cpu | cuda
    "dist_backend": "auto",  # auto (nccl on cuda, gloo on cpu) | gloo | nccl; used only under torchrun
    "amp": "none",  # none | bf16 (autocast, cpu or cuda) | fp16 (autocast + GradScaler, cuda only)
    "num_threads": None,  # torch intra-op threads per process; null: torch's default (torchrun sets 1)
    "channels_last": "auto",  # auto (on for cpu, where it is ~2x faster for these nets) | true | false
    "data": {
        "name": "fashion_mnist",  # fashion_mnist | cifar10 | imagefolder | synthetic
        "root": "./data",
        "image_size": None,  # required for imagefolder; in-memory datasets use their native size
        "augment": "basic",  # none | basic | autoaugment (imagefolder only)
        "holdout_fraction": 0.1,  # part of the training set held out for validation and predictor data
        "split_seed": 0,
        "batch_size": 128,  # per process; the global batch is batch_size * world_size
        "eval_batch_size": 256,
        "num_workers": 0,
        "synthetic_num_train": 512,
        "synthetic_num_test": 256,
    },
    "optim": {
        "lr": 0.1,  # per 256 images: the learning rate used is lr * global_batch / 256
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 1.0e-5,
        "no_decay_bn_bias": True,  # no weight decay on BN parameters and biases (every 1-d parameter)
    },
    "sched": {
        "epochs": 360,
        "warmup_epochs": 5.0,  # (fractions allowed) linear warm-up from warmup_lr_init, then cosine to min_lr (timm, per step)
        "warmup_lr_init": 0.0,
        "min_lr": 0.0,
    },
    "train": {
        "num_subnets": 4,  # sandwich rule: largest + (num_subnets - 2) sampled + smallest, per step
        "label_smoothing": 0.1,  # of the largest subnet's cross-entropy
        "inplace_distill": True,  # other subnets learn the largest one's soft targets (KL); false: labels
        "clip_grad_value": 1.0,  # null: no clipping
        "dropout": 0.2,  # largest subnet only
        "drop_connect": 0.2,  # largest subnet only
        "drop_connect_last_stages": 2,  # drop-connect on the blocks of the last N stages; null: all stages
        "max_steps_per_epoch": None,  # cap on steps per epoch (quick runs); null: the whole training split
        # fixed: the largest subnet at the largest resolution, the smallest at the smallest (AttentiveNAS);
        # random: both at one resolution drawn per step (OFA's elastic resolution), so that wide nets at low
        # resolution and narrow nets at high resolution are trained too
        "sandwich_resolution": "fixed",
    },
    "sampler": {
        "name": "uniform",  # uniform | bestup | worstup
        "scorer": "predictor",  # predictor (XGBoost predicted accuracy) | loss (minus the minibatch loss)
        "num_trials": 3,  # k candidates per sampled subnet (bestup / worstup)
        "flops_step": None,  # MFLOPs width of the FLOPs buckets; null: 25 for attentivenas, 1 for tiny
        "pool_size": 1000000,  # random archs behind the FLOPs prior (cached on disk by attentive.sampling)
        "predictor": None,  # directory of a saved AccuracyPredictor; null: fit one during training
        "warmup_epochs": 0,  # uniform sampling for the first W epochs (predictor scorer: then measure and fit)
        "num_measure": 100,  # N subnets measured on the held-out split to fit the predictor
        "refresh_every": 0,  # refit the predictor every R epochs; 0: never
        "measure_holdout_size": None,  # held-out images used to measure each subnet; null: the whole split
        "measure_calib_batches": 8,  # BN calibration batches per measured subnet
        # gp: the predictor also fits archs pseudo-labelled by a Gaussian process (predictors/teacher.py; ranks
        # better from few archs); none: the measured subnets alone. "none" is what docs/results.md's training
        # runs used; gp's effect on attentive sampling is not measured yet.
        "predictor_teacher": "none",
    },
    "eval": {
        "every_epochs": 1,  # 0: no per-epoch validation
        "calib_batches": 64,  # BN recalibration batches (of data.batch_size training images)
        "holdout_size": None,  # held-out images for per-epoch validation; null: the whole split
        "num_middle": 3,  # fixed archs between min and max (FLOPs quantiles), validated each epoch
        "test_at_end": True,  # test-split top-1 of max and min at the end: reported, never used to choose
    },
    "checkpoint": {
        "every_steps": 0,  # also write last.pt every S optimizer steps; 0: only at epoch ends
        "keep": 3,  # per-epoch files epoch_NNNN.pt kept (newest); 0: only last.pt
    },
    "log": {
        "every_steps": 20,  # training metrics to metrics.jsonl / TensorBoard every N steps
        "tensorboard": True,
        "progress": True,  # tqdm bar per epoch on rank 0
    },
}

# Keys whose values come from a fixed set.
CHOICES: dict[str, tuple] = {
    "device": ("auto", "cpu", "cuda"),
    "dist_backend": ("auto", "gloo", "nccl"),
    "amp": ("none", "bf16", "fp16"),
    "channels_last": ("auto", True, False),
    "data.name": ("fashion_mnist", "cifar10", "imagefolder", "synthetic"),
    "data.augment": ("none", "basic", "autoaugment"),
    "train.sandwich_resolution": ("fixed", "random"),
    "sampler.name": ("uniform", "bestup", "worstup"),
    "sampler.scorer": ("predictor", "loss"),
    "sampler.predictor_teacher": ("gp", "none"),  # predictors.teacher.TEACHERS (not imported: it loads sklearn)
}

# Keys that may be null, with the type of their other values (the default's own type is used for the others).
NULLABLE_TYPES: dict[str, type] = {
    "resume": str,
    "num_threads": int,
    "data.image_size": int,
    "train.clip_grad_value": float,
    "train.drop_connect_last_stages": int,
    "train.max_steps_per_epoch": int,
    "sampler.predictor": str,
    "sampler.flops_step": float,
    "sampler.measure_holdout_size": int,
    "eval.holdout_size": int,
}

# Lower bounds of numeric keys (inclusive unless listed in _POSITIVE).
_MINIMUM: dict[str, float] = {
    "num_threads": 1,
    "data.batch_size": 1, "data.eval_batch_size": 1, "data.num_workers": 0, "data.image_size": 1,
    "data.synthetic_num_train": 2, "data.synthetic_num_test": 1,
    "optim.lr": 0, "optim.momentum": 0, "optim.weight_decay": 0,
    "sched.epochs": 1, "sched.warmup_epochs": 0, "sched.warmup_lr_init": 0, "sched.min_lr": 0,
    "train.num_subnets": 2, "train.label_smoothing": 0, "train.clip_grad_value": 0, "train.dropout": 0,
    "train.drop_connect": 0, "train.drop_connect_last_stages": 1, "train.max_steps_per_epoch": 1,
    "sampler.num_trials": 1, "sampler.flops_step": 0, "sampler.pool_size": 1, "sampler.warmup_epochs": 0,
    "sampler.num_measure": 2, "sampler.refresh_every": 0, "sampler.measure_holdout_size": 1,
    "sampler.measure_calib_batches": 1,
    "eval.every_epochs": 0, "eval.calib_batches": 1, "eval.holdout_size": 1, "eval.num_middle": 0,
    "checkpoint.every_steps": 0, "checkpoint.keep": 0, "log.every_steps": 1,
}
_POSITIVE = {"optim.lr", "sampler.flops_step", "train.clip_grad_value"}
_BELOW_ONE = {"train.label_smoothing", "train.dropout", "train.drop_connect", "optim.momentum"}


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it and what is allowed."""


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def valid_keys() -> list[str]:
    return sorted(flatten(DEFAULTS))


def _unknown_key_error(key: str, where: str) -> ConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(key, keys, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{where}: unknown config key '{key}'{hint}; valid keys: {', '.join(keys)}")


def _merge(base: dict[str, Any], update: dict[str, Any], where: str, prefix: str = "") -> None:
    """Merge `update` into `base` in place; keys must exist in `base` (sections stay sections)."""
    if not isinstance(update, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {update!r}")
    for k, v in update.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: config keys must be strings, got {k!r}")
        key = prefix + k
        if k not in base:
            raise _unknown_key_error(key, where)
        if isinstance(base[k], dict):
            _merge(base[k], v, where, key + ".")
        else:
            if isinstance(v, dict):
                raise ConfigError(f"{where}: '{key}' takes a value, not a mapping ({v!r})")
            base[k] = v


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.2' -> ('optim.lr', 0.2); the value is a YAML scalar or flow list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.2); "
                          f"valid keys: {', '.join(valid_keys())}")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse the value {raw!r} ({e})") from e
    return key, value


def _set_dotted(cfg: dict[str, Any], key: str, value: Any, where: str) -> None:
    parts = key.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown_key_error(key, where)
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                section = ", ".join(f"{key}.{k}" for k in node[part])
                raise ConfigError(f"{where}: '{key}' is a section; set one of its keys: {section}")
            node[part] = value
        else:
            node = node[part]


def _check_value(key: str, value: Any, default: Any) -> Any:
    """Type-check one flattened key; ints are accepted (and converted) where floats are expected."""
    if key in CHOICES:
        allowed = CHOICES[key]
        # `is` for booleans: 1 == True in Python, but channels_last=1 is not a valid spelling.
        if not any(value is a if isinstance(a, bool) or isinstance(value, bool) else value == a for a in allowed):
            shown = ", ".join("true" if a is True else "false" if a is False else str(a) for a in allowed)
            raise ConfigError(f"config key '{key}': {value!r} is not allowed; allowed: {shown}")
        return value
    if value is None:
        if default is None or key in NULLABLE_TYPES:
            return None
        raise ConfigError(f"config key '{key}' cannot be null (default {default!r})")
    expected = NULLABLE_TYPES.get(key, type(default))
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    elif expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    elif expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
        value = float(value)
    elif expected is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key '{key}' must be a non-empty string, got {value!r}")
    if key in _MINIMUM and isinstance(value, (int, float)):
        low = _MINIMUM[key]
        if value < low or (key in _POSITIVE and value <= low):
            bound = f"> {low:g}" if key in _POSITIVE else f">= {low:g}"
            raise ConfigError(f"config key '{key}' must be {bound}, got {value!r}")
        if key in _BELOW_ONE and value >= 1:
            raise ConfigError(f"config key '{key}' must be < 1, got {value!r}")
    return value


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every key of a full config (types, allowed values, bounds, cross-key rules). Returns it."""
    flat_defaults = flatten(DEFAULTS)
    flat = flatten(cfg)
    for key in flat:
        if key not in flat_defaults:
            raise _unknown_key_error(key, "config")
    for key, default in flat_defaults.items():
        if key not in flat:
            raise ConfigError(f"config key '{key}' is missing")
        _set_dotted(cfg, key, _check_value(key, flat[key], default), "config")

    s, sched, data = cfg["sampler"], cfg["sched"], cfg["data"]
    if sched["warmup_epochs"] >= sched["epochs"] and sched["warmup_epochs"] > 0:
        raise ConfigError(f"sched.warmup_epochs ({sched['warmup_epochs']}) must be < sched.epochs ({sched['epochs']})")
    if data["name"] == "imagefolder" and data["image_size"] is None:
        raise ConfigError("data.image_size is required when data.name is imagefolder (e.g. data.image_size=224)")
    if data["augment"] == "autoaugment" and data["name"] != "imagefolder":
        raise ConfigError(f"data.augment=autoaugment needs data.name=imagefolder; use basic or none for {data['name']}")
    if s["name"] != "uniform" and s["scorer"] == "predictor" and s["predictor"] is None:
        if s["warmup_epochs"] < 1:
            raise ConfigError("sampler.scorer=predictor without sampler.predictor needs sampler.warmup_epochs >= 1 "
                              "(uniform epochs before the subnets are measured and the predictor is fitted)")
        if s["warmup_epochs"] >= sched["epochs"]:
            raise ConfigError(f"sampler.warmup_epochs ({s['warmup_epochs']}) must be < sched.epochs "
                              f"({sched['epochs']}), or the predictor would never be used")
    if cfg["resume"] is not None and cfg["resume"] != "auto" and not Path(cfg["resume"]).is_file():
        raise ConfigError(f"resume: checkpoint file not found: {cfg['resume']} (use resume=auto or a file path)")
    if cfg["optim"]["nesterov"] and cfg["optim"]["momentum"] == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
    if cfg["amp"] == "fp16" and cfg["device"] == "cpu":
        raise ConfigError("amp=fp16 needs device=cuda; use amp=bf16 on cpu")
    return cfg


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (),
                updates: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults <- YAML file `path` <- `updates` (a dotted-key dict) <- `overrides` ('key=value' strings)."""
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        _merge(cfg, read_yaml(path), str(path))
    for key, value in (updates or {}).items():
        _set_dotted(cfg, key, value, "config")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(cfg, key, value, "override")
    return validate(cfg)


def dump_config(cfg: dict[str, Any]) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False)


def save_config(cfg: dict[str, Any], path: str | Path) -> None:
    """Write the resolved config as YAML, atomically (attentive.fileio)."""
    write_text_atomic(path, dump_config(cfg))


def diff_configs(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Flattened keys whose values differ: {key: (old, new)} (keys missing on one side count as None)."""
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
