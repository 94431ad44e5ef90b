import hashlib
import inspect
import json

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from attentive import Supernet, count_flops, count_flops_batch, load_space
from attentive.checkpoint import save_atomic
from attentive.fileio import BadFileError
from attentive.predictor import DEFAULT_TEACHER, TEACHERS
from attentive.data import build_datasets, build_loader, calibration_batches, datasets_from_config
from attentive import measure as collect
from attentive.measure import measure_archs, read_rows, stratified_archs
from predictors.features import FEATURE_VERSION, GENES_MIN_ARCHS, feature_names, features, resolve_feature_set
from attentive.metrics import regression_metrics, top_fraction_overlap
from predictors import compare
from predictors.compare import RetrainOptions, measurement_tag
from predictors.retrain import main as retrain_main
from predictors.teacher import DEFAULT_NUM_PSEUDO, fit_gaussian_process, gp_pseudo_labels
from predictors.xgb import AccuracyPredictor, tune_params

FAST = {"n_estimators": 60}  # enough trees for the tests' synthetic targets, fast to fit


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny")


@pytest.fixture(scope="module")
def big():
    return load_space("attentivenas")


def _formula_top1(space, idx, rng, noise=0.2):
    """A known accuracy-like function of FLOPs and depths, plus noise."""
    x = features(space, idx)
    depths = x[:, 1 + space.num_stages + 2:1 + 2 * space.num_stages + 2].sum(1)
    return 70 + 4 * np.log(x[:, -2]) + 0.5 * depths + rng.normal(0, noise, len(x))


@pytest.fixture(scope="module")
def fitted(tiny):
    rng = np.random.default_rng(0)
    idx = tiny.sample_indices(rng, 300)
    return AccuracyPredictor.fit(tiny, idx, _formula_top1(tiny, idx, rng), seed=0, params=FAST, teacher="gp")


# ---- features ---------------------------------------------------------------------------------------------
def test_features_equal_for_index_arrays_arch_lists_and_dicts(tiny, big):
    for space in (tiny, big):
        idx = space.sample_indices(np.random.default_rng(1), 40)
        archs = [space.arch_from_indices(row) for row in idx]
        from_idx = features(space, idx)
        np.testing.assert_array_equal(from_idx, features(space, archs))
        np.testing.assert_array_equal(from_idx, features(space, [a.to_dict() for a in archs]))
        assert from_idx.dtype == np.float32 and from_idx.shape == (40, len(feature_names(space)))
        names = feature_names(space)
        a = archs[3]
        row = dict(zip(names, from_idx[3]))
        assert row["resolution"] == a.resolution and row["width_head"] == a.width[-1]
        assert row[f"depth_{space.stages[-1].name}"] == a.depth[-1]
        assert row[f"expand_{space.stages[2].name}"] == pytest.approx(a.expand_ratio[2])
        assert row["mflops"] == pytest.approx(count_flops(space, a), rel=1e-6)


def test_gene_feature_set_is_the_full_vector_without_the_cost_totals(tiny):
    idx = tiny.sample_indices(np.random.default_rng(2), 30)
    full, genes = features(tiny, idx, "all"), features(tiny, idx, "genes")
    np.testing.assert_array_equal(genes, full[:, :-2])
    assert feature_names(tiny, "genes") == feature_names(tiny)[:-2] and feature_names(tiny)[-2:] == ["mflops", "mparams"]
    assert genes.shape[1] == len(tiny.gene_sizes())  # one column per gene
    with pytest.raises(ValueError, match=r"unknown feature set 'cost'; allowed: \['all', 'genes'\]"):
        features(tiny, idx, "cost")
    with pytest.raises(ValueError, match="unknown feature set 'auto'"):
        features(tiny, idx, "auto")  # "auto" is resolved by the number of fitting archs, not a column layout


def test_auto_feature_set_drops_the_cost_totals_from_100_archs_on():
    assert GENES_MIN_ARCHS == 100
    assert [resolve_feature_set("auto", n) for n in (2, 40, 99, 100, 400)] == ["all"] * 3 + ["genes"] * 2
    assert resolve_feature_set("all", 1000) == "all" and resolve_feature_set("genes", 10) == "genes"
    with pytest.raises(ValueError, match="unknown feature set 'cost'"):
        resolve_feature_set("cost", 10)


def test_features_refuse_bad_index_arrays(tiny):
    idx = tiny.sample_indices(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match=r"shape \(n, 27\)"):
        features(tiny, idx[:, :-1])
    with pytest.raises(ValueError, match="integers"):
        features(tiny, idx.astype(float))
    idx[1, 11] = 3  # gene 11, the depth of stage mb3, has 3 options
    assert tiny.gene_sizes()[11] == 3
    with pytest.raises(ValueError, match=r"row 1, gene 11: index 3 out of range \[0, 3\)"):
        features(tiny, idx)
    with pytest.raises(ValueError, match="resolution 32 not allowed"):
        features(tiny, [{**tiny.min_arch().to_dict(), "resolution": 32}])


# ---- the XGBoost predictor ---------------------------------------------------------------------------------
def test_fit_on_known_formula_ranks_held_out_archs(tiny, fitted):
    rng = np.random.default_rng(123)
    held = tiny.sample_indices(rng, 200)
    truth = _formula_top1(tiny, held, rng)
    tau = kendalltau(fitted.predict(held), truth).statistic
    assert tau > 0.8
    assert fitted.meta["num_archs"] == 300 and fitted.meta["metrics"]["train"]["kendall_tau"] > tau - 0.1


def test_fit_is_deterministic_for_a_seed(tiny):
    rng = np.random.default_rng(0)
    idx = tiny.sample_indices(rng, 60)
    y = _formula_top1(tiny, idx, rng)
    a = AccuracyPredictor.fit(tiny, idx, y, seed=5, params=FAST, teacher="gp").predict(idx)
    b = AccuracyPredictor.fit(tiny, idx, y, seed=5, params=FAST, teacher="gp").predict(idx)
    np.testing.assert_array_equal(a, b)


def test_save_load_and_state_round_trip_give_equal_predictions(tiny, fitted, tmp_path):
    probe = tiny.sample_indices(np.random.default_rng(7), 500)
    expected = fitted.predict(probe)
    fitted.save(tmp_path)
    model = json.loads((tmp_path / "model.json").read_text())
    assert "learner" in model  # XGBoost's own JSON model format
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert (meta["space_hash"], meta["feature_version"], meta["num_archs"]) == (tiny.hash, FEATURE_VERSION, 300)
    np.testing.assert_array_equal(AccuracyPredictor.load(tmp_path, tiny).predict(probe), expected)
    state = fitted.to_state()
    assert all(isinstance(v, str) for v in state.values())
    torch.save({"predictor": state}, tmp_path / "ckpt.pt")  # survives a weights_only checkpoint
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)["predictor"]
    np.testing.assert_array_equal(AccuracyPredictor.from_state(state, tiny).predict(probe), expected)
    # Lists of archs and index arrays predict the same.
    archs = [tiny.arch_from_indices(r) for r in probe[:20]]
    np.testing.assert_array_equal(fitted.predict(archs), expected[:20])


def test_load_refuses_other_space_other_feature_version_and_torn_pairs(tiny, big, fitted, tmp_path):
    fitted.save(tmp_path)
    meta_file, model_file = tmp_path / "meta.json", tmp_path / "model.json"
    with pytest.raises(BadFileError, match=rf"{meta_file}: predictor was fit for space 'tiny' \(hash {tiny.hash}\), "
                                           rf"not for space 'attentivenas'"):
        AccuracyPredictor.load(tmp_path, big)
    with pytest.raises(BadFileError, match="predictor state: .*not for space 'attentivenas'"):
        AccuracyPredictor.from_state(fitted.to_state(), big)
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "feature_version": FEATURE_VERSION + 1}))
    with pytest.raises(BadFileError, match=rf"{meta_file}: predictor uses feature version {FEATURE_VERSION + 1}, "
                                           rf"this code computes feature version {FEATURE_VERSION}"):
        AccuracyPredictor.load(tmp_path, tiny)
    state = fitted.to_state()
    state["meta_json"] = json.dumps({**json.loads(state["meta_json"]), "feature_version": 0})
    with pytest.raises(BadFileError, match="ckpt.pt: predictor: predictor uses feature version 0"):
        AccuracyPredictor.from_state(state, tiny, where="ckpt.pt: predictor")
    meta_file.write_text(json.dumps(meta))
    other = AccuracyPredictor.fit(tiny, tiny.sample_indices(np.random.default_rng(1), 10), np.arange(10.0),
                                  params=FAST, teacher="gp")
    model_file.write_bytes(bytes(other.booster.save_raw(raw_format="json")))
    with pytest.raises(BadFileError, match=f"{model_file}: does not match {meta_file}"):
        AccuracyPredictor.load(tmp_path, tiny)


def test_load_refuses_missing_truncated_and_foreign_files_naming_them(tiny, fitted, tmp_path):
    """Every refusal is a BadFileError (a ValueError) whose message starts with the file at fault."""
    def refused(directory, match):
        with pytest.raises(BadFileError, match=match) as e:
            AccuracyPredictor.load(directory, tiny)
        return e.value

    assert refused(tmp_path / "nowhere", "no such predictor directory").path == tmp_path / "nowhere"
    fitted.save(tmp_path)
    meta_file, model_file = tmp_path / "meta.json", tmp_path / "model.json"
    meta_text, model_bytes = meta_file.read_text(), model_file.read_bytes()
    model_file.unlink()
    assert refused(tmp_path, "predictor file not found").path == model_file
    model_file.write_bytes(model_bytes)
    meta_file.unlink()
    assert refused(tmp_path, "predictor file not found").path == meta_file
    meta_file.write_text(meta_text[: len(meta_text) // 2])  # torn write
    assert refused(tmp_path, "not JSON").path == meta_file
    meta_file.write_bytes(b"\x80\x03binary")  # not even text
    assert refused(tmp_path, "not JSON").path == meta_file
    meta = json.loads(meta_text)
    meta_file.write_text(json.dumps({**meta, "format": "sklearn.pickle"}))
    assert refused(tmp_path, "not an attentive accuracy predictor").path == meta_file
    meta_file.write_text(json.dumps([1, 2]))
    assert refused(tmp_path, "not an attentive accuracy predictor").path == meta_file
    meta_file.write_text(json.dumps({**meta, "format_version": 2}))
    assert refused(tmp_path, "predictor format version 2; this code reads version 1").path == meta_file
    meta_file.write_text(json.dumps({**meta, "feature_set": "cost"}))
    assert refused(tmp_path, r"feature set 'cost' is not one this code computes \(\['all', 'genes'\]\)").path \
        == meta_file
    without = dict(meta)
    del without["feature_set"]  # every saved predictor records it; one without it is not ours
    meta_file.write_text(json.dumps(without))
    assert refused(tmp_path, "feature set None is not one").path == meta_file
    meta_file.write_text(meta_text)
    model_file.write_bytes(model_bytes[: len(model_bytes) // 2])
    assert refused(tmp_path, "not JSON").path == model_file
    # Valid JSON with a matching hash, but not an XGBoost model: XGBoost's own refusal, by file name.
    foreign = b'{"learner": "not a model"}'
    model_file.write_bytes(foreign)
    meta_file.write_text(json.dumps({**meta, "model_sha256": hashlib.sha256(foreign).hexdigest()}))
    assert refused(tmp_path, "XGBoost cannot read the model").path == model_file
    model_file.write_bytes(model_bytes)
    meta_file.write_text(meta_text)
    assert AccuracyPredictor.load(tmp_path, tiny).num_archs == fitted.num_archs


def test_from_state_refuses_foreign_and_torn_states_by_where(tiny, fitted):
    state = fitted.to_state()
    where = "run/last.pt: predictor"
    for bad, match in [(None, "not an AccuracyPredictor state"),
                       ({**state, "format": "other"}, "not an AccuracyPredictor state"),
                       ({"format": state["format"], "meta_json": state["meta_json"]}, "not an AccuracyPredictor state"),
                       ({**state, "meta_json": b"{}"}, "must be JSON strings"),
                       ({**state, "meta_json": state["meta_json"][:-5]}, "not JSON"),
                       ({**state, "model_json": state["model_json"][:100]}, "not JSON"),
                       ({**state, "model_json": "{}"}, "XGBoost cannot read the model")]:
        with pytest.raises(BadFileError, match=f"^{where}: .*{match}"):
            AccuracyPredictor.from_state(bad, tiny, where=where)


def test_predictor_records_its_feature_set(tiny, fitted):
    # fitted: 300 archs, default "auto" -> genes
    assert fitted.feature_set == "genes" and fitted.meta["feature_names"] == feature_names(tiny, "genes")
    assert fitted.booster.num_features() == len(feature_names(tiny, "genes"))
    rng = np.random.default_rng(0)
    idx = tiny.sample_indices(rng, 60)
    y = _formula_top1(tiny, idx, rng)
    # 60 measured archs alone: "all"; with the teacher's 2,000 pseudo-labelled archs: "genes".
    assert AccuracyPredictor.fit(tiny, idx, y, params=FAST, teacher="gp").feature_set == "genes"
    with_costs = AccuracyPredictor.fit(tiny, idx, y, params=FAST, teacher="none")
    assert with_costs.feature_set == "all" and with_costs.booster.num_features() == len(feature_names(tiny))


def test_the_library_default_teacher_is_the_configs(tiny):
    """One default (attentive.predictor.DEFAULT_TEACHER = "none", as in the training config); the GP teacher is
    asked for by name."""
    assert DEFAULT_TEACHER == "none" and TEACHERS == ("gp", "none")
    assert inspect.signature(AccuracyPredictor.fit).parameters["teacher"].default == DEFAULT_TEACHER
    assert inspect.signature(tune_params).parameters["teacher"].default == DEFAULT_TEACHER
    rng = np.random.default_rng(0)
    idx = tiny.sample_indices(rng, 20)
    default = AccuracyPredictor.fit(tiny, idx, _formula_top1(tiny, idx, rng), params=FAST)
    assert default.meta["teacher"] == {"kind": "none"}


def _smooth_top1(space, idx, rng, noise=0.05):
    """Smooth in the genes (a linear term plus an interaction with resolution), not a function of FLOPs."""
    u = idx / np.maximum(np.array(space.gene_sizes()) - 1, 1)
    weights = np.random.default_rng(42).normal(0, 0.5, idx.shape[1])
    sign = np.where(idx[:, 0] == len(space.gene_options[0]) - 1, 1.0, -1.0)
    return 85 + u @ weights + 2 * sign * u[:, 1:].mean(1) + rng.normal(0, noise, len(idx))


def test_gp_teacher_ranks_a_smooth_surface_better_from_few_archs(tiny):
    rng = np.random.default_rng(0)
    idx, held = tiny.sample_indices(rng, 60), tiny.sample_indices(rng, 300)
    y, truth = _smooth_top1(tiny, idx, rng), _smooth_top1(tiny, held, rng)
    taught = AccuracyPredictor.fit(tiny, idx, y, params=FAST, teacher="gp")
    alone = AccuracyPredictor.fit(tiny, idx, y, params=FAST, teacher="none")
    tau_taught, tau_alone = (kendalltau(p.predict(held), truth).statistic for p in (taught, alone))
    assert tau_taught > tau_alone + 0.08  # measured: 0.835 vs 0.670
    assert taught.meta["teacher"]["kind"] == "gp" and taught.meta["teacher"]["num_pseudo"] == DEFAULT_NUM_PSEUDO
    assert "RBF" in taught.meta["teacher"]["kernel"] and alone.meta["teacher"] == {"kind": "none"}
    assert taught.num_archs == alone.num_archs == 60  # pseudo-labelled archs are not measured archs


def test_teacher_pseudo_labels_are_the_gp_predictions_on_uniform_archs(tiny):
    rng = np.random.default_rng(1)
    idx = tiny.sample_indices(rng, 40)
    y = _smooth_top1(tiny, idx, rng)
    pseudo, labels, meta = gp_pseudo_labels(tiny, idx, y, 500, seed=3)
    np.testing.assert_array_equal(pseudo, tiny.sample_indices(np.random.default_rng(3), 500))
    gp = fit_gaussian_process(features(tiny, idx, "genes"), y, seed=3)
    np.testing.assert_allclose(labels, gp.predict(features(tiny, pseudo, "genes")), rtol=1e-10)
    assert meta == {"kind": "gp", "num_pseudo": 500, "kernel": str(gp[-1].kernel_)}
    with pytest.raises(ValueError, match="num_pseudo must be >= 1, got 0"):
        gp_pseudo_labels(tiny, idx, y, 0, seed=3)
    with pytest.raises(ValueError, match=r"unknown teacher 'forest'; allowed: \['gp', 'none'\]"):
        AccuracyPredictor.fit(tiny, idx, y, teacher="forest")


def test_gp_conditions_on_all_archs_when_hyperparameters_use_a_subset(tiny):
    rng = np.random.default_rng(2)
    idx = tiny.sample_indices(rng, 80)
    x, y = features(tiny, idx, "genes"), _smooth_top1(tiny, idx, rng, noise=0.0)
    subset_only = fit_gaussian_process(x[:20], y[:20], seed=0)
    all_rows = fit_gaussian_process(x, y, seed=0, hyper_max=20)
    err_subset = np.abs(subset_only.predict(x[20:]) - y[20:]).mean()
    err_all = np.abs(all_rows.predict(x[20:]) - y[20:]).mean()
    assert err_all < 0.5 * err_subset  # the other 60 archs are in the posterior, not only the 20 tuned on
    np.testing.assert_array_equal(all_rows.predict(x), fit_gaussian_process(x, y, seed=0, hyper_max=20).predict(x))


def test_fit_refuses_bad_targets_and_params(tiny):
    idx = tiny.sample_indices(np.random.default_rng(0), 5)
    with pytest.raises(ValueError, match=r"one accuracy per arch \(5\)"):
        AccuracyPredictor.fit(tiny, idx, [1.0, 2.0])
    with pytest.raises(ValueError, match="non-finite values at positions \\[2\\]"):
        AccuracyPredictor.fit(tiny, idx, [1.0, 2.0, np.nan, 3.0, 4.0])
    with pytest.raises(ValueError, match=r"unknown predictor parameter\(s\) \['depth'\]"):
        AccuracyPredictor.fit(tiny, idx, np.arange(5.0), params={"depth": 3})


def test_tune_params_picks_the_best_mean_cv_tau(tiny):
    rng = np.random.default_rng(0)
    idx = tiny.sample_indices(rng, 60)
    grid = {"n_estimators": [2, 60], "max_depth": [3]}
    best, rows = tune_params(tiny, idx, _formula_top1(tiny, idx, rng), grid=grid, folds=3, teacher="gp")
    assert len(rows) == 2 and best["n_estimators"] == 60
    assert best == max(rows, key=lambda r: r["kendall_tau"])["params"]


def test_metrics():
    true = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    m = regression_metrics(true + 1, true)
    assert [m["kendall_tau"], m["spearman_rho"], m["top10_overlap"], m["rmse"]] == pytest.approx([1.0] * 4)
    assert top_fraction_overlap(-true, true, 0.2) == 0.0
    assert np.isnan(regression_metrics(np.ones(10), true)["kendall_tau"])


# ---- stratified arch selection ------------------------------------------------------------------------------
def test_stratified_archs_cover_the_flops_range(tiny):
    archs = stratified_archs(tiny, 102, np.random.default_rng(0))
    assert archs[:2] == [tiny.min_arch(), tiny.max_arch()]
    assert len(set(archs)) == 102
    assert archs == stratified_archs(tiny, 102, np.random.default_rng(0))
    lo, hi = count_flops(tiny, tiny.min_arch()), count_flops(tiny, tiny.max_arch())
    deciles = np.histogram(count_flops_batch(tiny, archs[2:]), bins=10, range=(lo, hi))[0]
    # Uniform random archs crowd the middle and never reach the top of the range; these fill every decile.
    assert deciles.min() >= 8, deciles
    assert stratified_archs(tiny, 1, np.random.default_rng(0)) == [tiny.min_arch()]
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        stratified_archs(tiny, 5, 0)
    with pytest.raises(ValueError, match="positive integer"):
        stratified_archs(tiny, 0, np.random.default_rng(0))


# ---- resumable measurement -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_measurement(tiny):
    torch.manual_seed(0)
    supernet = Supernet(tiny).eval()
    splits = build_datasets("synthetic", "unused", synthetic_num_train=64, synthetic_num_test=8,
                            holdout_fraction=0.25, split_seed=0)
    calib = calibration_batches(splits, 8, 1, seed=0)
    loader = build_loader(splits.holdout, 16, train=False)
    small = tiny.min_arch()
    archs = [small] + [tiny.arch_from_indices([r] + tiny.arch_to_indices(small)[1:]) for r in (1,)]
    idx = tiny.arch_to_indices(small)
    for gene in (2, 3):  # wider stage widths: still small, distinct archs
        archs.append(tiny.arch_from_indices([*idx[:gene], 1, *idx[gene + 1:]]))
    return supernet, calib, loader, archs


def _lines(path):
    return path.read_text().splitlines()


def test_interrupted_collection_resumes_without_duplicates(tiny_measurement, tmp_path, monkeypatch):
    supernet, calib, loader, archs = tiny_measurement
    out = tmp_path / "measured.jsonl"
    bn_before = {k: v.clone() for k, v in supernet.state_dict().items()}
    arch_before = supernet.active_arch
    calls = []
    real_calibrated = collect.calibrated

    def crashing_calibrated(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 3:
            raise KeyboardInterrupt  # the run is killed while measuring the third arch
        return real_calibrated(*args, **kwargs)

    monkeypatch.setattr(collect, "calibrated", crashing_calibrated)
    with pytest.raises(KeyboardInterrupt):
        measure_archs(supernet, archs, calib, loader, out_path=out, progress=False, tag="t")
    assert len(_lines(out)) == 2
    # The supernet is left as found: weights, BN statistics, active arch.
    assert supernet.active_arch == arch_before
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, bn_before[k]), k
    first_rows = [json.loads(line) for line in _lines(out)]

    with open(out, "a") as f:
        f.write('{"arch": {"resolution": 2')  # torn last line from a crash mid-write
    calls.clear()
    monkeypatch.setattr(collect, "calibrated", lambda *a, **k: (calls.append(a[1]), real_calibrated(*a, **k))[1])
    with pytest.warns(RuntimeWarning, match="torn last line"):
        rows = measure_archs(supernet, archs, calib, loader, out_path=out, progress=False, tag="t")
    assert calls == archs[2:]  # only the unmeasured archs
    lines = [json.loads(line) for line in _lines(out)]
    assert len(lines) == 4 and lines[:2] == first_rows
    assert [r["arch"] for r in rows] == [a.to_dict() for a in archs]
    assert all(0.0 <= r["top1"] <= 100.0 and r["mflops"] > 0 and r["space_hash"] == supernet.space.hash
               for r in rows)
    assert read_rows(out, supernet.space) == rows
    # Measured again from scratch, the same archs give the same accuracies (deterministic evaluation).
    fresh = measure_archs(supernet, archs[:2], calib, loader, progress=False)
    assert [r["top1"] for r in fresh] == [r["top1"] for r in rows[:2]]
    # Nothing left to do: nothing measured.
    calls.clear()
    measure_archs(supernet, archs, calib, loader, out_path=out, progress=False, tag="t")
    assert calls == [] and len(_lines(out)) == 4


def test_per_image_results_agree_with_the_counts(tiny_measurement, tmp_path):
    from attentive.calibration import preserved_bn_state
    from attentive.evaluate import calibrated, count_correct, evaluate_arch

    supernet, calib, loader, archs = tiny_measurement
    rows = measure_archs(supernet, archs[:3], calib, loader, progress=False, keep_correct=True)
    for arch, row in zip(archs, rows):
        hits = row["correct"]
        assert hits.dtype == bool and hits.shape == (sum(len(labels) for _, labels in loader),)
        with preserved_bn_state(supernet):
            assert row["top1"] == 100.0 * hits.sum() / hits.size == evaluate_arch(supernet, arch, calib, loader)
            assert count_correct(calibrated(supernet, arch, calib), loader) == (int(hits.sum()), hits.size)
    plain = measure_archs(supernet, archs[:3], calib, loader, progress=False)
    assert [r["top1"] for r in plain] == [r["top1"] for r in rows] and "correct" not in plain[0]
    with pytest.raises(ValueError, match="keep_correct .* cannot resume from out_path"):
        measure_archs(supernet, archs[:1], calib, loader, out_path=tmp_path / "m.jsonl", keep_correct=True)


def test_collection_refuses_mixing_files(tiny_measurement, big, tmp_path):
    supernet, calib, loader, archs = tiny_measurement
    out = tmp_path / "m.jsonl"
    measure_archs(supernet, archs[:1], calib, loader, out_path=out, progress=False, tag="ckpt-a")
    with pytest.raises(ValueError, match="line 1: measured under tag 'ckpt-a'"):
        measure_archs(supernet, archs[:2], calib, loader, out_path=out, progress=False, tag="ckpt-b")
    with pytest.raises(ValueError, match=f"line 1: measured in another search space .*'attentivenas' has hash "
                                         f"{big.hash}"):
        read_rows(out, big)
    out.write_text(out.read_text() + "not json\n" + out.read_text())
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_rows(out, supernet.space)
    with pytest.raises(TypeError, match="list of image batches"):
        measure_archs(supernet, archs, iter(calib), loader, progress=False)


# ---- the retraining CLI ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    net = Supernet(tiny)
    save_atomic({"model": net.state_dict(), "space": tiny.to_dict(), "space_hash": tiny.hash, "num_classes": 10,
                 "config": {"data": {"name": "synthetic", "root": "unused", "holdout_fraction": 0.25,
                                     "split_seed": 0, "image_size": 28, "synthetic_num_train": 64}},
                 "epoch": 0, "step": 0, "predictor": None}, path)
    return path


def _write_rows(path, space, archs, top1, tag=None):
    with open(path, "w") as f:
        for a, t in zip(archs, top1):
            f.write(json.dumps({"arch": a.to_dict(), "mflops": count_flops(space, a), "top1": float(t),
                                "space_hash": space.hash, "tag": tag}) + "\n")


def _exit_code_and_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        retrain_main(argv)
    return e.value.code, capsys.readouterr().err


def test_retrain_cli_usage_errors_exit_2(checkpoint, big, tmp_path, capsys):
    base = ["--out", str(tmp_path / "out")]
    code, err = _exit_code_and_error(capsys, ["--checkpoint", str(checkpoint), "--num-archs", "5", *base])
    assert code == 2 and "gives 4 training and 1 held-out archs; at least 2 of each" in err
    code, err = _exit_code_and_error(capsys, ["--checkpoint", str(checkpoint), "--num-archs", "20",
                                              "--proxies", "ntk,zen", *base])
    assert code == 2 and "unknown proxy 'zen'; allowed: ntk, ntk_exact, grad_norm, synflow" in err
    code, err = _exit_code_and_error(capsys, ["--checkpoint", str(checkpoint), "--num-archs", "20",
                                              "--repeats", "0", *base])
    assert code == 2 and "--repeats must be >= 1, got 0" in err
    code, err = _exit_code_and_error(capsys, ["--checkpoint", str(checkpoint), "--num-archs", "20",
                                              "--repeats", "5", *base])
    assert code == 2 and "--repeats 5 averages the --sizes table over random splits; give --sizes too" in err
    code, err = _exit_code_and_error(capsys, ["--checkpoint", str(checkpoint), "--num-archs", "20",
                                              "--sizes", "10,50", *base])
    assert code == 2 and "--sizes [50] exceed the 16 training archs" in err
    code, err = _exit_code_and_error(capsys, ["--checkpoint", str(checkpoint), "--num-archs", "20",
                                              "--device", "tpu", *base])
    assert code == 2 and "--device: unknown device 'tpu'; allowed: auto, cpu, cuda, cuda:N" in err
    assert not (tmp_path / "out").exists()  # nothing written by a refused run


def _bad_file_refused(capsys, argv, path, reason):
    """The CLI exits 2 with `prog: error: PATH: reason`."""
    code, err = _exit_code_and_error(capsys, argv)
    assert code == 2 and f"python -m predictors.retrain: error: {path}: " in err and reason in err, err


def test_retrain_measures_channels_last_on_cpu_unless_told(checkpoint, tmp_path):
    from predictors.retrain import get_args_parser, options_from_args

    base = ["--checkpoint", str(checkpoint), "--num-archs", "20", "--out", str(tmp_path)]
    parse = get_args_parser().parse_args
    assert options_from_args(parse(base)).channels_last is True  # --device cpu by default: as search.py measures
    assert options_from_args(parse([*base, "--no-channels-last"])).channels_last is False
    assert options_from_args(parse([*base, "--channels-last"])).channels_last is True


def test_retrain_calibrates_as_search_does_by_default(checkpoint, tmp_path, monkeypatch):
    """Without calibration flags the labels are measured with search.py's defaults: DEFAULT_CALIB_BATCHES batches
    of the checkpoint's training batch size (128 when its config has none)."""
    import search as search_cli
    from attentive.data import DEFAULT_CALIB_BATCHES, default_calib_batch_size
    from predictors.retrain import get_args_parser, options_from_args

    assert (default_calib_batch_size({"batch_size": 32}), default_calib_batch_size({})) == (32, 128)
    base = ["--checkpoint", str(checkpoint), "--num-archs", "20", "--out", str(tmp_path)]
    search_args = search_cli.get_args_parser().parse_args(["--checkpoint", "c.pt", "--budgets", "5", "--out", "o"])
    options = options_from_args(get_args_parser().parse_args(base))
    assert options.calib_batches == search_args.calib_batches == DEFAULT_CALIB_BATCHES
    assert options.calib_batch_size is None and search_args.calib_batch_size is None  # both: from the checkpoint
    seen = {}

    class Stop(Exception):
        pass

    def capture(options, *args, **kwargs):
        seen["options"] = options
        raise Stop

    collect_rows = compare.collect_rows
    monkeypatch.setattr(compare, "collect_rows", capture)
    with pytest.raises(Stop):
        compare.retrain(options)
    assert (seen["options"].calib_batches, seen["options"].calib_batch_size) == (DEFAULT_CALIB_BATCHES, 128)
    with pytest.raises(ValueError, match="calib_batch_size is None"):  # the library never tags rows unresolved
        collect_rows(options, None, None, [{}] * 20, lambda: None)


def test_retrain_cli_refuses_bad_checkpoints_by_name(checkpoint, tiny, tmp_path, capsys):
    argv = ["--num-archs", "20", "--out", str(tmp_path / "out"), "--no-progress"]
    missing = tmp_path / "missing.pt"
    _bad_file_refused(capsys, ["--checkpoint", str(missing), *argv], missing, "no such checkpoint file")
    truncated = tmp_path / "truncated.pt"
    data = checkpoint.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    _bad_file_refused(capsys, ["--checkpoint", str(truncated), *argv], truncated, "not a readable checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    _bad_file_refused(capsys, ["--checkpoint", str(foreign), *argv], foreign, "not an attentive supernet checkpoint")
    # A checkpoint whose config cannot rebuild its training data: refused when measuring needs the data.
    no_data = tmp_path / "no_data.pt"
    ckpt = torch.load(checkpoint, weights_only=True)
    save_atomic({**ckpt, "config": {}}, no_data)
    _bad_file_refused(capsys, ["--checkpoint", str(no_data), *argv], no_data,
                      "cannot rebuild the held-out split of its training data from its config")


def test_retrain_cli_refuses_foreign_and_corrupt_measured_files_by_name(checkpoint, tiny, big, tmp_path, capsys):
    argv = ["--checkpoint", str(checkpoint), "--num-archs", "20", "--out", str(tmp_path / "out"), "--no-progress"]
    other = tmp_path / "other_space.jsonl"
    _write_rows(other, big, [big.min_arch()], [50.0])
    _bad_file_refused(capsys, [*argv, "--data", str(other)], other,
                      f"line 1: measured in another search space (hash {big.hash})")
    corrupt = tmp_path / "corrupt.jsonl"
    corrupt.write_text("this is not json\n")
    _bad_file_refused(capsys, [*argv, "--data", str(corrupt)], corrupt, "line 1: not valid JSON")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\x80\x81\xfe\n")
    _bad_file_refused(capsys, [*argv, "--data", str(binary)], binary, "not a measured-archs JSONL file")
    not_rows = tmp_path / "not_rows.jsonl"
    not_rows.write_text('{"arch": 1}\n')
    _bad_file_refused(capsys, [*argv, "--data", str(not_rows)], not_rows, "line 1: a row needs keys")
    # Rows of this space measured under another checkpoint or setting: refused before appending to them.
    other_tag = tmp_path / "other_tag.jsonl"
    _write_rows(other_tag, tiny, [tiny.min_arch()], [50.0], tag="ckpt=0123;calib=1x8")
    _bad_file_refused(capsys, [*argv, "--data", str(other_tag)], other_tag, "line 1: measured under tag 'ckpt=0123")
    assert len(_lines(other_tag)) == 1


def test_retrain_reuses_measured_rows_only_of_its_own_setting(checkpoint, tiny, tmp_path, capsys, monkeypatch):
    archs = stratified_archs(tiny, 20, np.random.default_rng(0))
    top1 = np.linspace(80, 90, len(archs))
    whole = measurement_tag(checkpoint, 10, 64)  # the whole held-out split
    data = tmp_path / "rows.jsonl"
    _write_rows(data, tiny, archs, top1, tag=whole)
    existing = compare.read_measured(data, tiny)

    def no_measuring(*args, **kwargs):
        raise AssertionError("enough rows were measured: nothing is measured again")

    monkeypatch.setattr(compare, "measure_archs", no_measuring)
    splits = datasets_from_config(torch.load(checkpoint, weights_only=True)["config"]["data"], num_classes=10)
    assert len(splits.holdout) == 16

    def collect(**changes):
        options = RetrainOptions(checkpoint=checkpoint, num_archs=20, out=tmp_path, data=data, progress=False,
                                 **{"calib_batches": 10, "calib_batch_size": 64, **changes})
        return compare.collect_rows(options, None, tiny, existing, lambda: splits)

    assert [r["top1"] for r in collect()] == pytest.approx(top1)  # the same setting: reused as they are
    assert len(collect(holdout_images=100)) == 20  # more images than the split has: the whole split, reused
    for changes, reason in (({"calib_batches": 4}, "calib=4x64"), ({"holdout_images": 8}, "holdout_images=8")):
        with pytest.raises(BadFileError, match=f"line 1: measured under tag '{whole}'.*{reason}"):
            collect(**changes)
    # The CLI: exit 2 naming the file, the file left as it was.
    argv = ["--checkpoint", str(checkpoint), "--num-archs", "20", "--out", str(tmp_path / "out"), "--data", str(data),
            "--calib-batches", "4", "--calib-batch-size", "64", "--no-progress"]
    _bad_file_refused(capsys, argv, data, f"line 1: measured under tag '{whole}'")
    assert len(_lines(data)) == 20


def test_retrain_calibrates_on_plain_images_of_the_checkpoint_splits(checkpoint, tiny, tmp_path, monkeypatch):
    data = torch.load(checkpoint, weights_only=True)["config"]["data"]
    assert "augment" not in data  # so the config default applies: basic, augmented training images
    seen = {}

    def fake_measure(supernet, archs, calib, loader, **kwargs):  # records what BN would be recalibrated on
        seen["calib"] = calib
        return []

    monkeypatch.setattr(compare, "measure_archs", fake_measure)
    options = RetrainOptions(checkpoint=checkpoint, num_archs=3, out=tmp_path, data=tmp_path / "rows.jsonl",
                             calib_batch_size=8, calib_batches=3, batch_size=16, progress=False)
    calibs = {}
    for augment in ("default", "basic", "none"):
        cfg = dict(data) if augment == "default" else {**data, "augment": augment}
        splits = datasets_from_config(cfg, num_classes=10)
        assert (splits.train.pad > 0) == (augment != "none")
        compare.collect_rows(options, None, tiny, [], lambda: splits)
        calibs[augment] = torch.cat(seen["calib"])
        positions = torch.randperm(len(splits.train_plain), generator=torch.Generator().manual_seed(0))[:24]
        expected = torch.stack([splits.train_plain[int(i)][0] for i in positions])
        assert torch.equal(calibs[augment], expected)  # retrain's fixed calibration seed 0, un-augmented images
        if augment != "none":
            assert not torch.equal(calibs[augment], torch.stack([splits.train[int(i)][0] for i in positions]))
    # The same images whatever augmentation the supernet was trained with.
    assert torch.equal(calibs["default"], calibs["none"]) and torch.equal(calibs["basic"], calibs["none"])


def test_retrain_cli_end_to_end(checkpoint, tiny, tmp_path, capsys, monkeypatch):
    rebuilt = []

    def recording_datasets_from_config(data_cfg, **kwargs):
        rebuilt.append((data_cfg, kwargs))
        return datasets_from_config(data_cfg, **kwargs)

    monkeypatch.setattr(compare, "datasets_from_config", recording_datasets_from_config)
    rng = np.random.default_rng(0)
    archs = stratified_archs(tiny, 24, rng)[2:]  # 22 archs with known accuracies; 2 more get measured
    data = tmp_path / "measured.jsonl"
    _write_rows(data, tiny, archs, _formula_top1(tiny, archs, rng), tag=measurement_tag(checkpoint, 1, 8))
    out = tmp_path / "out"
    assert retrain_main(["--checkpoint", str(checkpoint), "--num-archs", "24", "--out", str(out), "--data", str(data),
                         "--holdout", "0.25", "--calib-batches", "1", "--calib-batch-size", "8", "--sizes", "8,18",
                         "--repeats", "3",
                         "--proxies", "grad_norm", "--proxy-batch-size", "4", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in ("xgboost", "random_forest", "mlp", "mflops (baseline)", "grad_norm"):
        assert name in printed
    assert len(_lines(data)) == 24  # the two missing archs were measured and appended
    # The checkpoint's data section, rebuilt once (measuring and proxies), with the supernet's class count.
    assert rebuilt == [(torch.load(checkpoint, weights_only=True)["config"]["data"], {"num_classes": 10})]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["num_train"], metrics["num_holdout"], metrics["space_hash"]) == (18, 6, tiny.hash)
    assert metrics["environment"]["packages"]["xgboost"] is not None  # what the labels were measured with
    models = {"xgboost", "xgboost_no_teacher", "random_forest", "mlp", "gaussian_process"}
    assert set(metrics["models"]) == models | {"mflops (baseline)"}
    assert set(metrics["sizes"]["8"]) == models and metrics["size_repeats"] == 3
    # Split 0 of the size table is the main split: fit on all 18 training archs it reproduces the main table's
    # tau exactly; the other two splits redraw the held-out archs, so their taus differ.
    per_split = metrics["sizes_per_split"]["18"]["xgboost"]
    assert len(per_split) == 3 and per_split[0] == metrics["models"]["xgboost"]["kendall_tau"]
    assert len(set(per_split)) > 1 and metrics["sizes"]["18"]["xgboost"] == pytest.approx(np.mean(per_split))
    assert metrics["sizes_std"]["18"]["xgboost"] == pytest.approx(np.std(per_split))
    assert -1 <= metrics["proxies"]["grad_norm"]["kendall_tau"] <= 1
    predictor = AccuracyPredictor.load(out, tiny)
    assert predictor.num_archs == 18
    assert predictor.meta["metrics"]["holdout"]["kendall_tau"] == metrics["models"]["xgboost"]["kendall_tau"]
    assert (out / "pred_vs_true.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_fit_on_constant_accuracies_saves_strict_json(tmp_path):
    """Kendall tau of constant targets is undefined: the predictor's metadata says null, and it saves and loads
    (a short training run on synthetic data measured equal top-1 for every subnet and could not save it)."""
    space = load_space("tiny")
    archs = [space.sample(np.random.default_rng(i)) for i in range(6)]
    predictor = AccuracyPredictor.fit(space, archs, np.full(6, 10.0), teacher="none")
    assert predictor.meta["metrics"]["train"]["kendall_tau"] is None
    predictor.save(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "meta.json").read_text())["metrics"]["train"]["kendall_tau"] is None
    np.testing.assert_array_equal(AccuracyPredictor.load(tmp_path / "p", space).predict(archs), predictor.predict(archs))
