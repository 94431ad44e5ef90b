"""Latency tables (attentive/latency.py, python -m predictors.latency): the format and its entry count, the
vectorized prediction against a per-arch walk, resume after an interruption, the refusals, the CLI's exit codes.
Builds use a two-stage micro space with 1 timed run per entry, so no test depends on the machine's speed."""
import itertools
import json
import re

import numpy as np
import pytest
import torch
import yaml

import attentive.latency as latency_mod
from attentive import latency, load_space
from attentive.fileio import BadFileError
from attentive.flops import count_params_batch, encode
from attentive.latency import (CALIBRATION_SEED, CORRECTION_FOLDS, CORRECTION_RIDGE, CORRECTION_RIDGES, FORMAT,
                               FORMAT_VERSION, LatencyTable, block_key, build_table, choose_ridge,
                               cross_validate_ridge, fit_calibration, fit_corrections, head_key, measure_latency,
                               onnx_bytes, param_groups, part_counts, part_keys, stem_key, table_keys)
from attentive.space import Arch, space_from_dict
from attentive.spec import decode
from predictors.latency import main as latency_main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MICRO = {
    "name": "micro", "num_classes": 5, "resolutions": [16, 20], "shortcut": "channel_pad",
    "stem": {"widths": [8], "stride": 1, "activation": "hswish"},
    "stages": [
        {"name": "a", "widths": [8, 16], "depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [1],
         "stride": 2, "activation": "hswish", "se": False},
        {"name": "b", "widths": [16, 24], "depths": [1, 2], "kernel_sizes": [3], "expand_ratios": [2, 3],
         "stride": 2, "activation": "relu", "se": True},
    ],
    "head": {"widths": [32, 48], "activation": "hswish"},
}
FAST = dict(warmup=0, repeats=1, progress=False, calibration_archs=2)


@pytest.fixture(scope="module")
def micro():
    return space_from_dict(MICRO, where="micro")


@pytest.fixture(scope="module")
def micro_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "micro.yaml"
    path.write_text(yaml.safe_dump(MICRO))
    return path


@pytest.fixture(scope="module")
def torch_table(micro, tmp_path_factory):
    path = tmp_path_factory.mktemp("table") / "table.json"
    return build_table(micro, "torch", "cpu", 1, path, threads=1, **FAST)


def all_archs(space):
    return [space.arch_from_indices(i) for i in itertools.product(*[range(n) for n in space.gene_sizes()])]


def distinct_configurations(space):
    """Counted from every arch's decoded spec, independently of the table's per-stage grids."""
    seen = set()
    for arch in all_archs(space):
        spec = decode(space, arch)
        seen.add(("stem", spec.in_chans, spec.stem_chs, spec.stem_stride, spec.stem_activation, spec.resolution))
        seen.add(("head", spec.head_in_chs, spec.head_mid_chs, spec.head_out_chs, spec.num_classes,
                  spec.head_activation, spec.head_in_size))
        for b in spec.blocks:
            seen.add(("block", b.in_chs, b.mid_chs, b.out_chs, b.kernel_size, b.stride, b.se_chs, b.expand,
                      b.activation, b.shortcut, b.in_size))
    return seen


def fake_table(space, seed=0):
    """A complete table with random entries (no measurement): prediction tests on the full spaces."""
    rng = np.random.Generator(np.random.PCG64(seed))
    keys = table_keys(space)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "space_name": space.name, "space_hash": space.hash,
            "runtime": "torch", "runtime_version": torch.__version__, "device": "cpu", "batch": 1, "threads": 1,
            "num_classes": space.num_classes, "warmup": 0, "repeats": 1, "calibration_archs": 0, "calibration": [],
            "scale": 0.8, "per_part_ms": 0.003, "meta": {}, "complete": True, "space": space.to_dict(),
            "entries": {k: float(v) for k, v in zip(keys, rng.uniform(0.01, 1.0, len(keys)))},
            "corrections": {k: float(v) for k, v in zip(keys[::3], rng.uniform(-0.005, 0.005, len(keys[::3])))}}
    return LatencyTable(data, space)


# ---- format ----------------------------------------------------------------------------------------------------
def test_table_format_and_one_entry_per_distinct_configuration(micro, torch_table):
    data = json.loads(torch_table.path.read_text())
    assert data["format"] == FORMAT and data["format_version"] == FORMAT_VERSION
    assert data["space_hash"] == micro.hash and data["runtime"] == "torch" and data["device"] == "cpu"
    assert data["runtime_version"] == torch.__version__ and data["batch"] == 1 and data["threads"] == 1
    assert data["complete"] is True and data["warmup"] == 0 and data["repeats"] == 1
    assert {"cpu", "threads", "torch", "onnxruntime", "python", "date"} <= set(data["meta"])
    assert len(data["entries"]) == len(distinct_configurations(micro)) == len(table_keys(micro))
    assert all(v > 0 for v in data["entries"].values())
    assert len(data["calibration"]) == 2
    assert (data["scale"], data["per_part_ms"]) == pytest.approx(fit_calibration(data["calibration"]))
    used = {k for row in data["calibration"] for k in part_keys(micro, Arch.from_dict(row["arch"]))}
    assert set(data["corrections"]) == used and all(isinstance(v, float) for v in data["corrections"].values())
    # 2 calibration archs are too few to cross-validate the ridge: the default one, no scores
    assert data["correction_ridge"] == CORRECTION_RIDGE and data["correction_cv_mape_pct"] == {}
    loaded = LatencyTable.load(torch_table.path, micro)
    assert loaded.entries == torch_table.entries
    assert (loaded.scale, loaded.per_part_ms) == (torch_table.scale, torch_table.per_part_ms)


def test_fit_calibration_is_the_least_squares_scale_and_per_part_cost():
    # generated by measured = 0.7 * sum + 0.004 * (parts - 1), exactly
    rows = [{"parts": p, "sum_ms": t, "measured_ms": 0.7 * t + 0.004 * (p - 1)}
            for p, t in [(5, 1.0), (9, 2.0), (7, 1.1), (12, 3.0)]]
    assert fit_calibration(rows) == pytest.approx((0.7, 0.004), rel=1e-9)
    assert fit_calibration([]) == (1.0, 0.0)  # no calibration archs: OFA's plain sum
    one = [{"parts": 5, "sum_ms": 2.0, "measured_ms": 1.5}]  # one row cannot separate the terms: scale alone
    assert fit_calibration(one) == pytest.approx((0.75, 0.0))
    # two noisy rows whose exact fit has a negative scale: the fit stays non-negative, so predictions do too
    noisy = [{"parts": 5, "sum_ms": 1.0, "measured_ms": 0.5}, {"parts": 11, "sum_ms": 2.0, "measured_ms": 1.5}]
    assert np.linalg.solve([[1.0, 4.0], [2.0, 10.0]], [0.5, 1.5])[0] == pytest.approx(-0.5)
    scale, per_part = fit_calibration(noisy)
    assert scale >= 0 and per_part >= 0 and scale + per_part > 0


# ---- prediction ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tiny", "attentivenas"])
def test_predict_batch_is_the_sum_of_the_arch_entries(name):
    space = load_space(name)
    table = fake_table(space)
    rng = np.random.Generator(np.random.PCG64(1))
    idx = space.sample_indices(rng, 40)
    archs = [space.arch_from_indices(i) for i in idx] + [space.min_arch(), space.max_arch()]
    idx = encode(space, archs)
    expected = []
    for arch in archs:  # walk the decoded net: stem, every block, head
        spec = decode(space, arch)
        keys = [stem_key(spec), *[block_key(b) for b in spec.blocks], head_key(spec)]
        expected.append(table.scale * sum(table.entries[k] for k in keys) + (len(keys) - 1) * table.per_part_ms
                        + sum(table.corrections.get(k, 0.0) for k in keys))
    np.testing.assert_allclose(table.predict_batch(idx), expected, rtol=1e-12)
    np.testing.assert_allclose(table.predict_batch(archs), expected, rtol=1e-12)
    assert [table.predict(a) for a in archs] == pytest.approx(expected, rel=1e-12)
    assert part_counts(space, idx).tolist() == [len(decode(space, a).blocks) + 2 for a in archs]
    assert table.predict_batch(idx).dtype == np.float64


def test_corrections_learn_what_the_parts_cost_in_context():
    """End-to-end times whose parts cost otherwise than their entries say (here: every block at 24 px costs 0.05 ms
    more, in context): the fitted corrections recover it, and the corrected table predicts held-out archs far
    better; no rows, no corrections; the pull towards 0 keeps them small when asked to."""
    space = load_space("tiny")
    table = fake_table(space)
    table = LatencyTable(dict(table.data, corrections={}), space)
    extra = {k: 0.05 for k in table.entries if k.startswith("block:") and k.endswith("size=24")}

    def truth(arch):
        return table.predict(arch) + sum(extra.get(k, 0.0) for k in part_keys(space, arch))

    rng = np.random.Generator(np.random.PCG64(2))
    fit_archs = [space.arch_from_indices(i) for i in space.sample_indices(rng, 300)]
    test_archs = [space.arch_from_indices(i) for i in space.sample_indices(rng, 50)]
    rows = [{"arch": a.to_dict(), "measured_ms": truth(a)} for a in fit_archs]
    assert fit_corrections(table, []) == {}
    corrections = fit_corrections(table, rows)
    fitted = LatencyTable(dict(table.data, corrections=corrections), space)
    measured = np.array([truth(a) for a in test_archs])
    before = np.abs(np.array([table.predict(a) for a in test_archs]) - measured).mean()
    after = np.abs(np.array([fitted.predict(a) for a in test_archs]) - measured).mean()
    assert after < 0.25 * before
    assert set(corrections) == {k for a in fit_archs for k in part_keys(space, a)}
    assert fit_corrections(fitted, rows) == pytest.approx(corrections, rel=1e-9, abs=1e-12)  # replaced, not added
    arch = test_archs[0]
    assert fitted.predict_parts(arch.to_dict()) == fitted.predict_parts(arch) == \
        [(k, table.entries[k]) for k in part_keys(space, arch)]
    strong = fit_corrections(table, rows, ridge=1e6)
    assert max(map(abs, strong.values())) < 0.1 * max(map(abs, corrections.values()))


def test_the_ridge_is_chosen_by_cross_validation():
    """Rows whose parts really cost otherwise in context (every block at 24 px 0.05 ms more, exactly) make the
    cross-validation pick a weak pull; rows whose errors are noise without a per-part pattern, a strong one; too
    few rows to cross-validate give the default ridge."""
    space = load_space("tiny")
    table = LatencyTable(dict(fake_table(space).data, corrections={}), space)
    extra = {k: 0.05 for k in table.entries if k.startswith("block:") and k.endswith("size=24")}
    rng = np.random.Generator(np.random.PCG64(3))
    archs = [space.arch_from_indices(i) for i in space.sample_indices(rng, 200)]
    planted = [{"arch": a.to_dict(), "measured_ms": table.predict(a) + sum(extra.get(k, 0.0) for k in
                                                                          part_keys(space, a))} for a in archs]
    noisy = [{"arch": a.to_dict(), "measured_ms": table.predict(a) * (1.0 + 0.05 * rng.standard_normal())}
             for a in archs]
    ridge, scores = choose_ridge(table, planted)
    assert set(scores) == set(CORRECTION_RIDGES) and ridge == min(CORRECTION_RIDGES)
    assert scores[ridge] < 0.5 * scores[max(CORRECTION_RIDGES)]
    ridge, scores = choose_ridge(table, noisy)
    assert ridge >= 30.0 and scores[ridge] < scores[min(CORRECTION_RIDGES)]
    assert choose_ridge(table, planted[:2 * CORRECTION_FOLDS - 1]) == (CORRECTION_RIDGE, {})
    with pytest.raises(ValueError, match="at least 2 rows per fold"):
        cross_validate_ridge(table, planted[:9], folds=5)
    # rel 1e-3: a fold's own fit_corrections scales the pull by the mean cost of the parts that fold uses
    assert cross_validate_ridge(table, planted, ridges=(1.0,)) == \
        pytest.approx({1.0: scores_at(table, planted)}, rel=1e-3)


def scores_at(table, rows, folds=5):
    """`cross_validate_ridge` at ridge 1 written out: fit on four folds, score the fifth, weighted by fold size."""
    perm = np.random.Generator(np.random.PCG64(CALIBRATION_SEED)).permutation(len(rows))
    fold = np.empty(len(rows), dtype=np.int64)
    fold[perm] = np.arange(len(rows)) % folds
    total = 0.0
    for f in range(folds):
        fitted = LatencyTable(dict(table.data, corrections=fit_corrections(
            table, [r for r, g in zip(rows, fold) if g != f], ridge=1.0)), table.space)
        total += sum(abs(fitted.predict(r["arch"]) - r["measured_ms"]) / r["measured_ms"]
                     for r, g in zip(rows, fold) if g == f)
    return 100.0 * total / len(rows)


def test_archs_are_measured_in_groups_that_bound_memory(micro, torch_table, monkeypatch):
    """End-to-end measurements take turns within groups of at most MEASURE_GROUP_PARAMS parameters, in order, so
    that only one group's nets are held at a time (the ImageNet space's 400 calibration archs at once were killed
    for memory); every arch gets its time, in the order given."""
    assert param_groups([3, 3, 3, 5, 9, 1], 6) == [[0, 1], [2], [3], [4], [5]]
    assert param_groups([], 6) == []
    rng = np.random.Generator(np.random.PCG64(5))
    archs = [micro.arch_from_indices(i) for i in micro.sample_indices(rng, 7)]
    params = count_params_batch(micro, archs) * 1e6
    budget = float(np.sort(params)[-1] + np.sort(params)[-2])  # two of the largest fit, three do not
    calls = []

    def fake(models, shapes, *args):
        calls.append([sum(p.numel() for p in m.parameters()) for m in models])
        return [float(shape[-1]) for shape in shapes]

    monkeypatch.setattr(latency, "measure_latencies", fake)
    monkeypatch.setattr(latency, "MEASURE_GROUP_PARAMS", budget)
    times = latency.measure_archs(torch_table, archs)
    assert times == [float(a.resolution) for a in archs]
    assert [n for group in calls for n in group] == pytest.approx(params.tolist())
    assert len(calls) > 1 and all(sum(group) <= budget for group in calls if len(group) > 1)
    assert [len(g) for g in calls] == [len(g) for g in param_groups(params, budget)]


def test_predict_batch_refuses_a_wrong_shape():
    space = load_space("tiny")
    with pytest.raises(ValueError, match="shape"):
        fake_table(space).predict_batch(np.zeros((3, 2), dtype=np.int64))


# ---- resume ----------------------------------------------------------------------------------------------------
class Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_measuring_only_the_rest(micro, tmp_path, monkeypatch):
    monkeypatch.setattr(latency_mod, "ENTRY_GROUP", 2)  # entries are measured and saved in groups of 2
    path = tmp_path / "t.json"
    done = []

    def stop_after_3(key, ms):
        done.append(key)
        if len(done) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        build_table(micro, "torch", "cpu", 1, path, threads=1, on_entry=stop_after_3, **FAST)
    partial = json.loads(path.read_text())
    # the interrupt came while reporting the second group, which was saved already: two groups on disk
    assert partial["complete"] is False and len(partial["entries"]) == 4 and set(done) < set(partial["entries"])
    done = list(partial["entries"])
    with pytest.raises(BadFileError, match="unfinished latency table"):
        LatencyTable.load(path, micro)

    again = []
    table = build_table(micro, "torch", "cpu", 1, path, threads=1, on_entry=lambda k, ms: again.append(k), **FAST)
    keys = table_keys(micro)
    assert sorted(again) == sorted([k for k in keys if k not in done] + ["calibration"])
    assert {k: table.entries[k] for k in done} == {k: partial["entries"][k] for k in done}
    assert LatencyTable.load(path, micro).entries == table.entries

    rerun = []
    build_table(micro, "torch", "cpu", 1, path, threads=1, on_entry=lambda k, ms: rerun.append(k), **FAST)
    assert rerun == []  # a finished table is not measured again


def test_an_interrupted_calibration_resumes_with_the_archs_not_measured(micro, tmp_path, monkeypatch):
    """The calibration archs are measured and saved group by group (here one arch per group): after an interrupt
    the archs on disk are kept and only the others are measured, in the same seeded order."""
    monkeypatch.setattr(latency_mod, "MEASURE_GROUP_PARAMS", 1.0)  # every arch over the budget: a group of its own
    built, stop_at = [], [4]
    real_static_net = latency_mod.static_net

    def counting_static_net(space, arch, num_classes=None):
        built.append(arch.to_dict())
        if len(built) == stop_at[0]:
            raise Interrupt
        return real_static_net(space, arch, num_classes)

    monkeypatch.setattr(latency_mod, "static_net", counting_static_net)
    path, options = tmp_path / "t.json", dict(FAST, calibration_archs=6)
    with pytest.raises(Interrupt):
        build_table(micro, "torch", "cpu", 1, path, threads=1, **options)
    partial = json.loads(path.read_text())
    assert partial["complete"] is False and [r["arch"] for r in partial["calibration"]] == built[:3]
    with pytest.raises(BadFileError, match="3 calibration archs not measured yet"):
        LatencyTable.load(path, micro)
    built.clear()
    stop_at[0] = 0
    table = build_table(micro, "torch", "cpu", 1, path, threads=1, **options)
    rows = table.data["calibration"]
    assert table.data["complete"] is True and len(rows) == 6 and rows[:3] == partial["calibration"]
    assert built == [r["arch"] for r in rows[3:]]  # only the rest measured
    assert (table.scale, table.per_part_ms) == pytest.approx(fit_calibration(rows))


def test_resuming_with_other_settings_is_refused(micro, torch_table, tmp_path):
    path = tmp_path / "t.json"
    path.write_bytes(torch_table.path.read_bytes())
    with pytest.raises(BadFileError, match=r"other settings: .*batch 1 \(asked for 2\)"):
        build_table(micro, "torch", "cpu", 2, path, threads=1, **FAST)
    path.write_text('{"something": "else"}')
    with pytest.raises(BadFileError, match="refusing to overwrite"):
        build_table(micro, "torch", "cpu", 1, path, threads=1, **FAST)


# ---- refusals --------------------------------------------------------------------------------------------------
def edited(table, tmp_path, **changes):
    data = json.loads(table.path.read_text())
    data.update(changes)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(data))
    return path


def test_load_refuses_a_table_for_another_space(micro, torch_table):
    with pytest.raises(BadFileError, match=r"another space \('micro'.*this space is 'tiny'") as e:
        LatencyTable.load(torch_table.path, load_space("tiny"))
    assert str(torch_table.path) in str(e.value)


def test_load_refuses_another_runtime_version(micro, torch_table, tmp_path):
    path = edited(torch_table, tmp_path, runtime_version="0.0.1")
    expected = re.escape(f"measured with torch 0.0.1, but torch {torch.__version__} is installed")
    with pytest.raises(BadFileError, match=expected):
        LatencyTable.load(path, micro)


def test_load_refuses_another_batch_when_asked(micro, torch_table):
    with pytest.raises(BadFileError, match="batch 1, batch 8 asked for"):
        LatencyTable.load(torch_table.path, micro, batch=8)
    assert LatencyTable.load(torch_table.path, micro, batch=1).batch == 1


@pytest.mark.parametrize("change, message", [
    ({"format": "attentive.subnet"}, "not a latency table"),
    ({"format_version": 99}, "format version 99"),
    ({"runtime": "tflite"}, "unknown runtime 'tflite'"),
    ({"entries": {"stem": -1}}, "non-negative milliseconds"),
    ({"corrections": {"block:not-a-part": 0.1}}, "corrections must map keys of its entries"),
    ({"corrections": [0.1]}, "corrections must map keys of its entries"),
])
def test_load_refuses_foreign_or_edited_tables(micro, torch_table, tmp_path, change, message):
    with pytest.raises(BadFileError, match=message):
        LatencyTable.load(edited(torch_table, tmp_path, **change), micro)


def test_load_refuses_torn_missing_and_incomplete_files(micro, torch_table, tmp_path):
    torn = tmp_path / "torn.json"
    torn.write_bytes(torch_table.path.read_bytes()[:200])
    with pytest.raises(BadFileError, match="not a readable latency table"):
        LatencyTable.load(torn, micro)
    with pytest.raises(BadFileError, match="no such latency table"):
        LatencyTable.load(tmp_path / "missing.json", micro)
    data = json.loads(torch_table.path.read_text())
    data["entries"].pop(next(iter(data["entries"])))
    path = tmp_path / "fewer.json"
    path.write_text(json.dumps(data))
    with pytest.raises(BadFileError, match="1 entries missing"):
        LatencyTable.load(path, micro)


# ---- onnxruntime -----------------------------------------------------------------------------------------------
def test_onnxruntime_table_and_measure_latency_of_an_onnx_file(micro, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    table = build_table(micro, "onnxruntime", "cpu", 2, tmp_path / "ort.json", threads=1, **FAST)
    assert table.runtime_version == onnxruntime.__version__ and table.batch == 2
    assert len(table.entries) == len(table_keys(micro))
    arch = micro.max_arch()
    assert table.predict(arch) > 0
    net = torch.nn.Conv2d(3, 4, 3)
    onnx_path = tmp_path / "conv.onnx"
    onnx_path.write_bytes(onnx_bytes(net, (1, 3, 8, 8)))
    assert measure_latency(onnx_path, (2, 3, 8, 8), "onnxruntime", "cpu", threads=1, warmup=0, repeats=2) > 0
    with pytest.raises(BadFileError, match="no such ONNX file"):
        measure_latency(tmp_path / "none.onnx", (1, 3, 8, 8), "onnxruntime", "cpu", 1, 0, 1)


# ---- CLI -------------------------------------------------------------------------------------------------------
def run_cli(argv, capsys):
    try:
        code = latency_main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr()


@pytest.mark.parametrize("argv, message", [
    (["build", "--space", "tiny", "--runtime", "tflite", "--device", "cpu", "--batch", "1", "--out", "x.json"],
     "invalid choice: 'tflite'"),
    (["build", "--space", "tiny", "--runtime", "torch", "--device", "cpu", "--batch", "0", "--out", "x.json"],
     "--batch must be >= 1, got 0"),
    (["build", "--space", "tiny", "--runtime", "torch", "--device", "cpu", "--batch", "1", "--out", "x.json",
      "--repeats", "0"], "--repeats must be >= 1"),
    (["build", "--space", "nospace", "--runtime", "torch", "--device", "cpu", "--batch", "1", "--out", "x.json"],
     "no search space named 'nospace'"),
    (["build", "--space", "tiny", "--runtime", "torch", "--device", "cpu"], "required: --batch, --out"),
    (["validate", "--table", "x.json", "--num-archs", "1"], "--num-archs must be >= 2"),
    ([], "required"),
])
def test_cli_usage_errors_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out = run_cli(argv, capsys)
    assert code == 2 and message in out.err and "python -m predictors.latency" in out.err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_without_cuda_exits_2(capsys, tmp_path):
    code, out = run_cli(["build", "--space", "tiny", "--runtime", "torch", "--device", "cuda", "--batch", "1",
                         "--out", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "CUDA is not available" in out.err


def test_cli_bad_tables_exit_2_naming_the_file(micro_yaml, torch_table, capsys, tmp_path):
    torn = tmp_path / "torn.json"
    torn.write_bytes(torch_table.path.read_bytes()[:100])
    code, out = run_cli(["validate", "--table", str(torn), "--num-archs", "2", "--space", str(micro_yaml)], capsys)
    assert code == 2 and str(torn) in out.err and "not a readable latency table" in out.err
    code, out = run_cli(["validate", "--table", str(torch_table.path), "--num-archs", "2", "--space", "tiny"],
                        capsys)
    assert code == 2 and str(torch_table.path) in out.err and "another space" in out.err
    code, out = run_cli(["validate", "--table", str(tmp_path / "none.json"), "--num-archs", "2"], capsys)
    assert code == 2 and "no such latency table" in out.err


def test_cli_build_then_validate(micro_yaml, capsys, tmp_path):
    table = tmp_path / "table.json"
    code, out = run_cli(["build", "--space", str(micro_yaml), "--runtime", "torch", "--device", "cpu", "--batch",
                         "1", "--out", str(table), "--threads", "1", "--warmup", "0", "--repeats", "1",
                         "--calibration-archs", "10", "--no-progress"], capsys)
    assert code == 0, out.err
    assert f"{len(table_keys(space_from_dict(MICRO)))} entries" in out.out
    built = json.loads(table.read_text())  # 10 archs: enough to cross-validate the ridge, which build reports
    ridge = built["correction_ridge"]
    assert ridge in CORRECTION_RIDGES and set(built["correction_cv_mape_pct"]) == {str(r) for r in CORRECTION_RIDGES}
    assert (f"(ridge {ridge:g}, cross-validated MAPE {built['correction_cv_mape_pct'][str(ridge)]:.2f}%)"
            in out.out)
    code, out = run_cli(["validate", "--table", str(table), "--num-archs", "3", "--out", str(tmp_path / "val")],
                        capsys)
    assert code == 0, out.err
    assert "MAPE" in out.out and "Kendall tau" in out.out and "largest error" in out.out
    assert (tmp_path / "val" / "latency_validation.png").stat().st_size > 0
    rows = json.loads((tmp_path / "val" / "latency_validation.json").read_text())
    assert len(rows["rows"]) == 3 and rows["summary"]["num_archs"] == 3
    errors = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] * 100 for r in rows["rows"]]
    assert rows["summary"]["mape_pct"] == pytest.approx(np.mean(errors))
