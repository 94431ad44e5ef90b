import json

import numpy as np
import pytest
import yaml

import attentive
from attentive import Arch, load_space
from attentive.space import space_from_dict

from conftest import ATTENTIVENAS_MODELS, attentivenas_arch


def test_attentivenas_space_is_the_paper_space():
    s = load_space("attentivenas")
    assert s.resolutions == (192, 224, 256, 288)
    assert s.stem.widths == (16, 24) and s.stem.stride == 2
    expected = {
        "mb1": ((16, 24), (1, 2), (1,), 1, False),
        "mb2": ((24, 32), (3, 4, 5), (4, 5, 6), 2, False),
        "mb3": ((32, 40), (3, 4, 5, 6), (4, 5, 6), 2, True),
        "mb4": ((64, 72), (3, 4, 5, 6), (4, 5, 6), 2, False),
        "mb5": ((112, 120, 128), (3, 4, 5, 6, 7, 8), (4, 5, 6), 1, True),
        "mb6": ((192, 200, 208, 216), (3, 4, 5, 6, 7, 8), (6,), 2, True),
        "mb7": ((216, 224), (1, 2), (6,), 1, True),
    }
    assert [st.name for st in s.stages] == list(expected)
    for st in s.stages:
        assert (st.widths, st.depths, st.expand_ratios, st.stride, st.se) == expected[st.name]
        assert st.kernel_sizes == (3, 5) and st.activation == "swish"
    assert s.head.widths == (1792, 1984) and s.num_classes == 1000


def test_tiny_space_size():
    s = load_space("tiny")
    # resolutions 2; widths 2 each for stem, 6 stages and head; depths 2*2*3*3*3*2; kernels 2**6; expands 1*2*2*3*3*3
    assert s.num_archs == 2 * 2**8 * (2 * 2 * 3 * 3 * 3 * 2) * 2**6 * (1 * 2 * 2 * 3 * 3 * 3) == 764_411_904
    assert s.stem.stride == 1 and s.num_classes == 10


@pytest.mark.parametrize("name", list(ATTENTIVENAS_MODELS))
def test_published_archs_are_valid_as_written(name):
    s = load_space("attentivenas")
    arch = Arch.from_dict(attentivenas_arch(name))
    assert s.validate(arch) is arch


def test_arch_json_round_trip(space):
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = space.sample(rng)
        assert Arch.from_dict(json.loads(a.to_json())) == a
        assert Arch.from_dict(json.loads(json.dumps(a.to_dict()))) == a
        assert hash(Arch.from_dict(a.to_dict())) == hash(a)


def test_validate_names_field_stage_and_allowed(space):
    d = space.max_arch().to_dict()
    d["kernel_size"][2] = 7
    with pytest.raises(ValueError, match=r"kernel_size.*stage 3.*allowed: \[3, 5\]"):
        space.validate(Arch.from_dict(d))
    d = space.max_arch().to_dict()
    d["width"][-1] = 7
    with pytest.raises(ValueError, match=r"width.*head.*allowed"):
        space.validate(Arch.from_dict(d))
    d = space.max_arch().to_dict()
    d["resolution"] = 1
    with pytest.raises(ValueError, match="resolution 1 not allowed"):
        space.validate(Arch.from_dict(d))
    d = space.max_arch().to_dict()
    d["depth"] = d["depth"][:-1]
    with pytest.raises(ValueError, match="'depth' has"):
        space.validate(Arch.from_dict(d))


def test_arch_dict_errors():
    with pytest.raises(ValueError, match="missing keys"):
        Arch.from_dict({"resolution": 1})
    d = attentivenas_arch("A0")
    d["extra"] = 1
    with pytest.raises(ValueError, match="unknown keys"):
        Arch.from_dict(d)
    d = attentivenas_arch("A0")
    d["depth"] = [1.5] * 7
    with pytest.raises(ValueError, match="not an integer"):
        Arch.from_dict(d)


def test_sampling_min_max_and_determinism(space):
    lo, hi = space.min_arch(), space.max_arch()
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    samples = [space.sample(rng1) for _ in range(50)]
    assert samples == [space.sample(rng2) for _ in range(50)]
    assert len(set(samples)) > 40
    for a in samples:
        space.validate(a)
        assert all(l <= v <= h for l, v, h in zip(lo.depth, a.depth, hi.depth))
    assert [space.sample(np.random.default_rng(4)) for _ in range(3)] != samples[:3]
    with pytest.raises(TypeError, match="Generator"):
        space.sample(np.random.RandomState(0))


def test_index_encoding_round_trip(space):
    rng = np.random.default_rng(0)
    idx = space.sample_indices(rng, 100)
    assert idx.shape == (100, len(space.gene_sizes()))
    assert (idx >= 0).all() and (idx < np.array(space.gene_sizes())).all()
    for row in idx:
        assert space.arch_to_indices(space.arch_from_indices(row)) == list(row)


def _space_dict():
    return yaml.safe_load((attentive.space.SPACES_DIR / "tiny.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(bogus=1), r"unknown key\(s\) \['bogus'\]"),
        (lambda d: d["stages"][1].update(kernal_sizes=[3]), r"stages\[1\]: unknown key\(s\) \['kernal_sizes'\]"),
        (lambda d: d["stages"][0].update(stride=3), r"stages\[0\].stride: stride must be 1 or 2"),
        (lambda d: d["stages"][2].update(kernel_sizes=[4]), r"stages\[2\].kernel_sizes: kernel size 4 must be odd"),
        (lambda d: d["stem"].update(activation="tanh"), r"stem.activation: unknown activation 'tanh'"),
        (lambda d: d["head"].pop("widths"), r"head: missing key\(s\) \['widths'\]"),
        (lambda d: d.update(num_classes=0), r"'num_classes' must be a positive integer"),
        (lambda d: d["stages"][3].update(se="yes"), r"stages\[3\].se: must be true or false"),
        (lambda d: d.update(resolutions=[]), r"resolutions: must be a non-empty list"),
    ],
)
def test_bad_space_files_name_the_key(tmp_path, mutate, message):
    d = _space_dict()
    mutate(d)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ValueError, match=message):
        load_space(p)


def test_missing_space_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="available"):
        load_space("no_such_space")
    with pytest.raises(FileNotFoundError):
        load_space(tmp_path / "missing.yaml")


def test_space_hash_is_content_based(tmp_path):
    d = _space_dict()
    p = tmp_path / "copy.yaml"
    p.write_text(yaml.safe_dump(d, default_flow_style=True))
    assert load_space(p).hash == load_space("tiny").hash
    d["stages"][0]["widths"] = [8]
    assert space_from_dict(d).hash != load_space("tiny").hash
    assert space_from_dict(load_space("tiny").to_dict()).hash == load_space("tiny").hash
