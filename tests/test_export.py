"""Subnet export (attentive.export) and `attentive.load_subnet`."""
import json
import shutil

import numpy as np
import pytest
import torch

from attentive import StaticNet, Supernet, count_flops, count_params
from attentive.calibration import calibrate_bn
from attentive.data import build_datasets, build_loader, calibration_batches
from attentive.export import export_subnet, load_subnet
from attentive.fileio import BadFileError


@pytest.fixture(scope="module")
def setup():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        supernet = Supernet("tiny")
        for block in supernet.blocks:  # blocks start as identities; random last-BN weights make them count
            torch.nn.init.normal_(block.bn3.weight, 0.0, 0.5)
    splits = build_datasets("synthetic", "unused", synthetic_num_train=96, synthetic_num_test=48,
                            holdout_fraction=0.25)
    calib = calibration_batches(splits, 16, 2, seed=0)
    holdout = build_loader(splits.holdout, 32, train=False)
    test = build_loader(splits.test, 32, train=False)
    arch = supernet.space.sample(np.random.default_rng(3))
    return supernet.eval(), arch, calib, holdout, test


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    supernet, arch, calib, holdout, test = setup
    out = tmp_path_factory.mktemp("export") / "subnet"
    budget = count_flops(supernet.space, arch) + 0.5
    metrics = export_subnet(out, supernet, arch, calib, holdout_loader=holdout, test_loader=test, budget=budget)
    return out, metrics, budget


def test_export_then_load_matches_supernet(setup, exported):
    supernet, arch, calib, _, _ = setup
    space = supernet.space
    mflops = count_flops(space, arch)
    out, metrics, budget = exported

    names = {p.name for p in out.iterdir()}
    assert names == {"model.pth", "arch.json", "space.json", "metrics.json", "flops_table.txt", "model.onnx"}
    assert json.loads((out / "metrics.json").read_text()) == metrics
    assert metrics["mflops"] == pytest.approx(mflops) and metrics["fvcore_mflops"] == pytest.approx(mflops)
    assert metrics["fvcore_mflops_all_ops"] > metrics["fvcore_mflops"]  # fvcore's default adds BN and pooling
    assert metrics["mparams"] == pytest.approx(count_params(space, arch))
    assert metrics["mparams_counted"] == pytest.approx(metrics["mparams"])
    assert metrics["under_budget"] is True and metrics["budget_mflops"] == budget
    assert metrics["space_name"] == "tiny" and metrics["space_hash"] == space.hash
    assert 0 <= metrics["holdout_top1"] <= 100 and 0 <= metrics["test_top1"] <= 100
    assert metrics["bn_calibration_images"] == 32
    assert metrics["environment"]["packages"]["torch"] == torch.__version__ and metrics["environment"]["threads"] >= 1
    assert metrics["onnx"]["checked_with_onnxruntime"] and metrics["onnx"]["max_abs_diff"] <= 1e-4
    assert f"{mflops:.3f}"[:4] in (out / "flops_table.txt").read_text()
    state = torch.load(out / "model.pth", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())

    # load_subnet needs no supernet; after the same BN calibration the supernet gives the same logits.
    net = load_subnet(out)
    assert not net.training and net.arch == arch
    supernet.set_arch(arch)
    calibrate_bn(supernet, calib)
    x = torch.randn(6, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = supernet(x), net(x)
    assert expected.abs().max() > 0.1  # not a trivial net
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_export_refuses_over_budget_and_existing_dir(setup, tmp_path):
    supernet, arch, calib, _, _ = setup
    mflops = count_flops(supernet.space, arch)
    out = tmp_path / "subnet"
    with pytest.raises(ValueError, match=f"{mflops:.4g} MFLOPs, over the budget of 1 MFLOPs"):
        export_subnet(out, supernet, arch, calib, budget=1.0)
    assert not out.exists()
    export_subnet(out, supernet, arch, calib, onnx=False)
    with pytest.raises(FileExistsError, match="already exists.*force"):
        export_subnet(out, supernet, supernet.space.min_arch(), calib, onnx=False)
    assert json.loads((out / "arch.json").read_text()) == arch.to_dict()  # untouched
    export_subnet(out, supernet, supernet.space.min_arch(), calib, onnx=False, force=True)
    assert json.loads((out / "arch.json").read_text()) == supernet.space.min_arch().to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["subnet"]  # no temporary or old copies left


def test_load_subnet_refuses_mixed_directories(exported, tmp_path):
    out = tmp_path / "subnet"
    shutil.copytree(exported[0], out)
    space = json.loads((out / "space.json").read_text())
    space["num_classes"] = 11
    (out / "space.json").write_text(json.dumps(space))
    with pytest.raises(BadFileError, match=r"space.json: its space hashes to \w+ but metrics.json records"):
        load_subnet(out)
    with pytest.raises(BadFileError, match="nothing: no such export directory"):
        load_subnet(tmp_path / "nothing")


def test_nets_know_their_arch_and_space(setup, exported):
    supernet, arch, *_ = setup
    extracted = supernet.extract(arch)
    loaded = load_subnet(exported[0])
    fresh = StaticNet.from_arch(supernet.space, arch)
    for net in (extracted, loaded, fresh):
        assert net.arch == arch and net.space == supernet.space and net.spec.arch == arch
    assert list(loaded.state_dict()) == list(extracted.state_dict()) == list(fresh.state_dict())
