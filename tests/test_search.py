"""Evolutionary and Pareto search (attentive.search), search-and-select (attentive.select), reports
(attentive.report) and the search.py command line."""
import csv
import json

import numpy as np
import pytest
import torch

import search as search_cli
from attentive import Supernet, count_flops, count_flops_batch, load_space
from attentive.checkpoint import save_atomic
from attentive.data import calibration_batches, datasets_from_config
from attentive.export import load_subnet
from attentive.fileio import BadFileError
from attentive.mutation import crossover_indices, mutate_indices
from attentive.scoring import IndexScorer
from attentive.search import (Objective, evolve, evolve_search, flops_range, hypervolume, non_dominated,
                              pareto_search, repair)
from attentive.select import SearchObjective, SelectOptions, selection_data
from attentive.space import Arch, space_from_dict


# ---- a reduced space small enough to brute-force ----------------------------------------------------------------
def _reduced_space():
    d = load_space("tiny").to_dict()
    d["name"] = "tiny_reduced"
    d["stages"] = d["stages"][:4]
    d["stages"][0].update(kernel_sizes=[3])
    d["stages"][1].update(expand_ratios=[2, 4], depths=[1, 2, 3])
    d["stages"][2].update(expand_ratios=[3, 6])
    d["stages"][3].update(expand_ratios=[3, 6], depths=[1, 2])
    return space_from_dict(d)


@pytest.fixture(scope="module")
def brute():
    """Every arch of the reduced space (294,912), its MFLOPs and a known score: each option of every gene adds a
    fixed positive amount over the smaller options (more width, depth, kernel, expansion, resolution = better,
    at a known FLOPs cost), so the optimum under a budget is a knapsack only brute force knows."""
    space = _reduced_space()
    sizes = np.array(space.gene_sizes())
    every = np.stack(np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij"), -1).reshape(-1, len(sizes))
    rng = np.random.default_rng(7)
    tables = [np.concatenate([[0.0], np.cumsum(rng.random(n - 1))]) for n in sizes]

    def score(idx):
        return sum(t[idx[:, g]] for g, t in enumerate(tables))

    return space, every, count_flops_batch(space, every), score(every), IndexScorer(score)


@pytest.mark.parametrize("quantile", [5, 30, 60, 95])
def test_evolve_reaches_brute_force_optimum(brute, quantile):
    space, every, flops, scores, score = brute
    budget = float(np.percentile(flops, quantile))
    best = scores[flops <= budget].max()
    arch, mflops, value = evolve(space, score, budget, seed=0)
    assert value == pytest.approx(best, abs=1e-9)
    assert mflops <= budget
    assert mflops == pytest.approx(count_flops(space, arch))
    assert score(np.array([space.arch_to_indices(arch)]))[0] == pytest.approx(value)


def test_evolve_is_deterministic_for_a_seed(brute):
    space, _, flops, _, score = brute
    budget = float(np.median(flops))
    kw = dict(generations=6, top_k=5)
    a, b = evolve_search(space, score, budget, seed=3, **kw), evolve_search(space, score, budget, seed=3, **kw)
    assert a.top == b.top and a.history == b.history and a.num_seen == b.num_seen
    c = evolve_search(space, score, budget, seed=4, **kw)
    assert c.history != a.history  # another seed is another run


def test_score_fn_gets_archs_by_default(brute):
    space, _, flops, _, score = brute
    seen_types = set()

    def arch_score(archs):
        seen_types.update(type(a) for a in archs)
        return score(np.array([space.arch_to_indices(a) for a in archs]))

    arch, _, value = evolve(space, arch_score, float(np.median(flops)), generations=2)
    assert seen_types == {Arch} and isinstance(arch, Arch)


def test_never_over_budget_and_top_k_distinct(space):
    rng = np.random.default_rng(0)
    noise = rng.random(len(space.gene_sizes()))

    def bigger_is_better(idx):  # pushes every child against the budget
        return count_flops_batch(space, idx) + idx @ noise

    lo, hi = flops_range(space)
    for budget in (lo, lo + 0.1 * (hi - lo), 0.5 * (lo + hi)):
        r = evolve_search(space, IndexScorer(bigger_is_better), budget, seed=1, generations=3, population=32,
                          top_k=8)
        assert all(c.mflops <= budget for c in r.top)
        assert all(count_flops(space, c.arch) <= budget for c in r.top)
        assert len({c.arch for c in r.top}) == len(r.top)
        assert [c.score for c in r.top] == sorted((c.score for c in r.top), reverse=True)
    # At the smallest budget only the min arch fits.
    assert evolve(space, IndexScorer(bigger_is_better), lo, generations=1)[0] == space.min_arch()


def test_repair_is_bounded_and_ends_at_min_arch(space):
    rng = np.random.default_rng(0)
    lo, hi = flops_range(space)
    rows = np.concatenate([space.sample_indices(rng, 500), [space.arch_to_indices(space.max_arch())]])
    budgets = lo + rng.random(len(rows)) * (hi - lo)
    budgets[-1] = lo
    fixed, flops = repair(space, rows, budgets, rng)
    assert (flops <= budgets).all()
    assert np.array_equal(flops, count_flops_batch(space, fixed))
    assert (fixed <= rows).all()  # repair only shrinks
    assert space.arch_from_indices(fixed[-1]) == space.min_arch()
    with pytest.raises(ValueError, match="below the smallest subnet"):
        repair(space, rows[:1], lo * 0.99, rng)


def test_budget_errors_and_clamping():
    space = load_space("tiny")
    lo, hi = flops_range(space)
    with pytest.raises(ValueError, match=f"below the smallest subnet.*{lo:.4g} MFLOPs"):
        evolve(space, lambda a: np.zeros(len(a)), lo * 0.9)
    for bad in (0, -1, float("nan"), float("inf"), "10"):
        with pytest.raises(ValueError, match="positive number"):
            evolve(space, lambda a: np.zeros(len(a)), bad)
    # A budget above the largest subnet searches the whole space: a monotone score gets the max arch.
    r = evolve_search(space, IndexScorer(lambda idx: count_flops_batch(space, idx)), hi * 10, generations=1)
    assert r.best.arch == space.max_arch() and r.max_mflops == pytest.approx(hi)


def test_bad_options_and_scores_are_named():
    space = load_space("tiny")
    with pytest.raises(TypeError, match="unknown search option.*popsize.*allowed"):
        evolve(space, lambda a: np.zeros(len(a)), 5, popsize=10)
    with pytest.raises(ValueError, match="population must be an integer >= 4"):
        evolve(space, lambda a: np.zeros(len(a)), 5, population=2)
    with pytest.raises(TypeError, match=r"unknown search option\(s\) \['score_input'\]"):
        evolve(space, lambda a: np.zeros(len(a)), 5, score_input="indices")  # an IndexScorer says that now
    with pytest.raises(ValueError, match="one score per arch"):
        evolve(space, lambda a: np.zeros(3), 5)
    with pytest.raises(ValueError, match="non-finite score"):
        evolve(space, lambda a: np.full(len(a), np.nan), 5)


def test_objective_scores_each_arch_once():
    space = load_space("tiny")
    calls = []

    def score(idx):
        calls.append(len(idx))
        return count_flops_batch(space, idx)

    objective = Objective(space, IndexScorer(score))
    r1 = evolve_search(space, objective, 5, generations=5)
    r2 = evolve_search(space, objective, 5, generations=5)  # same seed: all cached
    assert sum(calls) == objective.num_scored == r1.num_scored and r2.num_scored == 0
    assert r1.top == r2.top


# ---- Pareto front -----------------------------------------------------------------------------------------------
def test_non_dominated_and_hypervolume_by_hand():
    f = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    s = np.array([1.0, 3.0, 2.0, 3.0, 5.0, 4.0])
    assert non_dominated(f, s).tolist() == [0, 1, 4]
    # Reference (6, 0): 1*(2-1) + 3*(4-2) + 5*(6-4) = 17.
    assert hypervolume(f, s, (6.0, 0.0)) == pytest.approx(17.0)
    assert hypervolume(f, s, (6.0, 10.0)) == 0.0


def test_pareto_search_matches_brute_force_front(brute):
    space, every, flops, scores, score = brute
    reference = (float(flops.max()), float(scores.min()))
    true = non_dominated(flops, scores)
    true_hv = hypervolume(flops[true], scores[true], reference)
    result = pareto_search(space, score, seed=0, reference_score=reference[1])
    assert result.reference == reference
    assert result.hypervolume >= 0.995 * true_hv
    front_f = np.array([c.mflops for c in result.front])
    front_s = np.array([c.score for c in result.front])
    assert np.all(np.diff(front_f) > 0) and np.all(np.diff(front_s) > 0)  # sorted and non-dominated
    assert front_f[0] == pytest.approx(flops.min()) and front_s[-1] == pytest.approx(scores.max())
    again = pareto_search(space, score, seed=0, reference_score=reference[1])
    assert again.front == result.front and again.hypervolume == result.hypervolume


# ---- search.py --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained tiny supernet in the training-checkpoint format, on synthetic data, without a predictor.
    The last BN of each block gets random weights so that blocks are not identities."""
    root = tmp_path_factory.mktemp("ckpt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        supernet = Supernet("tiny")
        for block in supernet.blocks:
            torch.nn.init.normal_(block.bn3.weight, 0.0, 0.5)
    config = {"data": {"name": "synthetic", "root": str(root / "data"), "holdout_fraction": 0.25, "split_seed": 0,
                       "image_size": None, "augment": "basic", "batch_size": 16, "synthetic_num_train": 128,
                       "synthetic_num_test": 64}}
    path = root / "last.pt"
    save_atomic({"model": supernet.state_dict(), "space": supernet.space.to_dict(),
                 "space_hash": supernet.space.hash, "num_classes": 10, "config": config, "epoch": 0,
                 "step": 0, "predictor": None}, path)
    return path


def _stand_in(space):
    """Vectorized stand-in accuracy: log-FLOPs plus a fixed per-gene bonus."""
    bonus = np.random.default_rng(0).random(len(space.gene_sizes())) * 0.1

    def score(idx):
        return 50 + 5 * np.log(count_flops_batch(space, idx)) + idx @ bonus

    return score


def _args(*argv):
    return search_cli.get_args_parser().parse_args([str(a) for a in argv])


def test_cli_end_to_end(checkpoint, tmp_path):
    space = load_space("tiny")
    _, hi = flops_range(space)
    out = tmp_path / "out"
    budgets = [2, 5, 100]
    args = _args("--checkpoint", checkpoint, "--budgets", ",".join(map(str, budgets)), "--out", out,
                 "--calib-batches", 2, "--top-k", 3, "--front-measure", 4, "--no-onnx", "--no-progress",
                 "--generations", 6, "--population", 64, "--holdout-size", 24)
    summary = search_cli.run(args, SearchObjective(IndexScorer(_stand_in(space)), "score function given by the caller"))

    rows = json.loads((out / "pareto.json").read_text())["rows"]
    csv_lines = (out / "pareto.csv").read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1 and csv_lines[0].startswith("id,mflops,mparams,predicted,holdout_top1")
    assert (out / "pareto.png").stat().st_size > 10_000
    roles = {role for r in rows for role in r["roles"]}
    assert {"min", "max", "top1@2", "top3@5", "front"} <= roles
    assert any(r["on_front"] for r in rows) and any(r["on_predicted_front"] for r in rows)
    # Every measured arch has a held-out top-1; only exported ones have a test top-1.
    for r in rows:
        assert (r["holdout_top1"] is not None) == bool(r["roles"])
        assert (r["test_top1"] is not None) == bool(r["exported_for_mflops"])

    for b in budgets:
        d = out / f"subnet_{b:g}mflops"
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["mflops"] <= b and metrics["fvcore_mflops"] <= b
        assert metrics["fvcore_mflops"] == pytest.approx(metrics["mflops"])
        assert 0 <= metrics["test_top1"] <= 100 and 0 <= metrics["holdout_top1"] <= 100
        assert metrics["budget_mflops"] == b and metrics["space_hash"] == space.hash
        # The exported arch is the best held-out arch among the measured ones that fit the budget.
        candidates = [r for r in rows if r["holdout_top1"] is not None and r["mflops"] <= b]
        assert {f"top{k}@{b:g}" for k in (1, 2, 3)} <= {role for r in candidates for role in r["roles"]}
        exported = [r for r in candidates if b in r["exported_for_mflops"]]
        assert len(exported) == 1
        choice = summary["budgets"][f"{b:g}"]["choice"]
        assert metrics["search_choice"] == choice and choice["tie_z"] == summary["tie_z"] == SelectOptions.tie_z
        best = [r for r in candidates if r["id"] == choice["best_measured_id"]]
        assert best[0]["holdout_top1"] == max(r["holdout_top1"] for r in candidates)
        if exported[0] is not best[0]:  # a larger arch, behind the best by no more than the noise allows
            assert exported[0]["mflops"] > best[0]["mflops"]
            assert best[0]["holdout_top1"] - exported[0]["holdout_top1"] == pytest.approx(choice["behind_best_points"])
            assert choice["behind_best_points"] <= choice["tie_z"] * choice["standard_error_points"]
        assert json.loads((d / "arch.json").read_text()) == exported[0]["arch"]
        net = load_subnet(d)
        assert net(torch.zeros(2, 3, 28, 28)).shape == (2, 10)
        assert summary["budgets"][f"{b:g}"]["test_top1"] == metrics["test_top1"]
    assert summary["budgets"]["100"]["search"]["clamped_to_mflops"] == pytest.approx(hi)
    assert summary["rerank_holdout_images"] == 24 and summary["holdout_images"] == 32
    assert not list(tmp_path.glob(".out.*"))  # no temporary directory left behind


def test_export_choice_bench_replays_the_search(checkpoint, tmp_path, capsys):
    """bench/export_choice.py re-measures a finished search's candidates to the last image and, at the search's
    tie_z, chooses the archs the search exported."""
    import importlib
    import sys

    sys.path.insert(0, str(search_cli.__file__).rsplit("/", 1)[0] + "/bench")
    export_choice = importlib.import_module("export_choice")
    space = load_space("tiny")
    out = tmp_path / "out"
    summary = search_cli.run(_args("--checkpoint", checkpoint, "--budgets", "2,5", "--out", out, "--calib-batches", 2,
                                   "--top-k", 2, "--front-measure", 0, "--no-onnx", "--no-progress",
                                   "--generations", 2, "--population", 16),
                             SearchObjective(IndexScorer(_stand_in(space)), "stand-in"))
    capsys.readouterr()
    assert export_choice.main([str(out), "--tie-z", f"0,{summary['tie_z']}", "--folds", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"{summary['archs_measured']} measured archs, budgets 2, 5; re-measured held-out top-1 differs from " \
           f"pareto.json by at most 0.0000" in printed
    replayed = printed.split(f"tie_z {summary['tie_z']:g}\n")[1].splitlines()[0]
    mflops = " / ".join(f"{summary['budgets'][b]['mflops']:.2f}" for b in ("2", "5"))
    test_top1 = " / ".join(f"{summary['budgets'][b]['test_top1']:.2f}" for b in ("2", "5"))
    assert f"MFLOPs {mflops};" in replayed and f"test {test_top1};" in replayed
    assert "tie_z | cross-fold held-out top-1" in printed
    for bad in ("-1", "1,x"):
        with pytest.raises(SystemExit) as exit_info:
            export_choice.main([str(out), "--tie-z", bad])
        assert exit_info.value.code == 2 and "--tie-z: give numbers >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        export_choice.main([str(tmp_path)])
    assert exit_info.value.code == 2 and f"{tmp_path}: no search.json and pareto.json here" in capsys.readouterr().err


def test_cli_export_arch(checkpoint, tmp_path):
    space = load_space("tiny")
    arch = space.sample(np.random.default_rng(1))
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(arch.to_json())
    mflops = count_flops(space, arch)
    out = tmp_path / "one"
    assert search_cli.main(["--checkpoint", str(checkpoint), "--export-arch", str(arch_file), "--max-mflops",
                            f"{mflops + 0.01}", "--out", str(out), "--calib-batches", "1", "--no-onnx"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert Arch.from_dict(metrics["arch"]) == arch and metrics["mflops"] == pytest.approx(mflops)


def _usage_error(capsys, argv, *fragments):
    assert search_cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err


def test_cli_usage_errors(checkpoint, tmp_path, capsys):
    space = load_space("tiny")
    lo, hi = flops_range(space)
    out = tmp_path / "out"
    base = ["--checkpoint", checkpoint, "--out", out]
    _usage_error(capsys, [*base, "--budgets", "0.5,5"], "below the smallest subnet", f"{lo:.4g} MFLOPs")
    _usage_error(capsys, [*base, "--budgets", "5,abc"], "'abc' is not a number")
    _usage_error(capsys, [*base, "--budgets", "5"], "stores no accuracy predictor", "--predictor", "--proxy")
    _usage_error(capsys, ["--checkpoint", tmp_path / "missing.pt", "--out", out, "--budgets", "5"],
                 "no such checkpoint file")
    _usage_error(capsys, [*base, "--budgets", "5", "--space", "attentivenas"], "not of space attentivenas")
    _usage_error(capsys, [*base, "--budgets", "5", "--device", "gpu0"], "--device", "unknown device 'gpu0'",
                 "auto, cpu, cuda, cuda:N")
    _usage_error(capsys, [*base, "--budgets", "5", "--tie-z", "-1"], "--tie-z must be a finite number >= 0")
    if not torch.cuda.is_available():
        _usage_error(capsys, [*base, "--budgets", "5", "--device", "cuda:0"], "--device", "CUDA is not available")
    big = tmp_path / "big.json"
    big.write_text(space.max_arch().to_json())
    _usage_error(capsys, [*base, "--export-arch", big, "--max-mflops", 5], f"{hi:.4g} MFLOPs, over --max-mflops 5")
    _usage_error(capsys, [*base, "--export-arch", big], "needs --max-mflops")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**space.max_arch().to_dict(), "resolution": 32}))
    _usage_error(capsys, [*base, "--export-arch", bad, "--max-mflops", 50], "resolution 32 not allowed")
    out.mkdir()
    _usage_error(capsys, [*base, "--budgets", "5"], "already exists", "--force")
    with pytest.raises(SystemExit) as e:  # argparse's own errors exit 2 as well
        search_cli.main(["--checkpoint", str(checkpoint)])
    assert e.value.code == 2


def test_cli_data_is_the_checkpoints_and_calibration_un_augmented(checkpoint, tmp_path):
    ckpt = torch.load(checkpoint, weights_only=True)
    assert ckpt["config"]["data"]["augment"] == "basic"
    args = _args("--checkpoint", checkpoint, "--budgets", 5, "--out", tmp_path / "out", "--calib-batches", 2)
    splits = search_cli.build_data(args, ckpt, 10)
    expected = datasets_from_config(ckpt["config"]["data"], num_classes=10)
    assert torch.equal(splits.holdout.indices, expected.holdout.indices) and splits.train.pad > 0
    options = SelectOptions(calib_batches=2, calib_batch_size=16, holdout_size=5)
    data = selection_data(splits, options, torch.device("cpu"))
    calib = data.calib
    assert [x.shape[0] for x in calib] == [16, 16]  # the checkpoint's batch size
    assert (data.rerank_images, data.holdout_images, data.test_images) == (5, 32, 64) and data.channels_last
    assert all(torch.equal(x, y) for x, y in zip(calib, calibration_batches(expected, 16, 2, seed=args.seed)))
    plain = torch.stack([splits.train_plain[i][0] for i in range(len(splits.train_plain))])
    assert all(any(torch.equal(image, p) for p in plain) for image in torch.cat(calib))  # none pad-cropped
    bad = _args("--checkpoint", checkpoint, "--budgets", 5, "--out", tmp_path / "out", "--data-root", tmp_path)
    ckpt["config"]["data"]["name"] = "mnist3d"
    with pytest.raises(search_cli.UsageError, match="cannot rebuild the checkpoint's data .*pass --data-root"):
        search_cli.build_data(bad, ckpt, 10)


def test_cli_with_saved_predictor(checkpoint, tmp_path, capsys):
    xgb = pytest.importorskip("predictors.xgb")
    space = load_space("tiny")
    idx = space.sample_indices(np.random.default_rng(0), 200)
    predictor = xgb.AccuracyPredictor.fit(space, idx, _stand_in(space)(idx), params={"n_estimators": 50},
                                          teacher="gp")
    predictor.save(tmp_path / "pred")
    out = tmp_path / "out"
    argv = ["--checkpoint", checkpoint, "--budgets", "3", "--out", out, "--predictor", tmp_path / "pred",
            "--calib-batches", 1, "--top-k", 2, "--front-measure", 0, "--generations", 2, "--population", 32,
            "--no-onnx", "--no-progress"]
    assert search_cli.main([str(a) for a in argv]) == 0
    assert json.loads((out / "subnet_3mflops" / "metrics.json").read_text())["mflops"] <= 3
    # A predictor of another space is refused with exit status 2.
    other = load_space("attentivenas")
    oidx = other.sample_indices(np.random.default_rng(0), 20)
    xgb.AccuracyPredictor.fit(other, oidx, np.arange(20.0), params={"n_estimators": 5},
                              teacher="gp").save(tmp_path / "other")
    argv[argv.index(tmp_path / "pred")] = tmp_path / "other"
    _usage_error(capsys, [*argv, "--force"], "--predictor", "space")


def test_cli_training_free_proxy(checkpoint, tmp_path):
    pytest.importorskip("predictors.proxies")
    out = tmp_path / "out"
    argv = ["--checkpoint", checkpoint, "--budgets", "4", "--out", out, "--proxy", "grad_norm", "--proxy-nu", 1e6,
            "--proxy-batch-size", 8, "--calib-batches", 1, "--top-k", 2, "--front-measure", 0, "--generations", 0,
            "--population", 4, "--no-onnx", "--no-progress"]
    assert search_cli.main([str(a) for a in argv]) == 0
    summary = json.loads((out / "search.json").read_text())
    assert summary["objective"].startswith("proxy grad_norm, NASI penalty mu=2 nu=1e+06")
    assert json.loads((out / "subnet_4mflops" / "metrics.json").read_text())["mflops"] <= 4


def test_each_budget_exports_the_best_measured_arch_and_the_cheaper_one_of_a_tie():
    from attentive.select import choose_per_budget

    rows = [{"id": "min", "mflops": 1.09, "holdout_top1": 89.45, "predicted": 89.4},
            {"id": "mid", "mflops": 4.98, "holdout_top1": 89.45, "predicted": 91.2},  # ties the min net: not chosen
            {"id": "mid_better", "mflops": 6.1, "holdout_top1": 89.75, "predicted": 91.3},
            {"id": "big", "mflops": 7.88, "holdout_top1": 91.15, "predicted": 91.4}]
    chosen = choose_per_budget(rows, [3, 5, 7, 8])
    assert {b: c.row["id"] for b, c in chosen.items()} == {3: "min", 5: "min", 7: "mid_better", 8: "big"}
    assert all(c.row is c.best and c.behind == 0 for c in chosen.values())
    with pytest.raises(ValueError, match="budget of 1 MFLOPs"):
        choose_per_budget(rows, [1])


def _correct(n, wrong):
    hits = np.ones(n, dtype=bool)
    hits[list(wrong)] = False
    return hits


def test_ties_within_paired_noise_go_to_the_larger_arch():
    from attentive.select import choose_per_budget

    n = 1000
    # small: wrong on images 0-99 (90.0); near: also wrong on 100-101 and right on 0 (89.9, one image behind, 3
    # discordant images); far: wrong on 100-139 besides (86.0: 40 images behind, far outside the noise).
    correct = {"small": _correct(n, range(100)), "near": _correct(n, range(1, 102)),
               "far": _correct(n, range(140))}
    rows = [{"id": k, "mflops": m, "holdout_top1": 100.0 * correct[k].mean(), "predicted": 0.0}
            for k, m in (("small", 2.0), ("near", 4.5), ("far", 4.9))]
    assert [r["holdout_top1"] for r in rows] == pytest.approx([90.0, 89.9, 86.0])
    strict = choose_per_budget(rows, [3, 5])
    assert [c.row["id"] for c in strict.values()] == ["small", "small"]
    tied = choose_per_budget(rows, [3, 5], tie_z=1.0, correct=correct)
    assert [c.row["id"] for c in tied.values()] == ["small", "near"]  # far is too far behind, though larger
    c = tied[5]
    assert c.best["id"] == "small" and c.behind == pytest.approx(0.1)
    # Paired: 3 discordant images of 1000, differences +1, -1, -1 -> sd 1.155 / sqrt(1000)
    assert c.standard_error == pytest.approx(100 * np.std([1, -1, -1] + [0] * 997, ddof=1) / np.sqrt(n))
    assert c.to_dict()["best_measured_id"] == "small" and c.to_dict()["tie_z"] == 1.0
    # A tolerance smaller than the difference keeps the best.
    assert choose_per_budget(rows, [5], tie_z=c.behind / c.standard_error * 0.99, correct=correct)[5].row["id"] == \
        "small"
    with pytest.raises(ValueError, match=r"per-image correctness is missing for candidates \['far'\]"):
        choose_per_budget(rows, [5], tie_z=1.0, correct={k: v for k, v in correct.items() if k != "far"})
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tie_z must be a finite number >= 0"):
            choose_per_budget(rows, [5], tie_z=bad, correct=correct)
        with pytest.raises(ValueError, match="tie_z must be a finite number >= 0"):
            SelectOptions(budgets=(5,), tie_z=bad)


def test_paired_difference_counts_only_the_images_two_nets_disagree_on():
    from attentive.metrics import paired_difference

    a = _correct(400, range(40))  # 90.0
    b = _correct(400, range(30, 80))  # 87.5: 40 images only a gets right, 10 only b
    diff, se = paired_difference(a, b)
    d = a.astype(float) - b.astype(float)
    assert diff == pytest.approx(2.5) and se == pytest.approx(100 * d.std(ddof=1) / 20)
    assert paired_difference(a, a) == (0.0, 0.0)
    with pytest.raises(ValueError, match="same >= 2 images"):
        paired_difference(a, b[:-1])


# ---- refusals of bad files: exit 2, the file named --------------------------------------------------------------
def _refused(capsys, argv, path, *fragments):
    assert search_cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "search.py: error: " in err
    assert str(path) in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_cli_refuses_bad_checkpoints_by_name(checkpoint, tmp_path, capsys):
    base = ["--out", tmp_path / "out", "--budgets", "5", "--proxy", "ntk"]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    _refused(capsys, ["--checkpoint", truncated, *base], truncated, "not a readable checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    _refused(capsys, ["--checkpoint", foreign, *base], foreign, "not an attentive supernet checkpoint")
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["space"]["stages"][0]["kernel_sizes"] = [3]  # edited space: its hash no longer matches
    tampered = tmp_path / "tampered.pt"
    save_atomic(ckpt, tampered)
    _refused(capsys, ["--checkpoint", tampered, *base], tampered, "edited")
    no_data = tmp_path / "no_data.pt"
    save_atomic({**torch.load(checkpoint, weights_only=True), "config": {}}, no_data)
    _refused(capsys, ["--checkpoint", no_data, *base], no_data, "config['data']")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_bad_predictors_and_arch_files_by_name(checkpoint, tmp_path, capsys):
    xgb = pytest.importorskip("predictors.xgb")
    space = load_space("tiny")
    idx = space.sample_indices(np.random.default_rng(0), 40)
    good = tmp_path / "pred"
    xgb.AccuracyPredictor.fit(space, idx, np.arange(40.0), params={"n_estimators": 5}).save(good)
    base = ["--checkpoint", checkpoint, "--out", tmp_path / "out", "--budgets", "5", "--predictor"]
    _refused(capsys, [*base, tmp_path / "missing"], tmp_path / "missing", "no such predictor directory")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    for name in ("model.json", "meta.json"):
        (truncated / name).write_bytes((good / name).read_bytes())
    (truncated / "model.json").write_bytes((good / "model.json").read_bytes()[:100])
    _refused(capsys, [*base, truncated], truncated / "model.json", "not JSON")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.json").write_text("{}")
    (foreign / "meta.json").write_text(json.dumps({"format": "something else"}))
    _refused(capsys, [*base, foreign], foreign / "meta.json", "not an attentive accuracy predictor")

    export = ["--checkpoint", checkpoint, "--out", tmp_path / "one", "--max-mflops", "50", "--export-arch"]
    _refused(capsys, [*export, tmp_path / "none.json"], tmp_path / "none.json", "arch file not found")
    not_json = tmp_path / "arch.json"
    not_json.write_text('{"depth": [1, ')
    _refused(capsys, [*export, not_json], not_json, "not a readable JSON arch file")
    assert not (tmp_path / "out").exists() and not (tmp_path / "one").exists()


# ---- the library behind search.py: attentive.select, attentive.report, attentive.mutation ----------------------
def test_mutation_draws_are_pinned():
    """The one mutation of gene-index arrays (searches and in-bucket sampling): two rng.random(shape) draws, in
    this order; genes with one option never change, a changed gene never keeps its option."""
    rng = np.random.Generator(np.random.PCG64(0))
    rows, sizes = np.array([[0, 1, 2, 0], [3, 0, 1, 0]]), np.array([4, 2, 3, 1])
    assert mutate_indices(rows, sizes, 0.5, rng).tolist() == [[0, 0, 1, 0], [3, 0, 1, 0]]
    assert crossover_indices(rows, rows[::-1], 0.5, rng).tolist() == [[3, 0, 2, 0], [3, 0, 2, 0]]
    assert rng.random() == 0.6153851114812539  # exactly 2 * 8 + 8 numbers drawn before
    many = np.random.Generator(np.random.PCG64(1)).integers(0, sizes, size=(500, 4))
    mutated = mutate_indices(many, sizes, 1.0, np.random.Generator(np.random.PCG64(2)))
    assert (mutated[:, 3] == 0).all() and (mutated[:, :3] != many[:, :3]).all() and (mutated < sizes).all()


def test_check_budgets_and_read_arch_file(tmp_path):
    from attentive.select import check_budgets, read_arch_file

    space = load_space("tiny")
    lo, _ = flops_range(space)
    assert check_budgets(space, [5, 2, 5.0, 3]) == [2.0, 3.0, 5.0]
    with pytest.raises(ValueError, match="below the smallest subnet"):
        check_budgets(space, [5, lo / 2])
    row = tmp_path / "row.json"
    row.write_text(json.dumps({"id": 3, "arch": space.max_arch().to_dict(), "mflops": 1.0}))  # a pareto.json row
    assert read_arch_file(row, space) == space.max_arch()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**space.min_arch().to_dict(), "resolution": 32}))
    with pytest.raises(BadFileError, match="resolution 32 not allowed") as e:
        read_arch_file(bad, space)
    assert e.value.path == bad


def test_candidate_rows_roles_scores_and_fronts():
    from attentive.select import SelectOptions, candidate_rows, mark_fronts, search_budgets

    space = load_space("tiny")
    objective = Objective(space, IndexScorer(_stand_in(space)))
    options = SelectOptions(top_k=3, front_measure=4, population=16, generations=2, progress=False)
    searched = search_budgets(space, objective, [2.0, 5.0], options)
    assert list(searched.per_budget) == [2.0, 5.0] and searched.evolution_options == {"population": 16,
                                                                                    "generations": 2}
    rows = candidate_rows(space, 10, objective, searched, options.front_measure)
    assert sorted(r["id"] for r in rows) == list(range(len(rows)))
    assert rows == sorted(rows, key=lambda r: (r["mflops"], r["id"]))
    by_arch = {Arch.from_dict(r["arch"]): r for r in rows}
    assert "min" in by_arch[space.min_arch()]["roles"] and "max" in by_arch[space.max_arch()]["roles"]
    for b, result in searched.per_budget.items():
        for k, c in enumerate(result.top):
            assert f"top{k + 1}@{b:g}" in by_arch[c.arch]["roles"] and by_arch[c.arch]["mflops"] <= b
    assert 1 <= sum("front" in r["roles"] for r in rows) <= 4
    assert {Arch.from_dict(r["arch"]) for r in rows} >= {c.arch for c in searched.front.front}
    for r in rows:  # every predicted score is the objective's, and MFLOPs/params are the counters'
        arch = Arch.from_dict(r["arch"])
        assert r["predicted"] == objective(np.array([space.arch_to_indices(arch)]))[0]
        assert r["mflops"] == count_flops(space, arch, 10)

    table = [{"mflops": f, "predicted": p, "holdout_top1": h, "on_front": False, "on_predicted_front": False}
             for f, p, h in [(1, 10, 50), (2, 12, 49), (3, 11, None), (4, 13, 60)]]
    mark_fronts(table)
    assert [r["on_predicted_front"] for r in table] == [True, True, False, True]
    assert [r["on_front"] for r in table] == [True, False, False, True]


def test_report_files_and_text(tmp_path):
    from attentive.report import CSV_COLUMNS, budget_dir_name, format_summary, rows_to_csv, write_pareto

    arch = load_space("tiny").min_arch().to_dict()
    rows = [{"id": 0, "arch": arch, "mflops": 1.0859681, "mparams": 0.25, "predicted": 53.2, "holdout_top1": 4.16666,
             "test_top1": None, "roles": ["min", "front"], "on_front": True, "on_predicted_front": True,
             "exported_for_mflops": [2.0, 2.5]},
            {"id": 1, "arch": arch, "mflops": 3.0, "mparams": 0.5, "predicted": None, "holdout_top1": None,
             "test_top1": None, "roles": [], "on_front": False, "on_predicted_front": False,
             "exported_for_mflops": []}]
    lines = rows_to_csv(rows).splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    assert lines[1].startswith("0,1.085968,0.250000,53.200000,4.1667,,1,1,min;front,2;2.5,")
    assert lines[2].startswith("1,3.000000,0.500000,,,,0,0,,,")
    assert json.loads(next(csv.reader(lines[1:2]))[-1]) == arch
    write_pareto(tmp_path, rows, [2.0, 2.5], space_name="tiny", space_hash="abc", objective="stand-in",
                 predicted_is_accuracy=True)
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    assert pareto["rows"] == rows and pareto["columns"] == list(CSV_COLUMNS) and pareto["predicted_is_accuracy"]
    assert (tmp_path / "pareto.csv").read_text() == rows_to_csv(rows)
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert budget_dir_name(2.5) == "subnet_2.5mflops" and budget_dir_name(100.0) == "subnet_100mflops"
    summary = {"budgets": {"2.5": {"dir": "subnet_2.5mflops", "mflops": 1.0859681, "fvcore_mflops": 1.0859681,
                                   "mparams": 0.25, "predicted": None, "holdout_top1": 4.16666, "test_top1": 7.0}},
               "predicted_front": {"hypervolume": 67.4812}, "measured_front": {"hypervolume": 114.6}, "seconds": 14.26}
    assert format_summary(summary).splitlines() == [
        "  budget   MFLOPs   fvcore  Mparams    pred  held-out    test  dir",
        "     2.5    1.086    1.086    0.250              4.17    7.00  subnet_2.5mflops",
        "predicted front hypervolume 67.48; measured front hypervolume 114.6; total 14.3s"]
