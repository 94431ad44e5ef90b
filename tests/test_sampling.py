import io
import json

import numpy as np
import pytest
import torch

from attentive import count_flops_batch, load_space
from attentive.scoring import IndexScorer, predictor_scorer
from attentive.sampling import (
    AttentiveSampler, FlopsBuckets, UniformSampler, build_sampler, default_step_mflops,
)

POOL = 20_000
STEPS = {"attentivenas": 25.0, "tiny": 1.0}


@pytest.fixture(scope="module", params=["attentivenas", "tiny"])
def setup(request, tmp_path_factory):
    space = load_space(request.param)
    buckets = FlopsBuckets.build(space, STEPS[space.name], pool_size=POOL, seed=0,
                                 cache_dir=tmp_path_factory.mktemp("cache"))
    return space, buckets


def _inside(buckets, index_array, bucket):
    mflops = count_flops_batch(buckets.space, np.asarray(index_array), buckets.num_classes)
    lo, hi = buckets.bucket_range(bucket)
    return (mflops >= lo) & (mflops < hi)


def _depth_sum_scorer(archs):
    return np.array([-sum(a.depth) for a in archs], dtype=float)


# ---- buckets ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mutate_prob", [0.0, 0.3])
def test_every_drawn_arch_lies_in_its_bucket(setup, mutate_prob):
    space, buckets = setup
    rng = np.random.Generator(np.random.PCG64(5))
    for b in range(buckets.num_buckets):
        rows = buckets.draw(b, 40, rng, mutate_prob=mutate_prob)
        assert rows.shape == (40, len(space.gene_sizes())) and rows.dtype == np.int64
        assert _inside(buckets, rows, b).all(), f"bucket {b} {buckets.bucket_range(b)}"
    many = buckets.draw_many(np.arange(buckets.num_buckets), 7, rng, mutate_prob=mutate_prob)
    for b in range(buckets.num_buckets):
        assert _inside(buckets, many[b], b).all()
    assert buckets.draw(0, 0, rng).shape == (0, len(space.gene_sizes()))


def test_mutation_leaves_the_pool_but_not_the_bucket(setup):
    space, buckets = setup
    rng = np.random.Generator(np.random.PCG64(1))
    b = int(np.argmax(buckets.prior))
    rows = buckets.draw(b, 300, rng, mutate_prob=0.2)
    pool_rows = {r.tobytes() for r in buckets.pool[buckets.offsets[b]:buckets.offsets[b + 1]].astype(np.int64)}
    assert any(r.tobytes() not in pool_rows for r in rows)  # mutation adds archs the pool lacks
    assert _inside(buckets, rows, b).all()


def test_prior_sums_to_one_and_matches_pool_histogram(setup):
    space, buckets = setup
    assert buckets.prior.sum() == pytest.approx(1.0, abs=1e-12)
    assert len(buckets.edges) == buckets.num_buckets + 1 and np.all(np.diff(buckets.edges) > 0)
    mflops = count_flops_batch(space, buckets.pool.astype(np.int64))
    hist, _ = np.histogram(mflops, bins=buckets.edges)
    assert hist.sum() == POOL
    np.testing.assert_allclose(buckets.prior, hist / POOL, rtol=0, atol=1e-12)
    # every pool row sits in its own bucket's slice, every bucket meets min_count
    for b in range(buckets.num_buckets):
        sl = buckets.pool[buckets.offsets[b]:buckets.offsets[b + 1]].astype(np.int64)
        assert _inside(buckets, sl, b).all()
    assert buckets.counts.min() >= buckets.meta["min_count"]
    # edges lie on the step grid (rare cells merged, not dropped) and cover the whole space
    step = buckets.meta["step_mflops"]
    np.testing.assert_allclose(buckets.edges / step, np.round(buckets.edges / step), atol=1e-9)
    lo, hi = count_flops_batch(space, [space.min_arch(), space.max_arch()])
    assert buckets.edges[0] <= lo and hi < buckets.edges[-1]
    assert buckets.bucket_of(lo) == 0 and buckets.bucket_of(hi) == buckets.num_buckets - 1


def test_rare_cells_are_merged_into_neighbours():
    space = load_space("tiny")
    fine = FlopsBuckets.build(space, 1.0, pool_size=POOL, min_count=1, use_cache=False)
    coarse = FlopsBuckets.build(space, 1.0, pool_size=POOL, min_count=2000, use_cache=False)
    assert coarse.num_buckets < fine.num_buckets
    assert set(coarse.edges.tolist()) <= set(fine.edges.tolist()) | {fine.edges[-1]}
    assert coarse.counts.min() >= 2000 and coarse.counts.sum() == POOL
    assert (coarse.edges[0], coarse.edges[-1]) == (fine.edges[0], fine.edges[-1])


def test_bucket_of_and_range_errors(setup):
    space, buckets = setup
    mid = 0.5 * (buckets.edges[3] + buckets.edges[4])
    assert buckets.bucket_of(mid) == 3
    assert buckets.bucket_of(buckets.edges[3]) == 3  # low edge inclusive
    np.testing.assert_array_equal(buckets.bucket_of(buckets.edges[:-1]), np.arange(buckets.num_buckets))
    rng = np.random.Generator(np.random.PCG64(0))
    valid = f"0..{buckets.num_buckets - 1}"
    for bad in (-1, buckets.num_buckets, 10**6):
        with pytest.raises(ValueError, match=valid):
            buckets.draw(bad, 3, rng)
        with pytest.raises(ValueError, match=valid):
            buckets.bucket_range(bad)
    with pytest.raises(ValueError, match=valid):
        buckets.draw(1.5, 3, rng)
    with pytest.raises(ValueError, match="outside the buckets"):
        buckets.bucket_of(buckets.edges[-1])
    with pytest.raises(ValueError, match="outside the buckets"):
        buckets.bucket_of(buckets.edges[0] - 1e-3)
    with pytest.raises(TypeError, match="Generator"):
        buckets.draw(0, 3, np.random.RandomState(0))


def test_sample_buckets_follows_prior(setup):
    _, buckets = setup
    draws = buckets.sample_buckets(200_000, np.random.Generator(np.random.PCG64(3)))
    freq = np.bincount(draws, minlength=buckets.num_buckets) / len(draws)
    np.testing.assert_allclose(freq, buckets.prior, atol=0.005)


def test_build_is_deterministic_per_seed():
    space = load_space("tiny")
    a = FlopsBuckets.build(space, 1.0, pool_size=POOL, seed=3, use_cache=False)
    b = FlopsBuckets.build(space, 1.0, pool_size=POOL, seed=3, use_cache=False)
    c = FlopsBuckets.build(space, 1.0, pool_size=POOL, seed=4, use_cache=False)
    np.testing.assert_array_equal(a.pool, b.pool)
    np.testing.assert_array_equal(a.edges, b.edges)
    assert not np.array_equal(a.pool, c.pool)
    assert a.key == b.key != c.key
    assert default_step_mflops(space) == 1.0 and default_step_mflops(load_space("attentivenas")) == 25.0


# ---- cache -----------------------------------------------------------------------------------------------
def test_cache_is_reused_and_written_atomically(tmp_path):
    space = load_space("tiny")
    first = FlopsBuckets.build(space, 1.0, pool_size=POOL, cache_dir=tmp_path)
    assert not first.loaded_from_cache and first.cache_path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.cache_path.name]  # no temp files left behind
    second = FlopsBuckets.build(space, 1.0, pool_size=POOL, cache_dir=tmp_path)
    assert second.loaded_from_cache
    for name in ("pool", "edges", "offsets", "prior"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    other = FlopsBuckets.build(space, 2.0, pool_size=POOL, cache_dir=tmp_path)  # the key includes the step
    assert not other.loaded_from_cache and len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError):  # shared arrays are read-only
        second.pool[0, 0] = 1


@pytest.mark.parametrize("damage", ["garbage", "truncate", "wrong_meta"])
def test_corrupt_cache_is_rebuilt_with_warning(tmp_path, damage):
    space = load_space("tiny")
    good = FlopsBuckets.build(space, 1.0, pool_size=POOL, cache_dir=tmp_path)
    path = good.cache_path
    if damage == "garbage":
        path.write_bytes(b"not an npz file")
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        with np.load(path) as z:
            arrays = dict(z)
        meta = json.loads(str(arrays["meta"]))
        meta["seed"] = 99
        arrays["meta"] = np.array(json.dumps(meta))
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    with pytest.warns(RuntimeWarning, match="rebuilding"):
        rebuilt = FlopsBuckets.build(space, 1.0, pool_size=POOL, cache_dir=tmp_path)
    assert not rebuilt.loaded_from_cache
    np.testing.assert_array_equal(rebuilt.pool, good.pool)
    again = FlopsBuckets.build(space, 1.0, pool_size=POOL, cache_dir=tmp_path)  # the rebuilt file is good
    assert again.loaded_from_cache


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTENTIVE_CACHE", str(tmp_path / "env_cache"))
    buckets = FlopsBuckets.build(load_space("tiny"), 1.0, pool_size=POOL)
    assert buckets.cache_path.parent == tmp_path / "env_cache"


# ---- samplers --------------------------------------------------------------------------------------------
def _samplers(space, buckets, seed):
    return [UniformSampler(space, seed=seed),
            AttentiveSampler(space, buckets, "bestup", seed=seed),
            AttentiveSampler(space, buckets, "worstup", seed=seed, mutate_prob=0.2)]


def test_archs_are_valid_and_decoded_like_the_space(setup):
    space, buckets = setup
    for sampler in _samplers(space, buckets, 0):
        archs = sampler.sample(6, _depth_sum_scorer)
        assert len(archs) == 6
        for arch in archs:
            space.validate(arch)
            assert space.arch_from_indices(space.arch_to_indices(arch)) == arch
    assert build_sampler("bestup", space, buckets).sample(0, _depth_sum_scorer) == []


def test_same_seed_same_archs_other_seed_other_archs(setup):
    space, buckets = setup
    for a, b, c in zip(_samplers(space, buckets, 7), _samplers(space, buckets, 7), _samplers(space, buckets, 8)):
        runs = [[s.sample(4, _depth_sum_scorer) for _ in range(5)] for s in (a, b, c)]
        assert runs[0] == runs[1]
        assert runs[0] != runs[2]


def test_state_dict_round_trip_reproduces_next_draws(setup):
    space, buckets = setup
    for sampler in _samplers(space, buckets, 11):
        sampler.sample(3, _depth_sum_scorer)
        state = sampler.state_dict()
        restored_json = json.loads(json.dumps(state))
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        restored_torch = torch.load(buf, weights_only=True)
        expected = [sampler.sample(3, _depth_sum_scorer) for _ in range(4)]
        for restored in (restored_json, restored_torch):
            fresh = build_sampler(sampler.name, space, buckets, seed=12345,
                                  **({"mutate_prob": sampler.mutate_prob} if sampler.name != "uniform" else {}))
            fresh.load_state_dict(restored)
            assert [fresh.sample(3, _depth_sum_scorer) for _ in range(4)] == expected


def test_state_dict_refuses_other_sampler_or_buckets(setup):
    space, buckets = setup
    state = AttentiveSampler(space, buckets, "bestup").state_dict()
    with pytest.raises(ValueError, match="uniform"):
        UniformSampler(space).load_state_dict(state)
    other = FlopsBuckets.build(space, STEPS[space.name], pool_size=POOL, seed=1, use_cache=False)
    with pytest.raises(ValueError, match="buckets"):
        AttentiveSampler(space, other, "bestup").load_state_dict(state)


@pytest.mark.parametrize("mode", ["bestup", "worstup"])
@pytest.mark.parametrize("scorer", ["mflops", "neg_depth_sum"])
def test_best_and_worst_up_pick_extreme_candidate(setup, mode, scorer):
    space, buckets = setup
    num, k = 5, 4
    calls = []
    base = IndexScorer(lambda x: count_flops_batch(space, x), name="mflops") if scorer == "mflops" else _depth_sum_scorer

    def recording(archs):
        calls.append(list(archs))
        return base(archs)

    sampler = AttentiveSampler(space, buckets, mode, num_trials=k, seed=3)
    for _ in range(3):
        calls.clear()
        chosen = sampler.sample(num, recording)
        assert len(calls) == 1 and len(calls[0]) == num * k  # all slots scored in ONE call
        for slot, arch in enumerate(chosen):
            cands = calls[0][slot * k:(slot + 1) * k]
            scores = np.asarray(base(cands))
            best = scores.max() if mode == "bestup" else scores.min()
            assert np.asarray(base([arch]))[0] == best
            assert arch == cands[int(np.argmax(scores) if mode == "bestup" else np.argmin(scores))]
            # candidates of one slot share one bucket
            bucket_ids = buckets.bucket_of(count_flops_batch(space, cands))
            assert len(set(np.atleast_1d(bucket_ids).tolist())) == 1


def test_index_scorer_gets_index_arrays_and_matches_list_scorer(setup):
    space, buckets = setup

    class FakePredictor:
        def __init__(self):
            self.inputs = []

        def predict(self, x):
            self.inputs.append(x)
            return count_flops_batch(space, x)

    predictor = FakePredictor()
    by_index = AttentiveSampler(space, buckets, "bestup", seed=5).sample(6, predictor_scorer(predictor))
    assert isinstance(predictor.inputs[0], np.ndarray) and predictor.inputs[0].shape == (18, len(space.gene_sizes()))
    by_list = AttentiveSampler(space, buckets, "bestup", seed=5).sample(6, lambda a: count_flops_batch(space, a))
    assert by_index == by_list
    scorer = IndexScorer(lambda x: count_flops_batch(space, x))
    np.testing.assert_allclose(scorer(by_list), count_flops_batch(space, by_list))
    with pytest.raises(TypeError, match="predict"):
        predictor_scorer(object())


def test_bad_arguments_raise_clear_errors(setup):
    space, buckets = setup
    with pytest.raises(ValueError, match=r"'bestup', 'worstup'"):
        AttentiveSampler(space, buckets, mode="best")
    with pytest.raises(ValueError, match=r"'uniform', 'bestup', 'worstup'"):
        build_sampler("attentive", space, buckets)
    with pytest.raises(ValueError, match="UniformSampler"):
        AttentiveSampler(space, buckets).sample(2, None)
    with pytest.raises(ValueError, match="num_trials"):
        AttentiveSampler(space, buckets, num_trials=0)
    with pytest.raises(ValueError, match="6 archs, got 3 scores"):
        AttentiveSampler(space, buckets, num_trials=3).sample(2, lambda a: np.zeros(3))
    with pytest.raises(ValueError, match="non-finite"):
        AttentiveSampler(space, buckets, num_trials=3).sample(2, lambda a: np.full(len(a), np.nan))
    other = load_space("tiny" if space.name != "tiny" else "attentivenas")
    with pytest.raises(ValueError, match="built for space"):
        AttentiveSampler(other, buckets)
    with pytest.raises(ValueError, match="step_mflops"):
        FlopsBuckets.build(space, 0.0, pool_size=POOL, use_cache=False)


def test_build_sampler_builds_buckets_when_missing(tmp_path):
    space = load_space("tiny")
    sampler = build_sampler("worstup", space, seed=2, step_mflops=1.0, pool_size=POOL, cache_dir=tmp_path,
                            num_trials=2)
    assert isinstance(sampler, AttentiveSampler) and sampler.num_trials == 2 and sampler.mode == "worstup"
    assert sampler.buckets.loaded_from_cache is False and sampler.buckets.cache_path.parent == tmp_path
    assert isinstance(build_sampler("uniform", space, seed=2), UniformSampler)


def test_samplers_never_touch_global_rngs(setup):
    space, buckets = setup
    results = []
    for global_seed in (1, 2):
        np.random.seed(global_seed)
        torch.manual_seed(global_seed)
        np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
        results.append([s.sample(4, _depth_sum_scorer) for s in _samplers(space, buckets, 0)])
        assert np.array_equal(np.random.get_state()[1], np_state)  # nothing consumed from the global streams
        assert torch.equal(torch.get_rng_state(), torch_state)
    assert results[0] == results[1]
