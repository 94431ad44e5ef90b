"""Training config: one declared schema (defaults, types, choices, bounds), YAML <- key=value overrides, validation
messages, the saved config, CLI usage errors."""
import inspect
import re
from pathlib import Path

import pytest
import yaml

import train
from attentive import data, distributed, predictor, sampling
from attentive.config import (
    AMP_MODES, CHANNELS_LAST, DEFAULTS, DIST_BACKENDS, SANDWICH_KERNELS, SANDWICH_RESOLUTIONS, SCHEMA, SCORERS,
    SECTIONS, ConfigError, defaults, describe_keys, diff_configs, dump_config, flatten, load_config, parse_override,
    save_config, validate, valid_keys,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"

# The defaults, key by key in the saved order, with their types: runs, checkpoints (ckpt["config"]) and
# diff_configs on old checkpoints rely on this layout, so a change here must be deliberate.
EXPECTED_DEFAULTS = {
    "seed": 0, "space": "tiny", "output_dir": "runs/default", "resume": None, "device": "auto",
    "dist_backend": "auto", "amp": "none", "num_threads": None, "channels_last": "auto",
    "data": {"name": "fashion_mnist", "root": "./data", "image_size": None, "augment": "basic",
             "holdout_fraction": 0.1, "split_seed": 0, "batch_size": 128, "eval_batch_size": 256, "num_workers": 0,
             "synthetic_num_train": 512, "synthetic_num_test": 256},
    "optim": {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1.0e-5, "no_decay_bn_bias": True},
    "sched": {"epochs": 360, "warmup_epochs": 5.0, "warmup_lr_init": 0.0, "min_lr": 0.0},
    "train": {"num_subnets": 4, "label_smoothing": 0.1, "inplace_distill": True, "clip_grad_value": 1.0,
              "dropout": 0.2, "drop_connect": 0.2, "drop_connect_last_stages": 2, "max_steps_per_epoch": None,
              "sandwich_resolution": "fixed", "sandwich_kernel": "fixed", "elastic_kernel_from": 0,
              "elastic_depth_from": 0, "elastic_expand_from": 0, "elastic_width_from": 0},
    "sampler": {"name": "uniform", "scorer": "predictor", "num_trials": 3, "flops_step": None, "pool_size": 1000000,
                "predictor": None, "warmup_epochs": 0, "num_measure": 100, "refresh_every": 0,
                "measure_holdout_size": None, "measure_calib_batches": 8, "predictor_teacher": "none"},
    "eval": {"every_epochs": 1, "calib_batches": 64, "holdout_size": None, "num_middle": 3, "test_at_end": True},
    "checkpoint": {"every_steps": 0, "keep": 3},
    "log": {"every_steps": 20, "tensorboard": True, "progress": True},
}


def _typed(cfg):
    return [(k, type(v), v) for k, v in flatten(cfg).items()]


def test_defaults_are_the_recorded_layout_values_and_types():
    for cfg in (load_config(None), defaults(), DEFAULTS):
        assert _typed(cfg) == _typed(EXPECTED_DEFAULTS)  # same keys, same order, same values, same types
    assert dump_config(load_config(None)).splitlines()[:3] == ["seed: 0", "space: tiny", "output_dir: runs/default"]
    assert list(SCHEMA) == list(flatten(EXPECTED_DEFAULTS)) and valid_keys() == sorted(SCHEMA)
    assert SECTIONS == ["data", "optim", "sched", "train", "sampler", "eval", "checkpoint", "log"]
    defaults()["optim"]["lr"] = 5.0  # a fresh dict each time: changing one changes nothing else
    assert load_config(None)["optim"]["lr"] == 0.1


def test_choices_come_from_the_modules_that_own_them():
    assert SCHEMA["data.name"].choices == data.DATASETS
    assert SCHEMA["data.augment"].choices == data.AUGMENTATIONS
    assert SCHEMA["sampler.name"].choices == sampling.SAMPLERS
    assert SCHEMA["sampler.predictor_teacher"].choices == predictor.TEACHERS
    assert SCHEMA["sampler.predictor_teacher"].default == predictor.DEFAULT_TEACHER == "none"
    assert SCHEMA["device"].choices == distributed.DEVICES
    assert SCHEMA["amp"].choices == AMP_MODES and SCHEMA["dist_backend"].choices == DIST_BACKENDS
    assert SCHEMA["channels_last"].choices == CHANNELS_LAST and SCHEMA["sampler.scorer"].choices == SCORERS
    assert SCHEMA["train.sandwich_resolution"].choices == SANDWICH_RESOLUTIONS
    assert SCHEMA["train.sandwich_kernel"].choices == SANDWICH_KERNELS == ("fixed", "random_max")


def test_split_defaults_agree_with_build_datasets():
    """datasets_from_config fills keys missing from an old checkpoint's config with build_datasets' defaults."""
    params = inspect.signature(data.build_datasets).parameters
    assert DEFAULTS["data"]["root"] == data.DEFAULT_ROOT
    for k in set(data.SPLIT_KEYS) - {"name", "root"}:
        assert DEFAULTS["data"][k] == params[k].default, k


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert list(flatten(cfg)) == list(SCHEMA)
    resolved = flatten(cfg)
    for k, v in flatten(yaml.safe_load(path.read_text())).items():
        assert resolved[k] == v, k  # every value of the file is taken as written


def test_imagenet_recipe_values():
    cfg = load_config(CONFIGS / "imagenet_attentivenas.yaml")
    o, s, t = cfg["optim"], cfg["sched"], cfg["train"]
    assert (o["lr"], o["momentum"], o["nesterov"], o["weight_decay"], o["no_decay_bn_bias"]) == (0.1, 0.9, True, 1e-5, True)
    assert (s["epochs"], s["warmup_epochs"], s["min_lr"]) == (360, 5, 0.0)
    assert (t["num_subnets"], t["label_smoothing"], t["clip_grad_value"]) == (4, 0.1, 1.0)
    assert (t["dropout"], t["drop_connect"], t["drop_connect_last_stages"]) == (0.2, 0.2, 2)
    assert cfg["eval"]["calib_batches"] == 64
    assert cfg["data"]["augment"] == "autoaugment" and cfg["data"]["name"] == "imagefolder"
    assert cfg["space"] == "attentivenas"
    assert cfg["sampler"]["pool_size"] == 5_000_000  # sized for the schedule (docs/results.md: pool repeats)


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.3\nsched:\n  epochs: 7\n")
    cfg = load_config(path, ["optim.lr=0.2", "train.clip_grad_value=null", "amp=bf16", "channels_last=false",
                             "data.name=synthetic"])
    assert cfg["optim"]["lr"] == 0.2 and cfg["sched"]["epochs"] == 7
    assert cfg["train"]["clip_grad_value"] is None
    assert cfg["amp"] == "bf16" and cfg["channels_last"] is False
    assert cfg["optim"]["momentum"] == DEFAULTS["optim"]["momentum"]  # untouched defaults stay
    assert load_config(path, updates={"sched.epochs": 9}, overrides=["sched.epochs=8"])["sched"]["epochs"] == 8


def test_ints_become_floats_where_floats_are_expected():
    cfg = load_config(None, ["optim.lr=1", "sched.warmup_epochs=2", "sampler.flops_step=3"])
    assert [type(v) for v in (cfg["optim"]["lr"], cfg["sched"]["warmup_epochs"], cfg["sampler"]["flops_step"])] \
        == [float] * 3
    assert type(load_config(None, ["sampler.warmup_epochs=0"])["sampler"]["warmup_epochs"]) is int


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.learning_rate=0.1"])
    msg = str(e.value)
    assert "override: unknown config key 'optim.learning_rate'" in msg
    assert "optim.lr" in msg and "sched.epochs" in msg  # the valid keys, all of them
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  n_subnets: 3\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown config key 'train\.n_subnets' \(did you mean "
                                          r"train\.num_subnets[,?]"):
        load_config(path)


def test_unknown_section_names_the_close_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer' \(did you mean optim[,?]"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown config key 'samplr\.name' \(did you mean sampler\.name"):
        load_config(None, ["samplr.name=bestup"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lr\.x'"):
        load_config(None, ["optim.lr.x=1"])
    path.write_text("optim: 0.1\n")
    with pytest.raises(ConfigError, match=r"'optim' must be a mapping, got 0.1"):
        load_config(path)
    path.write_text("seed:\n  a: 1\n")
    with pytest.raises(ConfigError, match=r"'seed' takes a value, not a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"'seed' takes a value, not a mapping"):
        load_config(None, ["seed={a: 1}"])
    path.write_text("- seed\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)


@pytest.mark.parametrize("override, fragment", [
    # a value outside the allowed set: the key, the value and the allowed list
    ("amp=fp32", r"config key 'amp': 'fp32' is not allowed; allowed: none, bf16, fp16"),
    ("dist_backend=mpi", "allowed: auto, gloo, nccl"),
    ("device=gpu", "'device': 'gpu' is not allowed; allowed: auto, cpu, cuda, cuda:N"),
    ("device=cuda:x", "allowed: auto, cpu, cuda, cuda:N"),
    ("device=null", "allowed: auto, cpu, cuda, cuda:N"),
    ("data.name=mnist", "allowed: cifar10, fashion_mnist, imagefolder, synthetic"),
    ("data.augment=mixup", "allowed: none, basic, autoaugment"),
    ("sampler.name=random", "allowed: uniform, bestup, worstup"),
    ("sampler.scorer=flops", "allowed: predictor, loss"),
    ("sampler.predictor_teacher=forest", "allowed: gp, none"),
    ("train.sandwich_resolution=sometimes", "allowed: fixed, random"),
    ("train.sandwich_kernel=random", "allowed: fixed, random_max"),
    ("channels_last=1", "'channels_last': 1 is not allowed; allowed: auto, true, false"),
    # bounds: inclusive minimum, exclusive lower bound, exclusive upper bound
    ("train.num_subnets=1", "'train.num_subnets' must be >= 2, got 1"),
    ("data.num_workers=-1", "must be >= 0, got -1"),
    ("num_threads=0", "'num_threads' must be >= 1, got 0"),
    ("optim.lr=0", "'optim.lr' must be > 0, got 0"),
    ("sampler.flops_step=0", "'sampler.flops_step' must be > 0"),
    ("train.clip_grad_value=0", "'train.clip_grad_value' must be > 0"),
    ("train.dropout=1.0", "'train.dropout' must be < 1, got 1.0"),
    ("optim.momentum=1", "'optim.momentum' must be < 1"),
    ("train.label_smoothing=-0.1", "'train.label_smoothing' must be >= 0"),
    # types
    ("sched.epochs=two", "'sched.epochs' must be an integer, got 'two'"),
    ("sched.epochs=2.5", "must be an integer, got 2.5"),
    ("seed=true", "'seed' must be an integer, got True"),
    ("optim.lr=abc", "'optim.lr' must be a finite number, got 'abc'"),
    ("optim.lr=.nan", "must be a finite number"),
    ("optim.weight_decay=.inf", "must be a finite number"),
    ("optim.lr=true", "must be a finite number, got True"),
    ("optim.nesterov=yes please", "'optim.nesterov' must be true or false, got 'yes please'"),
    ("log.progress=1", "must be true or false, got 1"),
    ("space=", "'space' must be a non-empty string, got ''"),
    ("output_dir=3", "'output_dir' must be a non-empty string, got 3"),
    ("data.root=[a]", "must be a non-empty string"),
    # null where the key has no null
    ("sched.epochs=null", "'sched.epochs' cannot be null (default 360)"),
    ("space=null", "'space' cannot be null"),
    # the shape of an override
    ("optim=0.1", "'optim' is a section; set one of its keys: optim.lr, optim.momentum"),
    ("seed", "key=value"),
    ("=3", "empty key"),
    ("optim.lr=[1", "cannot parse the value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, [override])


@pytest.mark.parametrize("override", [
    "device=cpu", "device=cuda", "device=cuda:0", "device=cuda:3", "device=auto",  # format only: CUDA not probed
    "channels_last=true", "channels_last=auto", "num_threads=1", "num_threads=null", "data.num_workers=0",
    "train.num_subnets=2", "optim.lr=0.000001", "train.dropout=0.999", "train.label_smoothing=0",
    "optim.nesterov=false", "train.clip_grad_value=null", "train.drop_connect_last_stages=null", "sampler.predictor=some/dir",
    "resume=auto", "sampler.predictor_teacher=gp", "eval.holdout_size=1",
])
def test_allowed_values_pass_as_given(override):
    key, value = parse_override(override)
    got = flatten(load_config(None, [override]))[key]
    expected_type = float if SCHEMA[key].type is float and value is not None else type(value)
    assert got == value and type(got) is expected_type


def test_nullable_keys_are_the_declared_ones():
    nullable = sorted(k for k, s in SCHEMA.items() if s.nullable)
    assert nullable == sorted([
        "resume", "num_threads", "data.image_size", "train.clip_grad_value", "train.drop_connect_last_stages",
        "train.max_steps_per_epoch", "sampler.predictor", "sampler.flops_step", "sampler.measure_holdout_size",
        "eval.holdout_size"])
    for k in nullable:
        assert flatten(load_config(None, [f"{k}=null"]))[k] is None


def test_every_key_checks_its_type():
    wrong = {bool: "maybe", int: "x", float: "x", str: "[1]"}
    for k, s in SCHEMA.items():
        if s.choices:
            continue
        with pytest.raises(ConfigError, match=f"config key '{k}' must be"):
            load_config(None, [f"{k}={wrong[s.type]}"])


def test_validate_refuses_missing_and_extra_keys():
    cfg = load_config(None)
    del cfg["log"]["progress"]
    with pytest.raises(ConfigError, match="config key 'log.progress' is missing"):
        validate(cfg)
    cfg = load_config(None)
    cfg["log"]["colour"] = True
    with pytest.raises(ConfigError, match="unknown config key 'log.colour'"):
        validate(cfg)


def test_cross_key_rules():
    with pytest.raises(ConfigError, match=r"sched\.warmup_epochs \(5\.0\) must be < sched\.epochs \(5\)"):
        load_config(None, ["sched.epochs=5"])
    load_config(None, ["sched.epochs=1", "sched.warmup_epochs=0"])
    with pytest.raises(ConfigError, match="warmup_epochs >= 1"):
        load_config(None, ["sampler.name=bestup", "sampler.scorer=predictor", "sampler.warmup_epochs=0"])
    load_config(None, ["sampler.name=bestup", "sampler.scorer=loss", "sampler.warmup_epochs=0"])
    load_config(None, ["sampler.name=bestup", "sampler.predictor=some/dir", "sampler.warmup_epochs=0"])
    with pytest.raises(ConfigError, match="predictor would never be used"):
        load_config(None, ["sampler.name=worstup", "sampler.warmup_epochs=400"])
    with pytest.raises(ConfigError, match="image_size is required"):
        load_config(None, ["data.name=imagefolder"])
    load_config(None, ["data.name=imagefolder", "data.image_size=224", "data.augment=autoaugment"])
    with pytest.raises(ConfigError, match="autoaugment needs data.name=imagefolder"):
        load_config(None, ["data.augment=autoaugment"])
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        load_config(None, ["resume=/nonexistent/last.pt"])
    with pytest.raises(ConfigError, match="nesterov=true needs optim.momentum > 0"):
        load_config(None, ["optim.momentum=0"])
    with pytest.raises(ConfigError, match="amp=fp16 needs device=cuda"):
        load_config(None, ["amp=fp16", "device=cpu"])
    load_config(None, ["amp=fp16", "device=cuda:1"])


def test_parse_override_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("x=null") == ("x", None)
    assert parse_override("p=runs/a=b") == ("p", "runs/a=b")
    assert parse_override(" optim.lr =0.2") == ("optim.lr", 0.2)


def test_save_roundtrip_and_diff(tmp_path):
    cfg = load_config(None, ["optim.lr=0.25"])
    save_config(cfg, tmp_path / "config.yaml")
    assert (tmp_path / "config.yaml").read_text() == dump_config(cfg)
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert diff_configs(cfg, load_config(None, ["optim.lr=0.5"])) == {"optim.lr": (0.25, 0.5)}
    old = load_config(None)  # a checkpoint written before a key existed: the key counts as None there
    del old["sampler"]["predictor_teacher"]
    assert diff_configs(old, load_config(None)) == {"sampler.predictor_teacher": (None, "none")}


def test_describe_keys_covers_every_key():
    text = describe_keys()
    for k, s in SCHEMA.items():
        assert f"  {k} = " in text, k
        assert s.help.split()[0] in text
    assert "  optim.lr = 0.1  (float > 0)" in text
    assert "  train.dropout = 0.2  (float >= 0 and < 1)" in text
    assert "  num_threads = null  (int >= 1, or null)" in text
    assert "  channels_last = auto  (auto | true | false)" in text
    assert "  device = auto  (auto | cpu | cuda | cuda:N)" in text


def test_cli_help_lists_the_keys(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for k in SCHEMA:
        assert k in out


def test_cli_usage_errors_exit_2(capsys):
    assert train.main(["--config", str(CONFIGS / "smoke.yaml"), "optim.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.nope" in err and "valid keys" in err
    assert train.main(["--config", "/nonexistent.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert train.main(["amp=fp32"]) == 2
    assert "allowed: none, bf16, fp16" in capsys.readouterr().err


def test_cli_print_config(capsys):
    assert train.main(["-c", str(CONFIGS / "smoke.yaml"), "--print-config", "sched.epochs=9"]) == 0
    out = capsys.readouterr().out
    printed = yaml.safe_load(out)
    assert printed["sched"]["epochs"] == 9 and printed["space"] == "tiny"
    assert out == dump_config(load_config(CONFIGS / "smoke.yaml", ["sched.epochs=9"]))


def test_float_keys_take_exponent_notation_without_a_dot():
    """YAML 1.1 reads 1e-4 as a string; for a float key it is the number (override and file alike)."""
    cfg = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=5e-5"])
    assert cfg["optim"]["lr"] == 1e-3 and cfg["optim"]["weight_decay"] == 5e-5
    with pytest.raises(ConfigError, match="finite number"):
        load_config(None, ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="finite number"):
        load_config(None, ["optim.lr=nan"])
