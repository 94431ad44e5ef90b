"""The per-dimension probe: move generation and shortcut labels (attentive/probe.py) and bench/probe.py end to end
on an untrained tiny supernet checkpoint (synthetic data; the accuracies mean nothing)."""
import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from attentive import load_space
from attentive.probe import (base_arch, combined_moves, probe_plan, shortcut_changes, single_dimension_moves,
                             width_position_names)
from attentive.space import Arch, SearchSpace, space_from_dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import probe as probe_cli  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def changed_groups(space: SearchSpace, a: Arch, b: Arch) -> list[str]:
    """Dimension groups in which `a` and `b` differ ("resolution", "kernel_size", "expand_ratio", "width <pos>",
    "depth <stage>"): the oracle of the tests, a single-dimension move differs from its base in exactly one."""
    groups = []
    if a.resolution != b.resolution:
        groups.append("resolution")
    for field in ("kernel_size", "expand_ratio"):
        if getattr(a, field) != getattr(b, field):
            groups.append(field)
    for pos, x, y in zip(width_position_names(space), a.width, b.width):
        if x != y:
            groups.append(f"width {pos}")
    for stage, x, y in zip(space.stages, a.depth, b.depth):
        if x != y:
            groups.append(f"depth {stage.name}")
    return groups


@pytest.mark.parametrize("name", ["tiny", "attentivenas"])
@pytest.mark.parametrize("base_name,toward", [("max", "min"), ("min", "max")])
def test_moves_change_one_group_and_are_valid(name, base_name, toward):
    space = load_space(name)
    base = base_arch(space, base_name)
    moves = single_dimension_moves(space, base, toward)
    assert moves and len({m.arch for m in moves}) == len(moves)
    for m in moves:
        assert space.validate(m.arch) is m.arch
        assert len(changed_groups(space, base, m.arch)) == 1, m.label
        assert m.base == base_name and m.label.startswith(f"{base_name} net, ")
    # Every changeable group is moved once: the groups with more than one option (expand ratio counts once even
    # where some stage has a single option).
    groups = [changed_groups(space, base, m.arch)[0] for m in moves]
    assert set(groups) == set(changed_groups(space, space.max_arch(), space.min_arch()))


def test_tiny_row_count_by_hand():
    # tiny: resolution, all kernels, all expands (mb1 has only [1], the others two or three options), 8 widths
    # (stem, mb1..mb6, head: every one has two options), 6 depths: 1 + 1 + 1 + 8 + 6 = 17 moves from each base.
    space = load_space("tiny")
    assert len(single_dimension_moves(space, space.max_arch(), "min")) == 17
    assert len(single_dimension_moves(space, space.min_arch(), "max")) == 17
    assert len(combined_moves(space)) == 2
    assert len(probe_plan(space)) == 2 + 17 + 17 + 2
    assert len(probe_plan(space, combined=False)) == 36
    # A one-option group is never a move: a space where every resolution is the same has no resolution row.
    one = space_from_dict({**space.to_dict(), "resolutions": [28]})
    assert [m.dimension for m in single_dimension_moves(one, one.max_arch(), "min")].count("resolution") == 0


def test_shortcut_labels():
    # Under AttentiveNAS's rule (the tiny space itself now uses channel_pad; see the next test).
    space = space_from_dict({**load_space("tiny").to_dict(), "shortcut": "conv_when_widths_differ"})
    hi, lo = space.max_arch(), space.min_arch()
    moves = {m.label: m for m in single_dimension_moves(space, hi, "min")}
    # max net: mb1 16 -> mb2 24 is a 1x1-conv shortcut; mb2 at 16 makes it an identity.
    mb2 = moves["max net, width mb2 24->16"]
    assert mb2.dimension == "width" and mb2.position == "mb2" and mb2.arch.width[2] == 16
    assert shortcut_changes(space, hi, mb2.arch) == ["mb2 start: conv->identity"]
    assert shortcut_changes(space, hi, moves["max net, width stem 16->8"].arch) == ["mb1 start: identity->conv"]
    assert shortcut_changes(space, hi, moves["max net, resolution 28->24"].arch) == []
    assert shortcut_changes(space, hi, moves["max net, depth mb3 3->1"].arch) == []  # removed blocks: no change
    # min net: mb1 8 -> 16 changes two stage starts (mb1 from the stem's 8, mb2 into mb2's 16).
    up = {m.label: m for m in single_dimension_moves(space, lo, "max")}["min net, width mb1 8->16"]
    assert shortcut_changes(space, lo, up.arch) == ["mb1 start: identity->conv", "mb2 start: conv->identity"]


def test_shortcut_labels_follow_the_space_rule():
    # The labels come from the decoded spec, so the space's shortcut rule decides them.
    d = load_space("tiny").to_dict()
    always = space_from_dict({**d, "shortcut": "conv_at_stage_start"})
    hi = always.max_arch()
    for m in single_dimension_moves(always, hi, "min"):
        assert shortcut_changes(always, hi, m.arch) == [], m.label
    pad = space_from_dict({**d, "shortcut": "channel_pad"})
    hi = pad.max_arch()
    mb2 = next(m for m in single_dimension_moves(pad, hi, "min") if m.position == "mb2" and m.dimension == "width")
    assert shortcut_changes(pad, hi, mb2.arch) == ["mb2 start: pad->identity"]


def test_bad_direction():
    space = load_space("tiny")
    with pytest.raises(ValueError, match="toward"):
        single_dimension_moves(space, space.max_arch(), "up")


def test_cli_end_to_end(supernet_checkpoint, tmp_path, capsys):
    checkpoint = supernet_checkpoint
    out = tmp_path / "probe"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--calib-batches", "1", "--calib-batch-size", "16",
            "--holdout-images", "24", "--threads", "1", "--no-progress"]
    assert probe_cli.main(argv) == 0
    stdout = capsys.readouterr().out
    report = json.loads((out / "probe.json").read_text())
    rows = report["rows"]
    space = load_space("tiny")
    plan = probe_plan(space)
    assert [r["label"] for r in rows] == [m.label for m in plan]  # one row per move plus the bases and combined
    assert report["holdout_images"] == 24 and report["split"] == "holdout" and report["warning"]
    by_label = {r["label"]: r for r in rows}
    top_max, top_min = by_label["max net"]["holdout_top1"], by_label["min net"]["holdout_top1"]
    for r in rows:
        assert 0 <= r["holdout_top1"] <= 100 and r["mflops"] > 0
        base_top1 = top_max if r["base"] == "max" else top_min
        assert r["drop_vs_base"] == pytest.approx(base_top1 - r["holdout_top1"])
        if r["base"] == "max" and r["dimension"] != "base":
            assert r["above_min"] == (r["holdout_top1"] > top_min)
        else:
            assert r["above_min"] is None
    assert by_label["max net, width mb2 24->16"]["shortcut_changes"] == ["mb2 start: pad->identity"]
    assert by_label["max net"]["mflops"] == pytest.approx(max(r["mflops"] for r in rows))
    singles = [r for r in rows if r["base"] == "max" and r["dimension"] not in ("base", "combined")]
    above = sum(r["above_min"] for r in singles)
    assert report["summary"] == (f"{above} of 17 single-dimension moves from the max net score above the min net "
                                 f"(min: {top_min:.2f}%)")
    assert report["summary"] in stdout and "| max net, width mb2 24->16 |" in stdout
    with open(out / "probe.csv", newline="") as f:
        assert [r["label"] for r in csv.DictReader(f)] == [r["label"] for r in rows]


def test_cli_usage_errors(supernet_checkpoint, tmp_path, capsys):
    checkpoint = supernet_checkpoint
    def usage(argv, *fragments):
        assert probe_cli.main([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        for fragment in fragments:
            assert fragment in err, err

    missing = tmp_path / "missing.pt"
    usage(["--checkpoint", missing], "--checkpoint", "file not found", str(missing))
    usage([], "--checkpoint")
    usage(["--checkpoint", checkpoint, "--calib-batches", "0"], "--calib-batches must be >= 1")
    usage(["--checkpoint", checkpoint, "--holdout-images", "many"], "--holdout-images", "many")
    usage(["--checkpoint", checkpoint, "--device", "tpu", "--out", tmp_path / "o"], "--device", "'tpu'",
          "auto, cpu, cuda, cuda:N")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(Path(checkpoint).read_bytes()[:1000])
    usage(["--checkpoint", truncated, "--out", tmp_path / "o"], str(truncated), "not a readable")
    foreign = tmp_path / "foreign.pt"
    foreign.write_text("not a checkpoint\n")
    usage(["--checkpoint", foreign, "--out", tmp_path / "o"], str(foreign), "not a readable")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)  # a torch file, but no supernet in it
    usage(["--checkpoint", other, "--out", tmp_path / "o"], str(other), "needs the keys 'model' and 'space'")
    assert not (tmp_path / "o").exists()
