"""Training config: YAML defaults, dotted key=value overrides, validation messages, CLI usage errors."""
from pathlib import Path

import pytest
import yaml

import train
from attentive.config import DEFAULTS, ConfigError, diff_configs, flatten, load_config, parse_override, save_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "train"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert set(flatten(cfg)) == set(flatten(DEFAULTS))


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


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 0.3\nsched:\n  epochs: 7\n")
    cfg = load_config(path, ["optim.lr=0.2", "train.clip_grad_value=null", "amp=bf16", "channels_last=false",
                             "data.name=synthetic"])
    assert cfg["optim"]["lr"] == 0.2 and cfg["sched"]["epochs"] == 7
    assert cfg["train"]["clip_grad_value"] is None
    assert cfg["amp"] == "bf16" and cfg["channels_last"] is False
    assert cfg["optim"]["momentum"] == DEFAULTS["optim"]["momentum"]  # untouched defaults stay
    assert isinstance(load_config(None, ["optim.lr=1"])["optim"]["lr"], float)  # ints accepted for floats


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.learning_rate=0.1"])
    msg = str(e.value)
    assert "optim.learning_rate" in msg and "optim.lr" in msg and "sched.epochs" in msg
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  n_subnets: 3\n")
    with pytest.raises(ConfigError, match=r"train\.n_subnets.*did you mean train\.num_subnets"):
        load_config(path)


@pytest.mark.parametrize("override, fragment", [
    ("amp=fp32", "allowed: none, bf16, fp16"),
    ("sampler.name=random", "allowed: uniform, bestup, worstup"),
    ("sampler.predictor_teacher=forest", "allowed: gp, none"),
    ("train.sandwich_resolution=sometimes", "allowed: fixed, random"),
    ("channels_last=1", "allowed: auto, true, false"),
    ("train.num_subnets=1", "must be >= 2"),
    ("optim.lr=0", "must be > 0"),
    ("train.dropout=1.0", "must be < 1"),
    ("sched.epochs=two", "must be an integer"),
    ("optim.nesterov=yes please", "true or false"),
    ("optim=0.1", "is a section"),
    ("seed", "key=value"),
])
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_cross_key_rules():
    with pytest.raises(ConfigError, match="warmup_epochs >= 1"):
        load_config(None, ["sampler.name=bestup", "sampler.scorer=predictor", "sampler.warmup_epochs=0"])
    load_config(None, ["sampler.name=bestup", "sampler.scorer=loss", "sampler.warmup_epochs=0"])
    with pytest.raises(ConfigError, match="image_size is required"):
        load_config(None, ["data.name=imagefolder"])
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        load_config(None, ["resume=/nonexistent/last.pt"])


def test_parse_override_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("x=null") == ("x", None)
    assert parse_override("p=runs/a=b") == ("p", "runs/a=b")


def test_save_roundtrip_and_diff(tmp_path):
    cfg = load_config(None, ["optim.lr=0.25"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert diff_configs(cfg, load_config(None, ["optim.lr=0.5"])) == {"optim.lr": (0.25, 0.5)}


def test_cli_usage_errors_exit_2(capsys):
    assert train.main(["--config", str(CONFIGS / "smoke.yaml"), "optim.nope=1"]) == 2
    err = capsys.readouterr().err
    assert "optim.nope" in err and "valid keys" in err
    assert train.main(["--config", "/nonexistent.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_cli_print_config(capsys):
    assert train.main(["-c", str(CONFIGS / "smoke.yaml"), "--print-config", "sched.epochs=9"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["sched"]["epochs"] == 9 and printed["space"] == "tiny"
