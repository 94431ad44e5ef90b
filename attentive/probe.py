"""Per-dimension probe of a supernet: the archs one dimension away from the largest or smallest subnet.

A trained supernet can rank middle subnets below the smallest one. Moving ONE dimension of the max net toward
its min value (or of the min net toward its max value) shows which dimension the weight sharing handles badly.
This module only builds the archs and labels them; bench/probe.py measures them.

Dimension groups (each move changes exactly one): the resolution; all kernel sizes together; all expand ratios
together; one width (stem, each stage, head); one stage's depth.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .space import Arch, SearchSpace
from .spec import NetSpec, decode

TOWARD = ("min", "max")


@dataclass(frozen=True)
class Move:
    """One probed arch: `base` ("max" or "min") with `dimension` at `position` changed from `old` to `new`."""

    label: str
    arch: Arch
    base: str
    dimension: str  # resolution | kernel_size | expand_ratio | width | depth | combined
    position: str  # "all", a stage name, "stem" or "head"
    old: Any
    new: Any


def _pick(options: tuple, toward: str) -> Any:
    return min(options) if toward == "min" else max(options)


def _fmt(values: tuple) -> Any:
    """One value when all entries agree (a readable label), else the list."""
    return values[0] if len(set(values)) == 1 else list(values)


def width_position_names(space: SearchSpace) -> list[str]:
    """Names of the arch's width entries: stem, each stage by name, head."""
    return ["stem", *(s.name for s in space.stages), "head"]


def base_arch(space: SearchSpace, base: str) -> Arch:
    if base not in TOWARD:
        raise ValueError(f"base must be one of {TOWARD}, got {base!r}")
    return space.max_arch() if base == "max" else space.min_arch()


def single_dimension_moves(space: SearchSpace, base: Arch, toward: str) -> list[Move]:
    """Every arch that differs from `base` in exactly one dimension group, that group set to its `toward`
    ("min" or "max") value. Moves that leave `base` unchanged (the group is already there, or has one option)
    are skipped. Order: resolution, kernel sizes, expand ratios, widths (stem, stages, head), depths."""
    if toward not in TOWARD:
        raise ValueError(f"toward must be one of {TOWARD}, got {toward!r}")
    space.validate(base)
    name = "max" if toward == "min" else "min"  # the net we start from, for the label
    c = space.choices()
    moves: list[Move] = []

    def add(dimension: str, position: str, old: Any, new: Any, arch: Arch) -> None:
        if arch != base:
            change = f"{old}->{new}" if not isinstance(old, list) and not isinstance(new, list) else f"-> {toward}"
            if dimension == "resolution":
                label = f"{name} net, resolution {change}"
            elif position == "all":
                label = f"{name} net, all {dimension} {change}"
            else:
                label = f"{name} net, {dimension} {position} {change}"
            moves.append(Move(label, space.validate(arch), name, dimension, position, old, new))

    r = _pick(c["resolution"][0], toward)
    add("resolution", "all", base.resolution, r, replace(base, resolution=r))
    for field in ("kernel_size", "expand_ratio"):
        new = tuple(_pick(o, toward) for o in c[field])
        add(field, "all", _fmt(getattr(base, field)), _fmt(new), replace(base, **{field: new}))
    for i, (options, pos) in enumerate(zip(c["width"], width_position_names(space))):
        w = list(base.width)
        w[i] = _pick(options, toward)
        add("width", pos, base.width[i], w[i], replace(base, width=tuple(w)))
    for i, (options, stage) in enumerate(zip(c["depth"], space.stages)):
        d = list(base.depth)
        d[i] = _pick(options, toward)
        add("depth", stage.name, base.depth[i], d[i], replace(base, depth=tuple(d)))
    return moves


def combined_moves(space: SearchSpace) -> list[Move]:
    """The two combined rows of the first hand-run probe: the two costliest single dimensions (resolution and
    kernel sizes) moved together, from the max net toward min and from the min net toward max."""
    moves = []
    for name, toward in (("max", "min"), ("min", "max")):
        base = base_arch(space, name)
        c = space.choices()
        r = _pick(c["resolution"][0], toward)
        k = tuple(_pick(o, toward) for o in c["kernel_size"])
        arch = replace(base, resolution=r, kernel_size=k)
        if arch != base:
            old = (base.resolution, _fmt(base.kernel_size))
            label = f"{name} net, resolution+kernel_size {old[0]}->{r}, {old[1]}->{_fmt(k)}"
            moves.append(Move(label, space.validate(arch), name, "combined", "resolution+kernel_size", old,
                              (r, _fmt(k))))
    return moves


def _shortcut_kinds(spec: NetSpec, space: SearchSpace) -> dict[str, str]:
    """Shortcut kind per block ("conv", "identity", "pad"), keyed "<stage> start" / "<stage> block j"; read from
    the decoded spec, so the space's `shortcut` rule (spec.block_shortcut) is honoured, not re-derived here."""
    kinds = {}
    for b in spec.blocks:
        stage = space.stages[b.stage].name
        key = f"{stage} start" if b.index_in_stage == 0 else f"{stage} block {b.index_in_stage}"
        kinds[key] = b.shortcut
    return kinds


def shortcut_changes(space: SearchSpace, base: Arch, moved: Arch) -> list[str]:
    """Shortcuts that change kind between `base` and `moved`, e.g. ``["mb2 start: conv->identity"]``, over the
    blocks both archs have (a depth move adds or removes later blocks; those are not changes of kind)."""
    before = _shortcut_kinds(decode(space, base), space)
    after = _shortcut_kinds(decode(space, moved), space)
    return [f"{key}: {before[key]}->{after[key]}" for key in before if key in after and before[key] != after[key]]


def probe_plan(space: SearchSpace, combined: bool = True) -> list[Move]:
    """All rows of a probe in table order: the max net, its moves toward min, the min net, its moves toward
    max, then (with `combined`) the combined rows. Base rows have dimension "base"."""
    hi, lo = space.max_arch(), space.min_arch()
    plan = [Move("max net", hi, "max", "base", "all", None, None), *single_dimension_moves(space, hi, "min"),
            Move("min net", lo, "min", "base", "all", None, None), *single_dimension_moves(space, lo, "max")]
    return plan + (combined_moves(space) if combined else [])
