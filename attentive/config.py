"""Training configuration: built-in defaults <- a YAML file <- ``key=value`` overrides (dotted keys for nested ones).

The schema is declared once, below: one frozen dataclass per section (`TrainConfig` is the top level), one field per
key. A field's annotation is its type (``X | None``: it may be null), its default the default, and its `key(...)`
spec the help text, the allowed values and the bounds. Everything else derives from it: the defaults, the list of
valid keys and the did-you-mean hints, validation, ``train.py --help`` (`describe_keys`) and the saved config's
layout. Allowed values are imported from the modules that own them (datasets and augmentations from
`attentive.data`, samplers from `attentive.sampling`, teachers from `attentive.predictor`, device names from
`attentive.distributed`); the choices only the config and the trainer use are named here (`AMP_MODES`, ...).

Values of overrides are parsed as YAML scalars (``yaml.safe_load``), so ``optim.lr=0.2``, ``amp=bf16``,
``resume=null`` and ``eval.calib_batches=8`` do what they look like. The resolved config is a plain nested dict
(JSON/YAML-able) in the schema's key order: it is saved beside the run (``config.yaml``) and inside every
checkpoint (``ckpt["config"]``).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import yaml

from .data import AUGMENTATIONS, DATASETS, DEFAULT_ROOT
from .distributed import DEVICES, is_device_name
from .fileio import write_text_atomic
from .predictor import DEFAULT_TEACHER, TEACHERS
from .sampling import SAMPLERS

# Choices that only the config and the trainer use; the trainer imports them from here.
DIST_BACKENDS = ("auto", "gloo", "nccl")
AMP_MODES = ("none", "bf16", "fp16")
CHANNELS_LAST = ("auto", True, False)
SANDWICH_RESOLUTIONS = ("fixed", "random", "random_min")
SANDWICH_KERNELS = ("fixed", "random_max")
SCORERS = ("predictor", "loss")


class ConfigError(ValueError):
    """A bad config file, key or value; the message names it and what is allowed."""


@dataclass(frozen=True)
class KeySpec:
    """What one config key accepts. `type` None: the choices alone decide (channels_last: a string or a bool)."""

    name: str  # dotted: "optim.lr"
    default: Any
    type: type | None
    nullable: bool
    help: str
    choices: tuple = ()  # the allowed values (shown in errors and --help)
    accepts: Callable[[Any], bool] | None = None  # a format check instead of membership in `choices` (device)
    min: float | None = None  # inclusive lower bound
    above: float | None = None  # exclusive lower bound
    below: float | None = None  # exclusive upper bound

    def describe(self) -> str:
        """'float > 0, or null' style summary of what the key takes."""
        if self.choices:
            kind = " | ".join(_show(c) for c in self.choices)
        else:
            kind = {bool: "true | false", int: "int", float: "float", str: "string"}[self.type]
            bounds = [f">= {self.min:g}" if self.min is not None else "",
                      f"> {self.above:g}" if self.above is not None else "",
                      f"< {self.below:g}" if self.below is not None else ""]
            kind = " ".join([kind, " and ".join(filter(None, bounds))]).strip()
        return kind + (", or null" if self.nullable else "")


def key(default: Any, help: str, *, choices: tuple = (), accepts: Callable[[Any], bool] | None = None,
        min: float | None = None, above: float | None = None, below: float | None = None) -> Any:
    """A schema field: its default plus the rest of its `KeySpec` (name, type and nullability come from the field)."""
    spec = {"help": help, "choices": tuple(choices), "accepts": accepts, "min": min, "above": above, "below": below}
    return field(default=default, metadata={"spec": spec})


def section(cls: type) -> Any:
    """A schema field holding a nested section."""
    return field(default_factory=cls)


# ---------------------------------------------------------------------------------------------------------------
# The schema. Field order is the order of the saved config.


@dataclass(frozen=True)
class DataConfig:
    name: str = key("fashion_mnist", "the dataset", choices=DATASETS)
    root: str = key(DEFAULT_ROOT, "where the dataset lives (imagefolder: root/train and root/val class folders)")
    image_size: int | None = key(None, "required for imagefolder; in-memory datasets use their native size", min=1)
    augment: str = key("basic", "training augmentation (autoaugment: imagefolder only)", choices=AUGMENTATIONS)
    holdout_fraction: float = key(0.1, "part of the training set held out for validation and predictor data")
    split_seed: int = key(0, "seeds the held-out split (and the in-memory augmentation)")
    batch_size: int = key(128, "per process; the global batch is batch_size * world_size", min=1)
    eval_batch_size: int = key(256, "batch size of validation, test and subnet measurement", min=1)
    num_workers: int = key(0, "DataLoader worker processes", min=0)
    synthetic_num_train: int = key(512, "training images of the synthetic dataset", min=2)
    synthetic_num_test: int = key(256, "test images of the synthetic dataset", min=1)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = key(0.1, "per 256 images: the learning rate used is lr * global_batch / 256", above=0)
    momentum: float = key(0.9, "SGD momentum", min=0, below=1)
    nesterov: bool = key(True, "Nesterov momentum (needs momentum > 0)")
    weight_decay: float = key(1.0e-5, "L2 weight decay", min=0)
    no_decay_bn_bias: bool = key(True, "no weight decay on BN parameters and biases (every 1-d parameter)")


@dataclass(frozen=True)
class SchedConfig:
    epochs: int = key(360, "training epochs", min=1)
    warmup_epochs: float = key(5.0, "(fractions allowed) linear warm-up from warmup_lr_init, then cosine to min_lr "
                                    "(timm, per step)", min=0)
    warmup_lr_init: float = key(0.0, "learning rate at the start of the warm-up", min=0)
    min_lr: float = key(0.0, "learning rate at the end of the cosine", min=0)


@dataclass(frozen=True)
class TrainLoopConfig:
    num_subnets: int = key(4, "sandwich rule: largest + (num_subnets - 2) sampled + smallest, per step", min=2)
    label_smoothing: float = key(0.1, "of the cross-entropy with the labels (the largest subnet's; every subnet's "
                                      "with inplace_distill=false)", min=0, below=1)
    inplace_distill: bool = key(True, "other subnets learn the largest one's soft targets (KL, AttentiveNAS); false: "
                                      "the labels (the demo: better on a 4-epoch schedule, docs/results.md)")
    clip_grad_value: float | None = key(1.0, "gradient clipping by value; null: no clipping", above=0)
    dropout: float = key(0.2, "largest subnet only", min=0, below=1)
    drop_connect: float = key(0.2, "largest subnet only", min=0, below=1)
    drop_connect_last_stages: int | None = key(2, "drop-connect on the blocks of the last N stages; null: all stages",
                                               min=1)
    max_steps_per_epoch: int | None = key(None, "cap on steps per epoch (quick runs); null: the whole training "
                                                "split", min=1)
    sandwich_resolution: str = key(
        "fixed", "fixed: the largest subnet at the largest resolution, the smallest at the smallest (AttentiveNAS); "
        "random: both at one resolution drawn per step (OFA's elastic resolution), so that wide nets at low "
        "resolution and narrow nets at high resolution are trained too; random_min: the largest subnet at the largest "
        "resolution (the distillation teacher stays at full strength), the smallest at a resolution drawn per step",
        choices=SANDWICH_RESOLUTIONS)
    sandwich_kernel: str = key(
        "fixed", "fixed: the largest subnet with the largest kernel in every stage (AttentiveNAS); random_max: its "
        "kernel size drawn per stage and step, so that wide nets with small kernels are trained too (with "
        "inplace_distill the teacher then changes from step to step)", choices=SANDWICH_KERNELS)
    # Progressive shrinking (OFA): a dimension turns elastic at its epoch; before it, every subnet of the step (the
    # smallest included) keeps the largest net's values there. OFA's order is kernel, then depth, then expand.
    elastic_kernel_from: int = key(0, "progressive shrinking: kernel sizes elastic from this epoch on, the largest "
                                      "before it (every subnet, the smallest included); 0: from the start", min=0)
    elastic_depth_from: int = key(0, "progressive shrinking: depths elastic from this epoch on", min=0)
    elastic_expand_from: int = key(0, "progressive shrinking: expand ratios elastic from this epoch on", min=0)
    elastic_width_from: int = key(0, "progressive shrinking: widths elastic from this epoch on", min=0)


# train.elastic_<name>_from -> the Arch field it holds at the largest value before that epoch.
ELASTIC_FIELDS = {"kernel": "kernel_size", "depth": "depth", "expand": "expand_ratio", "width": "width"}


@dataclass(frozen=True)
class SamplerConfig:
    name: str = key("uniform", "how the middle subnets of a step are drawn", choices=SAMPLERS)
    scorer: str = key("predictor", "bestup/worstup score: predictor (XGBoost predicted accuracy) | loss (minus the "
                                   "minibatch loss)", choices=SCORERS)
    num_trials: int = key(3, "k candidates per sampled subnet (bestup / worstup)", min=1)
    flops_step: float | None = key(None, "MFLOPs width of the FLOPs buckets; null: 25 for attentivenas, 1 for tiny",
                                   above=0)
    pool_size: int = key(1000000, "random archs behind the FLOPs prior (cached on disk by attentive.sampling)", min=1)
    predictor: str | None = key(None, "directory of a saved AccuracyPredictor; null: fit one during training")
    warmup_epochs: int = key(0, "uniform sampling for the first W epochs (predictor scorer: then measure and fit)",
                             min=0)
    num_measure: int = key(100, "N subnets measured on the held-out split to fit the predictor", min=2)
    refresh_every: int = key(0, "refit the predictor every R epochs; 0: never", min=0)
    measure_holdout_size: int | None = key(None, "held-out images used to measure each subnet; null: the whole split",
                                           min=1)
    measure_calib_batches: int = key(8, "BN calibration batches per measured subnet", min=1)
    predictor_teacher: str = key(
        DEFAULT_TEACHER, "gp: the predictor also fits archs pseudo-labelled by a Gaussian process "
        "(predictors/teacher.py; ranks better from few archs); none: the measured subnets alone (what "
        "docs/results.md's training runs used; gp's effect on attentive sampling is not measured yet)",
        choices=TEACHERS)


@dataclass(frozen=True)
class EvalConfig:
    every_epochs: int = key(1, "validate every N epochs; 0: no per-epoch validation", min=0)
    calib_batches: int = key(64, "BN recalibration batches (of data.batch_size training images)", min=1)
    holdout_size: int | None = key(None, "held-out images for per-epoch validation; null: the whole split", min=1)
    num_middle: int = key(3, "fixed archs between min and max (FLOPs quantiles), validated each epoch", min=0)
    test_at_end: bool = key(True, "test-split top-1 of max and min at the end: reported, never used to choose")


@dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int = key(0, "also write last.pt every S optimizer steps; 0: only at epoch ends", min=0)
    keep: int = key(3, "per-epoch files epoch_NNNN.pt kept (newest); 0: only last.pt", min=0)


@dataclass(frozen=True)
class LogConfig:
    every_steps: int = key(20, "training metrics to metrics.jsonl / TensorBoard every N steps", min=1)
    tensorboard: bool = key(True, "also write TensorBoard events under output_dir/tb")
    progress: bool = key(True, "tqdm bar per epoch on rank 0")


@dataclass(frozen=True)
class TrainConfig:
    """The whole training config (`train.py`)."""

    seed: int = key(0, "seeds model init, samplers, data order and augmentation; runs and resumes reproduce exactly")
    space: str = key("tiny", "a name in attentive/spaces or a path to a space YAML")
    output_dir: str = key("runs/default", "checkpoints, config.yaml, metrics.jsonl, tb/ and final.json go here")
    resume: str | None = key(None, "null: fresh run | auto: newest good checkpoint in output_dir (fresh if none) | "
                                   "a checkpoint path")
    device: str = key("auto", "auto: cuda when available", choices=DEVICES, accepts=is_device_name)
    dist_backend: str = key("auto", "auto: nccl on cuda, gloo on cpu; used only under torchrun",
                            choices=DIST_BACKENDS)
    amp: str = key("none", "bf16: autocast, cpu or cuda | fp16: autocast + GradScaler, cuda only", choices=AMP_MODES)
    num_threads: int | None = key(None, "torch intra-op threads per process; null: torch's default (torchrun sets 1)",
                                  min=1)
    channels_last: str | bool = key("auto", "auto: on for cpu, where it is ~2x faster for these nets",
                                    choices=CHANNELS_LAST)
    data: DataConfig = section(DataConfig)
    optim: OptimConfig = section(OptimConfig)
    sched: SchedConfig = section(SchedConfig)
    train: TrainLoopConfig = section(TrainLoopConfig)
    sampler: SamplerConfig = section(SamplerConfig)
    eval: EvalConfig = section(EvalConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)
    log: LogConfig = section(LogConfig)


# ---------------------------------------------------------------------------------------------------------------
# Derived from the schema.


def _spec_of(name: str, f: dataclasses.Field, hint: Any) -> KeySpec:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    nullable = type(None) in args
    value_types = [a for a in args if a is not type(None)]
    meta = f.metadata["spec"]
    value_type = value_types[0] if len(value_types) == 1 else None
    if value_type is None and not meta["choices"]:
        raise TypeError(f"config key {name}: a union type needs choices")
    if value_type not in (int, float) and any(meta[b] is not None for b in ("min", "above", "below")):
        raise TypeError(f"config key {name}: bounds need an int or float key")
    return KeySpec(name=name, default=f.default, type=value_type, nullable=nullable, **meta)


def _compile(cls: type, prefix: str = "") -> tuple[dict[str, KeySpec], list[str]]:
    """(every key's spec by dotted name, the dotted section names), in declaration order."""
    specs: dict[str, KeySpec] = {}
    sections: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            sections.append(name)
            inner, inner_sections = _compile(hints[f.name], name + ".")
            specs.update(inner)
            sections += inner_sections
        else:
            specs[name] = _spec_of(name, f, hints[f.name])
    return specs, sections


SCHEMA, SECTIONS = _compile(TrainConfig)


def defaults() -> dict[str, Any]:
    """The default config: a fresh nested dict (safe to modify)."""
    return dataclasses.asdict(TrainConfig())


DEFAULTS: dict[str, Any] = defaults()  # a copy for reading; load_config starts from a fresh `defaults()`


def flatten(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


def valid_keys() -> list[str]:
    return sorted(SCHEMA)


def describe_keys(width: int = 100) -> str:
    """Every key with its default, what it takes and what it does, by section: the epilog of ``train.py --help``."""
    lines = ["config keys (key=value overrides; dotted names for nested keys, the same nesting in YAML files):"]
    for spec in SCHEMA.values():
        lines.append(f"  {spec.name} = {_show(spec.default)}  ({spec.describe()})")
        lines += textwrap.wrap(spec.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)


def _show(value: Any) -> str:
    """A value as YAML spells it (true, false, null)."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def _unknown_key_error(name: str, where: str) -> ConfigError:
    keys = valid_keys()
    close = difflib.get_close_matches(name, keys + SECTIONS, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return ConfigError(f"{where}: unknown config key '{name}'{hint}; valid keys: {', '.join(keys)}")


def _merge(base: dict[str, Any], update: dict[str, Any], where: str, prefix: str = "") -> None:
    """Merge `update` into `base` in place; keys must exist in `base` (sections stay sections)."""
    if not isinstance(update, dict):
        raise ConfigError(f"{where}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {update!r}")
    for k, v in update.items():
        if not isinstance(k, str):
            raise ConfigError(f"{where}: config keys must be strings, got {k!r}")
        name = prefix + k
        if k not in base:
            raise _unknown_key_error(name, where)
        if isinstance(base[k], dict):
            _merge(base[k], v, where, name + ".")
        else:
            if isinstance(v, dict):
                raise ConfigError(f"{where}: '{name}' takes a value, not a mapping ({v!r})")
            base[k] = v


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.2' -> ('optim.lr', 0.2); the value is a YAML scalar or flow list."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. optim.lr=0.2); "
                          f"valid keys: {', '.join(valid_keys())}")
    name, raw = text.split("=", 1)
    name = name.strip()
    if not name:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: cannot parse the value {raw!r} ({e})") from e
    return name, value


def _set_dotted(cfg: dict[str, Any], name: str, value: Any, where: str) -> None:
    parts = name.split(".")
    node: Any = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            raise _unknown_key_error(name, where)
        if i == len(parts) - 1:
            if isinstance(node[part], dict):
                keys = ", ".join(f"{name}.{k}" for k in node[part])
                raise ConfigError(f"{where}: '{name}' is a section; set one of its keys: {keys}")
            if isinstance(value, dict):
                raise ConfigError(f"{where}: '{name}' takes a value, not a mapping ({value!r})")
            node[part] = value
        else:
            node = node[part]


def _check_value(spec: KeySpec, value: Any) -> Any:
    """One key's value, checked against its spec; ints are accepted (and converted) where floats are expected."""
    name = spec.name
    if spec.choices:
        if spec.accepts is not None:
            ok = spec.accepts(value)
        else:  # `is` for booleans: 1 == True in Python, but channels_last=1 is not a valid spelling
            ok = any(value is c if isinstance(c, bool) or isinstance(value, bool) else value == c
                     for c in spec.choices)
        if not ok:
            shown = ", ".join(_show(c) for c in spec.choices)
            raise ConfigError(f"config key '{name}': {value!r} is not allowed; allowed: {shown}")
        return value
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"config key '{name}' cannot be null (default {spec.default!r})")
    if spec.type is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{name}' must be true or false, got {value!r}")
    elif spec.type is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{name}' must be an integer, got {value!r}")
    elif spec.type is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string; it means the number
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"config key '{name}' must be a finite number, got {value!r}")
        value = float(value)
    elif spec.type is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key '{name}' must be a non-empty string, got {value!r}")
    if spec.min is not None and value < spec.min:
        raise ConfigError(f"config key '{name}' must be >= {spec.min:g}, got {value!r}")
    if spec.above is not None and value <= spec.above:
        raise ConfigError(f"config key '{name}' must be > {spec.above:g}, got {value!r}")
    if spec.below is not None and value >= spec.below:
        raise ConfigError(f"config key '{name}' must be < {spec.below:g}, got {value!r}")
    return value


def _check_cross_keys(cfg: dict[str, Any]) -> None:
    """Rules that involve more than one key (each key's own value is already checked)."""
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
    t = cfg["train"]
    for name in ELASTIC_FIELDS:
        if t[f"elastic_{name}_from"] >= sched["epochs"]:
            raise ConfigError(f"train.elastic_{name}_from ({t[f'elastic_{name}_from']}) must be < sched.epochs "
                              f"({sched['epochs']}), or that dimension would never be trained elastic")
    last_held = max(t[f"elastic_{name}_from"] for name in ELASTIC_FIELDS)
    if s["name"] != "uniform" and last_held > 0:
        # The attentive sampler draws from FLOPs buckets of the whole space: a candidate with dimensions held at the
        # largest value would miss its bucket. So it starts only once every dimension is elastic.
        start = 0 if (s["scorer"] == "predictor" and s["predictor"] is not None) else s["warmup_epochs"]
        if start < last_held:
            raise ConfigError(f"sampler.name={s['name']} starts at epoch {start} (sampler.warmup_epochs, 0 with a "
                              f"given sampler.predictor), but train.elastic_*_from holds dimensions at their largest "
                              f"value until epoch {last_held}: set sampler.warmup_epochs >= {last_held}, or "
                              f"sampler.name=uniform")
    if cfg["resume"] is not None and cfg["resume"] != "auto" and not Path(cfg["resume"]).is_file():
        raise ConfigError(f"resume: checkpoint file not found: {cfg['resume']} (use resume=auto or a file path)")
    if cfg["optim"]["nesterov"] and cfg["optim"]["momentum"] == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0")
    if cfg["amp"] == "fp16" and cfg["device"] == "cpu":
        raise ConfigError("amp=fp16 needs device=cuda; use amp=bf16 on cpu")


def validate(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check every key of a full config (types, allowed values, bounds, cross-key rules). Returns it."""
    flat = flatten(cfg)
    for name in flat:
        if name not in SCHEMA:
            raise _unknown_key_error(name, "config")
    for name, spec in SCHEMA.items():
        if name not in flat:
            raise ConfigError(f"config key '{name}' is missing")
        _set_dotted(cfg, name, _check_value(spec, flat[name]), "config")
    _check_cross_keys(cfg)
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
    cfg = defaults()
    if path is not None:
        _merge(cfg, read_yaml(path), str(path))
    for name, value in (updates or {}).items():
        _set_dotted(cfg, name, value, "config")
    for text in overrides:
        name, value = parse_override(text)
        _set_dotted(cfg, name, value, "override")
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
