"""Every reader refuses a truncated, a foreign and a tampered input the same way.

CLIs (train.py --resume, search.py --checkpoint/--predictor/--export-arch, python -m predictors.retrain
--checkpoint, bench/probe.py --checkpoint): exit status 2 and a one-line error naming the file, no traceback.
The library (`attentive.load_subnet`): `attentive.fileio.BadFileError` naming the file. The CLIs run in-process
through their `main(argv)`; each is imported inside its test, so that one CLI that does not import does not hide
the others' results.
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from attentive import load_space, load_subnet
from attentive.export import export_subnet
from attentive.fileio import BadFileError
from conftest import tiny_training_checkpoint

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs" / "train" / "smoke.yaml"
KINDS = ("truncated", "foreign", "tampered")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- the bad inputs -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A tiny supernet checkpoint, a predictor fitted for its space, an arch file and an export of that arch."""
    from predictors.xgb import AccuracyPredictor

    root = tmp_path_factory.mktemp("good")
    checkpoint, supernet = tiny_training_checkpoint(root / "last.pt")
    space = supernet.space
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(8)]
    predictor_dir = root / "predictor"
    AccuracyPredictor.fit(space, archs, np.linspace(50, 80, len(archs)), seed=0).save(predictor_dir)
    arch = space.min_arch()
    arch_file = root / "arch.json"
    arch_file.write_text(json.dumps(arch.to_dict()))
    calib = [torch.randn(8, 3, 28, 28, generator=torch.Generator().manual_seed(0))]
    export_dir = root / "subnet"
    export_subnet(export_dir, supernet.eval(), arch, calib, onnx=False)
    return {"checkpoint": checkpoint, "predictor": predictor_dir, "arch": arch_file, "export": export_dir}


def truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    return path


def bad_checkpoint(good_path: Path, kind: str, tmp_path: Path) -> Path:
    """truncated: the first half of the file; foreign: a torch file that is not a supernet checkpoint; tampered:
    the space was edited after saving, its recorded hash no longer matches."""
    path = tmp_path / f"{kind}.pt"
    shutil.copy(good_path, path)
    if kind == "truncated":
        truncate(path)
    elif kind == "foreign":
        torch.save({"state_dict": {"weight": torch.zeros(3)}, "epoch": 1}, path)
    else:
        ckpt = torch.load(path, weights_only=True)
        ckpt["space"]["name"] = "tiny_edited"
        torch.save(ckpt, path)
    return path


def bad_predictor(good_dir: Path, kind: str, tmp_path: Path) -> Path:
    """The file of the predictor directory that is bad: truncated model.json; a foreign meta.json; a model.json
    edited after saving (valid JSON, no longer the model the metadata records)."""
    directory = tmp_path / f"predictor_{kind}"
    shutil.copytree(good_dir, directory)
    if kind == "truncated":
        return truncate(directory / "model.json")
    if kind == "foreign":
        (directory / "meta.json").write_text(json.dumps({"format": "sklearn.pickle", "version": 3}))
        return directory / "meta.json"
    model = json.loads((directory / "model.json").read_text())
    (directory / "model.json").write_text(json.dumps(model, indent=1))
    return directory / "model.json"


def bad_arch(good_file: Path, kind: str, tmp_path: Path) -> Path:
    """truncated JSON; a foreign JSON file (an export's metrics, not an arch); an arch edited outside the space."""
    path = tmp_path / f"arch_{kind}.json"
    shutil.copy(good_file, path)
    if kind == "truncated":
        truncate(path)
    elif kind == "foreign":
        path.write_text(json.dumps({"format": "attentive.subnet", "mflops": 3.2, "test_top1": 70.1}))
    else:
        arch = json.loads(path.read_text())
        arch["width"][1] = 999
        path.write_text(json.dumps(arch))
    return path


# ---- the CLIs -------------------------------------------------------------------------------------------------
def run_cli(main, argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's parser.error
        code = e.code
    return code, capsys.readouterr().err


def assert_refused(code: int, err: str, path: Path) -> None:
    assert code == 2, err
    assert str(path) in err, err
    assert "error:" in err and "Traceback" not in err, err


# One step of the smoke config: the resume test needs a checkpoint with everything train.py writes, so that only
# the damage can be what is refused.
ONE_STEP = ["-c", SMOKE, "sampler.name=uniform", "sched.epochs=1", "sched.warmup_epochs=0",
            "train.max_steps_per_epoch=1"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    import train

    run_dir = tmp_path_factory.mktemp("trained") / "run"
    assert train.main([str(a) for a in [*ONE_STEP, "--output-dir", run_dir]]) == 0
    return run_dir / "last.pt"


@pytest.mark.parametrize("kind", KINDS)
def test_train_resume(trained_checkpoint, kind, tmp_path, capsys):
    import train

    bad = bad_checkpoint(trained_checkpoint, kind, tmp_path)
    argv = [*ONE_STEP, "--output-dir", tmp_path / "run", "--resume", bad]
    assert_refused(*run_cli(train.main, argv, capsys), bad)


@pytest.mark.parametrize("kind", KINDS)
def test_search_checkpoint(good, kind, tmp_path, capsys):
    import search

    bad = bad_checkpoint(good["checkpoint"], kind, tmp_path)
    argv = ["--checkpoint", bad, "--budgets", "5", "--out", tmp_path / "out", "--predictor", good["predictor"]]
    assert_refused(*run_cli(search.main, argv, capsys), bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_search_predictor(good, kind, tmp_path, capsys):
    import search

    bad = bad_predictor(good["predictor"], kind, tmp_path)
    argv = ["--checkpoint", good["checkpoint"], "--budgets", "5", "--out", tmp_path / "out", "--predictor",
            bad.parent]
    assert_refused(*run_cli(search.main, argv, capsys), bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_search_export_arch(good, kind, tmp_path, capsys):
    import search

    bad = bad_arch(good["arch"], kind, tmp_path)
    argv = ["--checkpoint", good["checkpoint"], "--export-arch", bad, "--max-mflops", "100", "--out",
            tmp_path / "out"]
    assert_refused(*run_cli(search.main, argv, capsys), bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", KINDS)
def test_retrain_checkpoint(good, kind, tmp_path, capsys):
    from predictors import retrain

    bad = bad_checkpoint(good["checkpoint"], kind, tmp_path)
    argv = ["--checkpoint", bad, "--num-archs", "10", "--out", tmp_path / "out", "--no-progress"]
    assert_refused(*run_cli(retrain.main, argv, capsys), bad)


@pytest.mark.parametrize("kind", KINDS)
def test_probe_checkpoint(good, kind, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import probe
    finally:
        sys.path.remove(str(ROOT / "bench"))
    bad = bad_checkpoint(good["checkpoint"], kind, tmp_path)
    argv = ["--checkpoint", bad, "--out", tmp_path / "out", "--threads", "1", "--no-progress"]
    assert_refused(*run_cli(probe.main, argv, capsys), bad)
    assert not (tmp_path / "out").exists()


# ---- the library: load_subnet ---------------------------------------------------------------------------------
def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _other_weights(path: Path) -> None:
    space = load_space("tiny")
    from attentive import StaticNet

    torch.save(StaticNet.from_arch(space, space.max_arch()).state_dict(), path)  # weights of another arch


LOAD_SUBNET_CASES = {
    # name: (file that is bad, how it is made bad, words of the reason)
    "truncated model.pth": ("model.pth", truncate, "not a readable"),
    "foreign metrics.json": ("metrics.json", lambda p: p.write_text(json.dumps({"format": "onnx.model"})),
                             "not an attentive subnet export"),
    "tampered space.json": ("space.json", lambda p: _edit_json(p, lambda d: d.update(num_classes=11)),
                            "modified or mixed"),
    "missing model.pth": ("model.pth", Path.unlink, "no such"),
    "missing arch.json": ("arch.json", Path.unlink, "no such"),
    "metrics.json not JSON": ("metrics.json", lambda p: p.write_text("{'format': 1"), "not JSON"),
    "newer format version": ("metrics.json", lambda p: _edit_json(p, lambda d: d.update(format_version=99)),
                             "version 99"),
    "tampered arch.json": ("arch.json", lambda p: _edit_json(p, lambda d: d.update(resolution=28)),
                           "modified or mixed"),
    "arch outside the space": ("arch.json", lambda p: _edit_json(p, lambda d: d["width"].__setitem__(0, 999)),
                               "allowed"),
    "weights of another arch": ("model.pth", _other_weights, "do not fit"),
    "model.pth not a torch file": ("model.pth", lambda p: p.write_text("weights\n"), "not a readable"),
}


@pytest.mark.parametrize("case", list(LOAD_SUBNET_CASES))
def test_load_subnet(good, case, tmp_path):
    name, spoil, reason = LOAD_SUBNET_CASES[case]
    directory = tmp_path / "subnet"
    shutil.copytree(good["export"], directory)
    spoil(directory / name)
    with pytest.raises(BadFileError, match=reason) as info:
        load_subnet(directory)
    assert info.value.path == directory / name
    assert str(directory / name) in str(info.value)


def test_load_subnet_accepts_the_intact_export(good):
    net = load_subnet(good["export"])
    assert net.arch == load_space("tiny").min_arch() and not net.training
