"""Search and export under latency budgets: constraints as costs (attentive.search), budgets in ms or MFLOPs and ms
(attentive.select), latency columns and plots (attentive.report), and search.py --latency-table/--budgets-ms.

The tables are real ones from `attentive.latency.build_table` at one repeat, without warm-up: the numbers are noise
of this machine, but the file is a valid table for the tiny space (the torch runtime builds in seconds). The
onnxruntime table is that table relabelled with the installed onnxruntime version, so that exports are measured on
their model.onnx without profiling 300 ONNX models first."""
import csv
import json

import numpy as np
import pytest
import torch

import search as search_cli
from attentive import count_flops, count_flops_batch, load_space
from attentive.latency import LatencyTable, build_table, runtime_version
from attentive.report import budget_dir_name, rows_to_csv
from attentive.scoring import IndexScorer
from attentive.search import (Constraint, Cost, cost_range, evolve_search, flops_cost, flops_range, pareto_search,
                              repair)
from attentive.select import (Budget, SearchObjective, check_select_budgets, choose_per_budget, latency_cost,
                              pair_budgets)
from attentive.space import Arch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny")


@pytest.fixture(scope="module")
def torch_table(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("latency") / "tiny_torch_b1.json"
    build_table(tiny, "torch", "cpu", 1, path, threads=1, warmup=0, repeats=1, progress=False)
    return path


@pytest.fixture(scope="module")
def ort_table(torch_table):
    pytest.importorskip("onnxruntime")
    data = json.loads(torch_table.read_text())
    data.update(runtime="onnxruntime", runtime_version=runtime_version("onnxruntime"))
    path = torch_table.parent / "tiny_ort_b1.json"
    path.write_text(json.dumps(data))
    return path


def _stand_in(space):
    """Vectorized stand-in accuracy: log-FLOPs plus a fixed per-gene bonus (as in test_search.py)."""
    bonus = np.random.default_rng(0).random(len(space.gene_sizes())) * 0.1
    return IndexScorer(lambda idx: 50 + 5 * np.log(count_flops_batch(space, idx)) + idx @ bonus)


def _ms_budgets(table, space, fractions):
    lo, hi = cost_range(space, latency_cost(table))
    return [round(lo + f * (hi - lo), 3) for f in fractions]


SMALL = ["--calib-batches", 1, "--top-k", 2, "--front-measure", 2, "--generations", 3, "--population", 32,
         "--holdout-size", 16, "--no-progress"]


def _run(checkpoint, out, *argv):
    args = search_cli.get_args_parser().parse_args([str(a) for a in ["--checkpoint", checkpoint, "--out", out,
                                                                      *argv, *SMALL]])
    return search_cli.run(args, SearchObjective(_stand_in(load_space("tiny")), "stand-in"))


# ---- the library: constraints as costs ---------------------------------------------------------------------------
def test_flops_only_searches_keep_their_numbers(tiny):
    """Pinned from the FLOPs-only code before constraints became costs: same rng draws, same archs and scores."""
    lo, hi = flops_range(tiny)
    r = evolve_search(tiny, _stand_in(tiny), lo + 0.3 * (hi - lo), seed=0, top_k=5, generations=6, population=64)
    assert r.num_seen == 351 and r.best.mflops == 4.267328 and r.max_mflops == pytest.approx(4.3165744)
    assert r.history == pytest.approx([58.341357767277934] * 3 + [58.3436549899515] + [58.556685997486674] * 3,
                                      rel=1e-12)
    assert r.best.arch == Arch.from_dict({"resolution": 28, "width": [16, 8, 16, 32, 48, 64, 80, 320],
                                          "depth": [2, 2, 1, 1, 1, 1], "kernel_size": [3, 5, 5, 3, 5, 3],
                                          "expand_ratio": [1, 3, 4, 6, 4, 6]})
    assert r.best.costs == () and "latency_ms" not in r.best.to_dict()
    p = pareto_search(tiny, _stand_in(tiny), seed=2, population=128, generations=8)
    assert (len(p.front), p.num_seen, p.axis) == (179, 1108, "mflops")
    assert p.hypervolume == pytest.approx(100.69767558061825, rel=1e-12)


def test_evolve_under_latency_and_both(tiny, torch_table):
    table = LatencyTable.load(torch_table, tiny)
    latency = latency_cost(table)
    lo, hi = cost_range(tiny, latency)
    budget = lo + 0.4 * (hi - lo)
    r = evolve_search(tiny, _stand_in(tiny), constraints=[Constraint(latency, budget)], seed=0, top_k=6,
                      generations=3, population=32)
    predicted = table.predict_batch(np.array([tiny.arch_to_indices(c.arch) for c in r.top]))
    assert [c.cost("latency_ms") for c in r.top] == predicted.tolist() and (predicted <= budget).all()
    assert r.max_mflops is None and r.budgets == {"latency_ms": pytest.approx(budget)}
    assert r.best.to_dict()["latency_ms"] == r.best.cost("latency_ms")
    f_lo, f_hi = flops_range(tiny)
    both = evolve_search(tiny, _stand_in(tiny), f_lo + 0.6 * (f_hi - f_lo), constraints=[Constraint(latency, budget)],
                         seed=0, top_k=6, generations=3, population=32)
    assert all(c.mflops <= both.max_mflops and c.cost("latency_ms") <= budget for c in both.top)
    assert set(both.budgets) == {"mflops", "latency_ms"}
    with pytest.raises(ValueError, match=f"below the smallest subnet of space 'tiny' .*{lo:.4g} ms, the min arch"):
        evolve_search(tiny, _stand_in(tiny), constraints=[Constraint(latency, lo * 0.9)])
    with pytest.raises(ValueError, match="each cost takes one budget"):
        evolve_search(tiny, _stand_in(tiny), constraints=[Constraint(latency, hi), Constraint(latency, hi)])
    with pytest.raises(ValueError, match="no constraint"):
        evolve_search(tiny, _stand_in(tiny))


def test_repair_under_two_costs_ends_at_the_min_arch(tiny):
    rng = np.random.default_rng(0)
    width = Cost("widths", "channels", lambda idx: idx.sum(1).astype(float) + 1.0)  # min arch: 1
    rows = np.concatenate([tiny.sample_indices(rng, 200), [tiny.arch_to_indices(tiny.max_arch())]])
    f_lo, f_hi = flops_range(tiny)
    fixed, mflops = repair(tiny, rows, f_hi * 0.5, rng, constraints=[Constraint(width, 6.0)])
    assert (mflops <= f_hi * 0.5).all() and (fixed.sum(1) + 1 <= 6).all() and (fixed <= rows).all()
    assert np.array_equal(mflops, count_flops_batch(tiny, fixed))
    fixed, _ = repair(tiny, rows, None, rng, constraints=[Constraint(width, 1.0)])
    assert (fixed == 0).all()  # only the min arch fits: repair shrank every row to it
    with pytest.raises(ValueError, match=r"budget 0.5 channels is below the smallest subnet"):
        repair(tiny, rows[:1], None, rng, constraints=[Constraint(width, 0.5)])


def test_pareto_front_against_latency(tiny, torch_table):
    table = LatencyTable.load(torch_table, tiny)
    latency = latency_cost(table)
    p = pareto_search(tiny, _stand_in(tiny), seed=0, axis=latency, population=64, generations=4)
    ms = np.array([c.cost("latency_ms") for c in p.front])
    scores = np.array([c.score for c in p.front])
    assert p.axis == "latency_ms" and np.all(np.diff(ms) > 0) and np.all(np.diff(scores) > 0)
    assert ms.tolist() == table.predict_batch(np.array([tiny.arch_to_indices(c.arch) for c in p.front])).tolist()
    assert p.reference[0] == pytest.approx(cost_range(tiny, latency)[1])
    # A FLOPs cap on a latency front: every arch of it keeps within the cap.
    f_lo, f_hi = flops_range(tiny)
    cap = f_lo + 0.3 * (f_hi - f_lo)
    capped = pareto_search(tiny, _stand_in(tiny), seed=0, axis=latency, constraints=[Constraint(flops_cost(tiny), cap)],
                           population=64, generations=4)
    assert all(c.mflops <= cap for c in capped.front + capped.archive)
    with pytest.raises(ValueError, match="min_mflops/max_mflops bound a FLOPs axis"):
        pareto_search(tiny, _stand_in(tiny), axis=latency, max_mflops=cap)


def test_budgets_pair_sort_fit_and_name(tiny, torch_table):
    assert pair_budgets([5, 3], [1.5, 2]) == [Budget(5.0, 1.5), Budget(3.0, 2.0)]
    assert pair_budgets([5], []) == [Budget(5.0)] and pair_budgets([], [2, 1]) == [Budget(None, 2.0), Budget(None, 1.0)]
    with pytest.raises(ValueError, match="2 MFLOPs budgets and 1 ms budgets: with both, give them in pairs"):
        pair_budgets([5, 3], [1.5])
    assert [(b.label, b.dir_name, b.describe()) for b in (Budget(5.0), Budget(None, 1.5), Budget(5.0, 1.5))] == [
        ("5", "subnet_5mflops", "5 MFLOPs"), ("1.5ms", "subnet_1.5ms", "1.5 ms"),
        ("5mflops_1.5ms", "subnet_5mflops_1.5ms", "5 MFLOPs and 1.5 ms")]
    assert budget_dir_name(2.5) == "subnet_2.5mflops"
    latency = latency_cost(LatencyTable.load(torch_table, tiny))
    lo, hi = cost_range(tiny, latency)
    assert check_select_budgets(tiny, [Budget(None, hi), 5, Budget(None, hi), 3], latency=latency) == [
        Budget(3.0), Budget(5.0), Budget(None, hi)]
    with pytest.raises(ValueError, match="needs a latency table"):
        check_select_budgets(tiny, [Budget(None, 2.0)])
    with pytest.raises(ValueError, match=f"below the smallest subnet.*{lo:.4g} ms"):
        check_select_budgets(tiny, [Budget(None, lo / 2)], latency=latency)
    rows = [{"id": "fast", "mflops": 4.0, "latency_ms": 1.0, "holdout_top1": 80.0, "predicted": 1.0},
            {"id": "slow_tie", "mflops": 3.0, "latency_ms": 1.4, "holdout_top1": 80.0, "predicted": 2.0},
            {"id": "best", "mflops": 6.0, "latency_ms": 1.9, "holdout_top1": 85.0, "predicted": 0.0}]
    chosen = choose_per_budget(rows, [Budget(None, 1.5), Budget(None, 2.0), Budget(5.0, 1.5), 5.0])
    assert [c.row["id"] for c in chosen.values()] == ["fast", "best", "slow_tie", "slow_tie"]  # ties: cheaper in the budget's cost
    with pytest.raises(ValueError, match="no measured arch fits the budget of 0.5 ms"):
        choose_per_budget(rows, [Budget(None, 0.5)])


def test_csv_gains_latency_columns_only_with_latency():
    row = {"id": 0, "arch": {"resolution": 24}, "mflops": 1.0, "mparams": 0.5, "predicted": None, "holdout_top1": None,
           "test_top1": None, "roles": [], "on_front": False, "on_predicted_front": False, "exported_for_mflops": []}
    assert "latency_ms" not in rows_to_csv([row]).splitlines()[0]
    text = rows_to_csv([{**row, "latency_ms": 1.25, "exported_for_ms": [1.5, 2.0]}])
    header, line = list(csv.reader(text.splitlines()))
    values = dict(zip(header, line))
    assert values["latency_ms"] == "1.250000" and values["exported_for_ms"] == "1.5;2"


# ---- search.py --------------------------------------------------------------------------------------------------
def _check_latency_metrics(metrics, table, table_path, measured_on):
    arch = Arch.from_dict(metrics["arch"])
    assert metrics["predicted_latency_ms"] == table.predict(arch)
    assert isinstance(metrics["measured_latency_ms"], float) and metrics["measured_latency_ms"] > 0
    assert metrics["latency_measured_on"] == measured_on
    identity = metrics["latency_table"]
    assert (identity["path"], identity["runtime"], identity["device"], identity["batch"], identity["threads"]) == (
        str(table_path), table.runtime, "cpu", 1, 1)


def test_search_under_ms_budgets_exports_each_within_budget(supernet_checkpoint, ort_table, tiny, tmp_path):
    table = LatencyTable.load(ort_table, tiny)
    budgets = _ms_budgets(table, tiny, [0.3, 0.7])
    out = tmp_path / "out"
    summary = _run(supernet_checkpoint, out, "--latency-table", ort_table, "--budgets-ms", ",".join(map(str, budgets)))
    pareto = json.loads((out / "pareto.json").read_text())
    rows = pareto["rows"]
    assert pareto["x_axis"] == "latency_ms" and pareto["latency_table"]["runtime"] == "onnxruntime"
    assert pareto["columns"][:4] == ["id", "mflops", "mparams", "latency_ms"] and "exported_for_ms" in pareto["columns"]
    assert (out / "pareto.csv").read_text().splitlines()[0].split(",") == pareto["columns"]
    assert (out / "pareto.png").stat().st_size > 10_000
    for r in rows:
        assert r["latency_ms"] == table.predict(Arch.from_dict(r["arch"]))
    assert summary["x_axis"] == "latency_ms" and summary["latency_range_ms"] == list(
        cost_range(tiny, latency_cost(table)))
    for b in budgets:
        d = out / f"subnet_{b:g}ms"
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["predicted_latency_ms"] <= b and metrics["budget_latency_ms"] == b
        assert metrics["under_latency_budget"] is True and metrics["budget_mflops"] is None
        _check_latency_metrics(metrics, table, ort_table, "model.onnx")
        assert (d / "model.onnx").is_file()
        # The export is the best held-out arch among the measured ones within the budget, or a slower one tied
        # with it (behind by at most tie_z paired standard errors).
        fits = [r for r in rows if r["holdout_top1"] is not None and r["latency_ms"] <= b]
        assert {f"top1@{b:g}ms", f"top2@{b:g}ms"} <= {role for r in fits for role in r["roles"]}
        exported = [r for r in fits if b in r["exported_for_ms"]]
        assert len(exported) == 1 and exported[0]["exported_for_mflops"] == []
        entry = summary["budgets"][f"{b:g}ms"]
        choice = entry["choice"]
        assert metrics["search_choice"] == choice and choice["tie_z"] == summary["tie_z"]
        best = [r for r in fits if r["id"] == choice["best_measured_id"]][0]
        assert best["holdout_top1"] == max(r["holdout_top1"] for r in fits)
        if exported[0] is not best:
            assert exported[0]["latency_ms"] > best["latency_ms"]
            assert best["holdout_top1"] - exported[0]["holdout_top1"] == pytest.approx(choice["behind_best_points"])
            assert choice["behind_best_points"] <= choice["tie_z"] * choice["standard_error_points"]
        assert entry["dir"] == d.name and entry["measured_latency_ms"] == metrics["measured_latency_ms"]
        assert entry["search"]["clamped_to_ms"] == pytest.approx(b) and entry["search"]["clamped_to_mflops"] is None


def test_search_under_flops_and_ms_budgets_in_pairs(supernet_checkpoint, torch_table, tiny, tmp_path):
    table = LatencyTable.load(torch_table, tiny)
    f_lo, f_hi = flops_range(tiny)
    flops = [round(f_lo + 0.6 * (f_hi - f_lo), 2), round(f_lo + 0.3 * (f_hi - f_lo), 2)]
    ms = _ms_budgets(table, tiny, [0.3, 0.8])
    out = tmp_path / "out"
    summary = _run(supernet_checkpoint, out, "--latency-table", torch_table, "--budgets", ",".join(map(str, flops)),
                   "--budgets-ms", ",".join(map(str, ms)), "--no-onnx")
    assert list(summary["budgets"]) == [f"{f:g}mflops_{m:g}ms" for f, m in sorted(zip(flops, ms))]
    for f, m in zip(flops, ms):
        metrics = json.loads((out / f"subnet_{f:g}mflops_{m:g}ms" / "metrics.json").read_text())
        assert metrics["mflops"] <= f and metrics["budget_mflops"] == f and metrics["under_budget"] is True
        assert metrics["predicted_latency_ms"] <= m and metrics["budget_latency_ms"] == m
        assert metrics["mflops"] == count_flops(tiny, Arch.from_dict(metrics["arch"]), 10)
        _check_latency_metrics(metrics, table, torch_table, "static net (torch)")
    assert "ms pred" in search_cli.format_summary(summary).splitlines()[0]


def test_flops_budgets_and_export_arch_with_a_table_record_latency(supernet_checkpoint, torch_table, tiny, tmp_path):
    table = LatencyTable.load(torch_table, tiny)
    arch = tiny.sample(np.random.default_rng(3))
    arch_file = tmp_path / "arch.json"
    arch_file.write_text(arch.to_json())
    out = tmp_path / "one"
    assert search_cli.main([str(a) for a in ["--checkpoint", supernet_checkpoint, "--export-arch", arch_file,
                                             "--max-mflops", 100, "--latency-table", torch_table, "--out", out,
                                             "--calib-batches", 1, "--no-onnx"]]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    _check_latency_metrics(metrics, table, torch_table, "static net (torch)")
    assert "budget_latency_ms" not in metrics and metrics["predicted_latency_ms"] == table.predict(arch)


def test_search_without_a_table_writes_no_latency(supernet_checkpoint, tmp_path):
    out = tmp_path / "out"
    summary = _run(supernet_checkpoint, out, "--budgets", 5, "--no-onnx", "--front-measure", 0)
    metrics = json.loads((out / "subnet_5mflops" / "metrics.json").read_text())
    assert not {k for k in metrics if "latency" in k}
    assert "latency_ms" not in (out / "pareto.csv").read_text().splitlines()[0]
    assert "x_axis" not in json.loads((out / "pareto.json").read_text()) and "latency_table" not in summary


def _usage_error(capsys, argv, *fragments):
    assert search_cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "search.py: error: " in err
    for fragment in fragments:
        assert fragment in err, err


def test_latency_usage_errors_exit_2(supernet_checkpoint, torch_table, tiny, tmp_path, capsys):
    base = ["--checkpoint", supernet_checkpoint, "--out", tmp_path / "out", "--proxy", "ntk"]
    lo, _ = cost_range(tiny, latency_cost(LatencyTable.load(torch_table, tiny)))
    _usage_error(capsys, [*base, "--budgets-ms", "1.5"], "--budgets-ms needs --latency-table")
    _usage_error(capsys, [*base, "--latency-table", torch_table, "--budgets", "5,8", "--budgets-ms", "9"],
                 "--budgets/--budgets-ms: 2 MFLOPs budgets and 1 ms budgets", "in pairs")
    _usage_error(capsys, [*base, "--latency-table", torch_table, "--budgets-ms", "1,abc"],
                 "--budgets-ms: 'abc' is not a number of ms > 0")
    _usage_error(capsys, [*base, "--latency-table", torch_table, "--budgets-ms", f"{lo / 2:.4g}"],
                 "--budgets-ms: budget", "ms is below the smallest subnet", f"{lo:.4g} ms")
    _usage_error(capsys, [*base, "--latency-table", torch_table, "--budgets-ms", "9", "--export-arch",
                          tmp_path / "a.json", "--max-mflops", 5], "no --budgets-ms")
    _usage_error(capsys, [*base, "--latency-table", tmp_path / "none.json", "--budgets-ms", "9"],
                 str(tmp_path / "none.json"))
    data = json.loads(torch_table.read_text())
    for name, change, fragment in (
            ("other_space.json", {"space_hash": "0" * 16, "space_name": "attentivenas"}, "for another space"),
            ("other_version.json", {"runtime_version": "0.0.1"}, "measured with torch 0.0.1")):
        bad = tmp_path / name
        bad.write_text(json.dumps({**data, **change}))
        _usage_error(capsys, [*base, "--latency-table", bad, "--budgets-ms", "9"], str(bad), fragment)
    other_head = build_table(tiny, "torch", "cpu", 1, tmp_path / "classes.json", threads=1, warmup=0, repeats=1,
                             progress=False, num_classes=7)
    _usage_error(capsys, [*base, "--latency-table", other_head.path, "--budgets-ms", "9"], str(other_head.path),
                 "7-class head, but the supernet has 10 classes")
    assert not (tmp_path / "out").exists()
