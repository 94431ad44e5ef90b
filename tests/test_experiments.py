"""Smoke test of the experiment scripts (bench/attentive_vs_uniform.py, bench/ranking_gap.py) in their --quick
synthetic mode: they run end to end, write results.json / .csv / .png, and the numbers have the right structure and
ranges. The numbers themselves mean nothing (synthetic data, a few steps)."""
import csv
import json
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import attentive_vs_uniform as exp1  # noqa: E402
import ranking_gap as exp2  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METHODS = ["uniform", "bestup_predictor", "worstup_predictor", "bestup_loss"]
SEEDS = [0, 1]


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _is_png(path):
    return path.is_file() and path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def exp1_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("exp1")
    # In-process train.main (no interpreter start-up per run) and one thread: the smoke test stays fast on a busy
    # machine. Everything else is the --quick mode as a user runs it.
    rc = exp1.main(["--quick", "--in-process", "--threads", "1", "--out", str(out)])
    assert rc == 0
    return out


def test_attentive_vs_uniform_quick(exp1_out, capsys):
    report = json.loads((exp1_out / "results.json").read_text())
    assert report["warning"] and "synthetic" in report["warning"].lower()
    assert report["quick"] and report["data"]["name"] == "synthetic"
    assert [(r["method"], r["seed"]) for r in report["runs"]] == [(m, s) for m in METHODS for s in SEEDS]
    lo, hi = report["flops_range_mflops"]
    floor = report["hypervolume"]["floor_top1"]
    assert floor == pytest.approx(10.0) and 0 < lo < hi
    num_archs = len(report["archs"])
    assert num_archs == exp1.QUICK_DEFAULTS["num_archs"]
    arch_flops = [a["mflops"] for a in report["archs"]]
    assert min(arch_flops) == pytest.approx(lo) and max(arch_flops) == pytest.approx(hi)  # min and max arch in the set
    budgets = [report["budgets"][n]["mflops"] for n in exp1.BUDGET_NAMES]
    assert lo <= budgets[0] < budgets[1] < budgets[2] == pytest.approx(hi)

    for r in report["runs"]:
        assert r["status"] == "done", r
        # The same fixed archs for every run, each with a test top-1 in [0, 100].
        assert [p["mflops"] for p in r["points"]] == pytest.approx(arch_flops)
        top1 = [p["top1"] for p in r["points"]]
        assert all(0 <= t <= 100 for t in top1)
        # Hypervolume: normalized FLOPs in [0, 1] x (top-1 - floor): between 0 and 100 - floor; HV + floor is the
        # mean best top-1 over budgets, so it lies between the min arch's top-1 and the best top-1.
        assert 0 <= r["hypervolume"] <= 100 - floor
        if r["hypervolume"] > 0:
            assert r["hv_mean_best_top1"] == pytest.approx(r["hypervolume"] + floor)
            assert r["hv_mean_best_top1"] <= max(top1) + 1e-9
        assert set(r["front"]) <= set(range(num_archs)) and r["front"]
        at = r["top1_at"]
        assert at["low"] <= at["mid"] <= at["high"] == pytest.approx(max(top1))
        t = r["timing"]
        assert t["epochs"] == 2 and t["steps"] == 2 and t["epoch_s"] > 0 and t["train_step_s_per_epoch"] > 0
        if r["method"].endswith("_predictor"):
            assert t["predictor_fit_s"] > 0 and r["search_skipped"] is None
            assert [s["budget"] for s in r["searched"]] == list(exp1.BUDGET_NAMES)
            for s, b in zip(r["searched"], budgets):
                assert s["mflops"] <= b + 1e-6 and 0 <= s["test_top1"] <= 100
        else:
            assert r["searched"] == [] and "no predictor" in r["search_skipped"]
    for method in METHODS:
        s = report["summary"][method]
        assert s["num_seeds"] == 2 and s["hypervolume"]["n"] == 2
        assert s["hypervolume"]["min"] <= s["hypervolume"]["mean"] <= s["hypervolume"]["max"]
        assert s["hypervolume"]["std"] >= 0

    rows = _csv(exp1_out / "results.csv")
    assert [(r["method"], int(r["seed"]), r["status"]) for r in rows] == [(m, s, "done") for m in METHODS for s in SEEDS]
    assert all(float(r["hypervolume"]) >= 0 for r in rows)
    assert len(_csv(exp1_out / "points.csv")) == len(rows) * num_archs
    assert _is_png(exp1_out / "front_overlay.png")

    # Started again: every run is reused (no training, cached test measurements), same results.
    capsys.readouterr()
    assert exp1.main(["--quick", "--in-process", "--threads", "1", "--out", str(exp1_out)]) == 0
    assert "synthetic" in capsys.readouterr().err.lower()
    again = json.loads((exp1_out / "results.json").read_text())
    assert [r["hypervolume"] for r in again["runs"]] == [r["hypervolume"] for r in report["runs"]]
    assert all(r["timing"]["final_json"]["steps"] == 2 for r in again["runs"])


def test_ranking_gap_quick(exp1_out, tmp_path, capsys):
    ckpt = exp1_out / "runs" / "uniform_seed0" / "last.pt"
    out = tmp_path / "exp2"
    common = ["--quick", "--threads", "1", "--checkpoint", str(ckpt), "--out", str(out)]
    # two shards split the from-scratch training (one process per core), then one run assembles the results
    assert exp2.main([*common, "--shard", "1/2"]) == 0
    assert sorted(int(p.name[5:7]) for p in (out / "scratch").glob("arch_*.json")) == [1, 3, 5, 7]
    assert not (out / "results.json").exists()
    assert exp2.main([*common, "--shard", "0/2"]) == 0
    saved = {p.name: p.stat().st_mtime_ns for p in (out / "scratch").glob("arch_*.json")}
    assert len(saved) == 8
    assert exp2.main(common) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "scratch").glob("arch_*.json")} == saved  # none retrained
    report = json.loads((out / "results.json").read_text())
    assert report["warning"] and report["num_archs"] == 8 and report["mode"] == "full"
    rows = report["rows"]
    assert len(rows) == 8 and len({r["mflops"] for r in rows}) == 8
    for r in rows:
        assert r["scratch_status"] == "done" and r["scratch_steps"] == 2
        for k in ("scratch_test_top1", "inherited_test_top1", "inherited_holdout_top1"):
            assert 0 <= r[k] <= 100
        for p in exp2.PROXIES:
            assert math.isfinite(r[p])
    taus = report["kendall_tau_vs_scratch_test_top1"]
    assert set(taus) == {"inherited_test", "inherited_holdout", *exp2.PROXIES, "mflops"}
    for t in taus.values():
        assert t["n"] == 8
        assert t["tau"] is None or -1 <= t["tau"] <= 1
    assert len(_csv(out / "results.csv")) == 8
    assert _is_png(out / "ranking_gap.png")
    assert len(list((out / "scratch").glob("arch_*.json"))) == 8  # per-arch results saved for resume

    # --extra-archs (e.g. a search's exports): measured after the stratified archs, which keep their saved results,
    # rows and taus; the extra arch is stratified arch 2 again (as a pareto.json row): its saved result is found by
    # the arch's hash and reused, so it gets arch 2's numbers, and its gap is from-scratch minus inherited
    extra = tmp_path / "pareto_row.json"
    extra.write_text(json.dumps({"mflops": rows[2]["mflops"], "arch": rows[2]["arch"]}))
    assert exp2.main([*common, "--extra-archs", str(extra)]) == 0
    with_extra = json.loads((out / "results.json").read_text())
    assert with_extra["kendall_tau_vs_scratch_test_top1"] == taus and with_extra["extra_archs"] == [str(extra)]
    assert with_extra["rows"][:8] == rows and all(r["source"] == "stratified" for r in rows)
    added = with_extra["rows"][8]
    assert added["arch_index"] == 8 and added["source"] == str(extra) and added["arch"] == rows[2]["arch"]
    for k in ("mflops", "scratch_test_top1", "inherited_test_top1", "inherited_holdout_top1"):
        assert added[k] == rows[2][k], k
    assert added["gap"] == pytest.approx(added["scratch_test_top1"] - added["inherited_test_top1"])
    assert {p.name: p.stat().st_mtime_ns for p in (out / "scratch").glob("arch_*.json")} == saved  # none trained
    # --num-archs 0 in a new --out: the extra arch alone, trained again there, the same numbers again, no taus
    alone = tmp_path / "exp2_alone"
    assert exp2.main([*common[:-1], str(alone), "--num-archs", "0", "--extra-archs", str(extra)]) == 0
    only_extra = json.loads((alone / "results.json").read_text())
    assert [r["arch_index"] for r in only_extra["rows"]] == [0]
    assert {k: only_extra["rows"][0][k] for k in ("arch", "scratch_test_top1", "inherited_test_top1", "gap")} == \
        {k: added[k] for k in ("arch", "scratch_test_top1", "inherited_test_top1", "gap")}
    assert all(t["n"] == 0 and t["tau"] is None for t in only_extra["kendall_tau_vs_scratch_test_top1"].values())

    # --scratch-seeds 0,1 in the same --out: seed 0's runs are the saved ones (the single-seed run used --seed 0),
    # only seed 1's are trained; the target is the mean of the two and the seeds' agreement is reported
    assert exp2.main([*common, "--scratch-seeds", "0,1"]) == 0
    assert len(list((out / "scratch").glob("arch_*.json"))) == 8 + 8
    two = json.loads((out / "results.json").read_text())
    assert two["scratch_recipe"]["seeds"] == [0, 1] and two["num_archs"] == 8
    for one, r in zip(rows, two["rows"]):
        assert r["arch"] == one["arch"] and r["scratch_test_top1_seed0"] == one["scratch_test_top1"]
        assert 0 <= r["scratch_test_top1_seed1"] <= 100
        assert r["scratch_test_top1"] == pytest.approx((r["scratch_test_top1_seed0"] + r["scratch_test_top1_seed1"]) / 2)
        assert r["scratch_seed_std"] == pytest.approx(abs(r["scratch_test_top1_seed0"] - r["scratch_test_top1_seed1"])
                                                      / math.sqrt(2))
        assert r["scratch_steps"] == 2 and r["scratch_status"] == "done"
    from scipy.stats import kendalltau
    seeds_tau = two["kendall_tau_between_scratch_seeds"]
    assert list(seeds_tau) == ["0_vs_1"] and seeds_tau["0_vs_1"]["n"] == 8
    expected = kendalltau([r["scratch_test_top1_seed0"] for r in two["rows"]],
                          [r["scratch_test_top1_seed1"] for r in two["rows"]]).statistic
    assert seeds_tau["0_vs_1"]["tau"] == (None if math.isnan(expected) else pytest.approx(expected))
    expected = kendalltau([r["inherited_test_top1"] for r in two["rows"]],
                          [r["scratch_test_top1"] for r in two["rows"]]).statistic
    assert two["kendall_tau_vs_scratch_test_top1"]["inherited_test"]["tau"] == \
        (None if math.isnan(expected) else pytest.approx(expected))
    printed = capsys.readouterr().out
    assert "seed against seed" in printed
    assert re.search(r"^ #\s+MFLOPs\s+scratch\s+seed0\s+seed1\s+inh\.test", printed, flags=re.M)

    # --scratch-dir: another --out scored against this run's from-scratch column (both seeds) trains nothing and
    # gives the same rows and taus; its own --out gets no scratch/ directory
    shared = tmp_path / "exp2_shared"
    saved = {p.name: p.stat().st_mtime_ns for p in (out / "scratch").glob("arch_*.json")}
    assert exp2.main([*common[:-1], str(shared), "--scratch-seeds", "0,1", "--scratch-dir", str(out / "scratch")]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "scratch").glob("arch_*.json")} == saved
    assert not (shared / "scratch").exists()
    again = json.loads((shared / "results.json").read_text())
    assert again["rows"] == two["rows"] and again["scratch_dir"] == str(out / "scratch")
    assert again["kendall_tau_vs_scratch_test_top1"] == two["kendall_tau_vs_scratch_test_top1"]
    capsys.readouterr()

    bad = tmp_path / "not_an_arch.json"
    bad.write_text(json.dumps({"resolution": 999}))
    assert exp2.main([*common, "--extra-archs", str(bad)]) == 2
    assert str(bad) in capsys.readouterr().err

    # --inherited-only: the same archs and inherited top-1 (same checkpoint, calibration and images), nothing
    # trained from scratch and no taus
    inh = tmp_path / "exp2_inherited"
    assert exp2.main(["--quick", "--threads", "1", "--checkpoint", str(ckpt), "--out", str(inh), "--inherited-only"]) == 0
    assert not (inh / "scratch").exists()
    only = json.loads((inh / "results.json").read_text())
    assert only["mode"] == "inherited_only" and "kendall_tau_vs_scratch_test_top1" not in only
    assert [r["arch"] for r in only["rows"]] == [r["arch"] for r in rows]
    for k in ("mflops", "inherited_test_top1", "inherited_holdout_top1", *exp2.PROXIES):
        assert [r[k] for r in only["rows"]] == [r[k] for r in rows], k
    assert all("scratch_test_top1" not in r for r in only["rows"])


def test_usage_errors(capsys):
    assert exp1.main(["--methods", "uniform,nope"]) == 2
    assert exp1.main(["--quick", "seed=3"]) == 2  # the experiment sets seeds itself
    assert exp1.main(["--quick", "no.such.key=1"]) == 2
    assert exp2.main([]) == 2  # --checkpoint required outside --quick
    assert exp2.main(["--quick", "--num-archs", "4"]) == 2
    assert exp2.main(["--quick", "--shard", "2/2"]) == 2
    assert exp2.main(["--quick", "--shard", "0/2", "--inherited-only"]) == 2
    assert exp2.main(["--quick", "--extra-archs", "no/such/arch.json"]) == 2
    assert exp2.main(["--quick", "--scratch-dir", "no/such/dir"]) == 2
    assert exp2.main(["--quick", "--scratch-dir", ".", "--inherited-only"]) == 2
    err = capsys.readouterr().err
    assert "--scratch-dir: directory not found: no/such/dir" in err
    assert "--scratch-dir holds from-scratch results, which --inherited-only neither reads nor writes" in err
    assert "nope" in err and "seed" in err and "--checkpoint" in err and "--shard must be K/N" in err and "--inherited-only skips" in err
    assert "--extra-archs: file not found: no/such/arch.json" in err
    for seeds in ("0,x", "1,1", ""):
        assert exp2.main(["--quick", "--scratch-seeds", seeds]) == 2
        assert f"--scratch-seeds must be distinct integers separated by commas (e.g. 0,1), got {seeds!r}" in \
            capsys.readouterr().err


def test_sampler_pool_coverage_counts_every_draw_once():
    """bench/sampler_pool.py: distinct + repeated draws add up to all draws, and a pool smaller than the draws
    must repeat; the whole-space estimate is 0 for a space far larger than the draws."""
    import sampler_pool

    from attentive import load_space
    from attentive.sampling import FlopsBuckets

    space = load_space("tiny")
    buckets = FlopsBuckets.build(space, pool_size=500, min_count=10, seed=0, use_cache=False)
    c = sampler_pool.pool_coverage(buckets, slots=400, k=3, seed=1)
    assert c["draws"] == 1200 and c["distinct"] + c["repeated_draws"] == c["draws"]
    assert c["distinct"] <= 500 and c["repeated_draws"] >= 700
    assert sampler_pool.whole_space_repeat_fraction(space, 1200) < 1e-5


def test_amp_speed_runs_each_precision_on_the_same_work(capsys):
    """bench/amp_speed.py (the GPU script's AMP step, here on the CPU with bf16): every precision takes its steps,
    the first precision is the ratio's base, and bf16's first loss agrees with fp32's (same init, same subnets,
    same batch); fp16 on the CPU and unknown modes are usage errors."""
    import amp_speed
    import torch

    res = amp_speed.measure("tiny", 8, ["none", "bf16"], steps=2, warmup=1, num_subnets=2,
                            device=torch.device("cpu"))
    assert list(res) == ["none", "bf16"]
    assert res["none"]["ratio"] == 1.0
    for r in res.values():
        assert r["finite"] and r["min_s"] <= r["median_s"] <= r["max_s"] and r["peak_mib"] == 0.0
    assert res["bf16"]["first_loss"] != res["none"]["first_loss"]  # autocast really ran in bf16
    assert res["bf16"]["first_loss"] == pytest.approx(res["none"]["first_loss"], abs=0.05)
    assert amp_speed.main(["--device", "cpu", "--precisions", "none,fp16"]) == 2
    assert amp_speed.main(["--device", "cpu", "--precisions", "fp32"]) == 2
    assert amp_speed.main(["--device", "cpu", "--steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "fp16 needs a CUDA device" in err and "unknown mode 'fp32'" in err and "--steps is too small" in err


def test_gpu_check_refuses_to_start_without_cuda(tmp_path):
    """bench/gpu_check.sh checks its dependencies and CUDA before any step: here (no GPU) it stops at once, with
    a message, and writes nothing into $OUT."""
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the script would run its steps")
    out = tmp_path / "gpu"
    res = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "PY": sys.executable, "OUT": str(out)}, timeout=300)
    assert res.returncode == 1 and "CUDA is not available" in res.stderr
    assert list(out.iterdir()) == []


def test_ranking_gap_plot_when_every_arch_diverged(tmp_path):
    """The plot still writes a PNG when no arch has a from-scratch accuracy (all diverged): no colour scale to
    build from, no tau."""
    taus = {name: {"tau": None, "p_value": None, "n": 0} for name in ("inherited_test", "mflops")}
    rows = [{"arch_index": 0, "source": "stratified", "mflops": 3.0, "inherited_test_top1": 88.0,
             "scratch_test_top1": None}]
    exp2.plot(tmp_path / "ranking_gap.png", rows, taus, None)
    assert _is_png(tmp_path / "ranking_gap.png")


def test_depthwise_grad_bench_prints_each_shape_and_the_step_ratio():
    """bench/depthwise_grad.py: a row per layer shape (the 7x7 map marked as oneDNN's own), then both trainers'
    median steps and their ratio, on a short run."""
    import re
    import subprocess

    import depthwise_grad

    res = subprocess.run([sys.executable, str(ROOT / "bench" / "depthwise_grad.py"), "--steps", "2", "--warmup", "1",
                          "--repeats", "1", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    rows = re.findall(r"^\s+(\d+)x(\d+)x\d+ k(\d) +([\d.]+) +([\d.]+) +([\d.]+)x(.*)$", res.stdout, flags=re.M)
    assert [(int(c), int(s), int(k)) for c, s, k, *_ in rows] == depthwise_grad.LAYER_SHAPES
    for chs, side, kernel, onednn, taps, ratio, note in rows:
        assert float(onednn) > 0 and float(taps) > 0
        assert ("not used" in note) == (int(side) >= int(kernel))
    for name in ("taps", "oneDNN"):
        assert re.search(rf"{name} +median step [\d.]+ s", res.stdout)
    assert re.search(r"oneDNN / taps: [\d.]+x \(ratio of medians\), [\d.]+x \(median per-step ratio\)", res.stdout)


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--repeats", "0"), ("--threads", "0"), ("--warmup", "-1")])
def test_depthwise_grad_bench_refuses_bad_counts(flag, value, capsys):
    import depthwise_grad

    with pytest.raises(SystemExit) as exc:
        depthwise_grad.main([flag, value])
    assert exc.value.code == 2 and f"{flag} must be at least" in capsys.readouterr().err


@pytest.mark.parametrize("taps", [False, True])
def test_supernet_speed_bench_leaves_the_tap_gradient_to_its_flag(taps, monkeypatch, capsys):
    """bench/supernet_speed.py compares slicing with a static twin that never takes the depthwise tap gradient, so
    by default the supernet does not take it either (the ratio would otherwise mix that speed-up into the
    slicing's cost); --tap-weight-grad times the supernet as training runs it. The tiny space's largest net has
    5x5 kernels on 4x4 maps, where training takes the taps."""
    import supernet_speed
    import torch

    import attentive.depthwise as depthwise

    calls = []
    real = depthwise.tap_weight_grad_of
    monkeypatch.setattr(depthwise, "tap_weight_grad_of", lambda *a: calls.append(1) or real(*a))
    # In process, so the threads and the process-wide allocator settings stay the suite's own
    supernet_speed.main(["--quick", "--spaces", "tiny", "--archs", "max", "--batch", "4", "--default-runtime",
                         "--threads", str(torch.get_num_threads())] + (["--tap-weight-grad"] if taps else []))
    out = capsys.readouterr().out
    assert f"tap weight gradient {'on' if taps else 'off'}" in out
    row = r"^tiny +max .* set_to_none=(?:False|True) +[\d.]+ +[\d.]+ \([\d.]+\.\.[\d.]+\) +[\d.]+ \[[\d.]+\.\.[\d.]+\]"
    assert len(re.findall(row, out, flags=re.M)) == 2
    assert (len(calls) > 0) == taps


def test_supernet_speed_bench_pairs_every_call_and_bounds_the_median():
    """The paired ratio: one per timed call (rounds x repeats), each the contender over the static call beside
    it; its bootstrap interval holds the median and collapses when every pair agrees."""
    import supernet_speed

    import attentive

    space = attentive.load_space("tiny")
    supernet = attentive.Supernet(space).train()
    r = supernet_speed.time_arch(supernet, space.min_arch(), batch=2, rounds=2, repeats=3, set_to_none=False,
                                 reference=True, channels_last=False)
    assert len(r["sliced_paired"]) == len(r["plain_paired"]) == 6 and len(r["sliced"]) == 2
    assert all(v > 0 for v in r["sliced_paired"] + r["plain_paired"])
    assert supernet_speed.median_interval([1.02] * 9) == (1.02, 1.02, 1.02)
    median, low, high = supernet_speed.median_interval([0.9, 1.0, 1.0, 1.1, 1.3, 0.95, 1.05])
    assert median == 1.0 and low <= median <= high and 0.9 <= low < high <= 1.3
