"""Search spaces: a MobileNetV3-style space described as data (YAML), and the `Arch` that picks one subnet.

An `Arch` uses the dict layout of AttentiveNAS arch configs, so their published configs load as written:
``{"resolution": 192, "width": [stem, stage_1..stage_n, head], "depth": [...n], "kernel_size": [...n],
"expand_ratio": [...n]}``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np
import yaml

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable  # Python >= 3.11; only an annotation here

# The named spaces ship inside the package (package data), so `load_space("tiny")` works from an installed wheel.
SPACES_DIR: Traversable = resources.files(__package__) / "spaces"
ACTIVATIONS = ("relu", "relu6", "swish", "hswish", "gelu")
# The shortcut of a stage's first block, whose input and output widths may differ (later blocks: identity).
# conv_when_widths_differ: AttentiveNAS's, a 1x1 conv when the arch's widths differ, identity when they are
#   equal; a subnet whose widths are equal there uses an identity that the largest and smallest nets may never
#   train (the first block's branch learned to complement a conv).
# conv_at_stage_start: a 1x1 conv at every stage start whose widths can differ, equal widths included.
# channel_pad: parameter-free; the input's channels, cut to the output width or zero-padded up to it.
SHORTCUTS = ("conv_when_widths_differ", "conv_at_stage_start", "channel_pad")
DEFAULT_SHORTCUT = SHORTCUTS[0]
ARCH_KEYS = ("resolution", "width", "depth", "kernel_size", "expand_ratio")


@dataclass(frozen=True)
class Arch:
    """One subnet of a space. Lists are stored as tuples so an Arch is hashable and can key a cache."""

    resolution: int
    width: tuple[int, ...]
    depth: tuple[int, ...]
    kernel_size: tuple[int, ...]
    expand_ratio: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("width", "depth", "kernel_size", "expand_ratio"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Arch":
        if not isinstance(d, dict):
            raise ValueError(f"arch must be a dict with keys {list(ARCH_KEYS)}, got {type(d).__name__}")
        missing = [k for k in ARCH_KEYS if k not in d]
        unknown = [k for k in d if k not in ARCH_KEYS]
        if missing or unknown:
            raise ValueError(f"arch dict: missing keys {missing}, unknown keys {unknown}; expected {list(ARCH_KEYS)}")
        for k in ARCH_KEYS[1:]:
            if not isinstance(d[k], (list, tuple)):
                raise ValueError(f"arch field '{k}' must be a list, got {d[k]!r}")
        return cls(
            resolution=_as_int(d["resolution"], "resolution"),
            width=tuple(_as_int(v, "width") for v in d["width"]),
            depth=tuple(_as_int(v, "depth") for v in d["depth"]),
            kernel_size=tuple(_as_int(v, "kernel_size") for v in d["kernel_size"]),
            expand_ratio=tuple(_as_number(v, "expand_ratio") for v in d["expand_ratio"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "resolution": self.resolution,
            "width": list(self.width),
            "depth": list(self.depth),
            "kernel_size": list(self.kernel_size),
            "expand_ratio": list(self.expand_ratio),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __str__(self) -> str:
        return self.to_json()


def _as_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or int(v) != v:
        raise ValueError(f"arch field '{name}': {v!r} is not an integer")
    return int(v)


def _as_number(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise ValueError(f"arch field '{name}': {v!r} is not a number")
    return int(v) if float(v).is_integer() else float(v)


@dataclass(frozen=True)
class StemSpec:
    widths: tuple[int, ...]
    stride: int
    activation: str


@dataclass(frozen=True)
class StageSpec:
    name: str
    widths: tuple[int, ...]
    depths: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    expand_ratios: tuple[float, ...]
    stride: int
    activation: str
    se: bool


@dataclass(frozen=True)
class HeadSpec:
    widths: tuple[int, ...]
    activation: str  # the head's fixed 1x1 expand ratio is attentive.spec.HEAD_EXPAND


@dataclass(frozen=True)
class SearchSpace:
    """A space of archs. Build with `load_space`; the YAML is validated key by key."""

    name: str
    resolutions: tuple[int, ...]
    stem: StemSpec
    stages: tuple[StageSpec, ...]
    head: HeadSpec
    num_classes: int
    in_chans: int = 3
    shortcut: str = "conv_when_widths_differ"  # see SHORTCUTS
    kernel_transform: bool = False  # smaller depthwise kernels through OFA's learned transforms (layers.py)
    source: dict = field(default_factory=dict, compare=False, repr=False)

    # ---- choices, in arch-field order ----------------------------------------------------------
    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def width_choices(self) -> list[tuple[int, ...]]:
        return [self.stem.widths] + [s.widths for s in self.stages] + [self.head.widths]

    def choices(self) -> dict[str, list[tuple]]:
        """Allowed values per arch field, as lists aligned with the arch lists (resolution: one tuple)."""
        return {
            "resolution": [self.resolutions],
            "width": self.width_choices,
            "depth": [s.depths for s in self.stages],
            "kernel_size": [s.kernel_sizes for s in self.stages],
            "expand_ratio": [s.expand_ratios for s in self.stages],
        }

    @property
    def num_archs(self) -> int:
        n = 1
        for options in self.choices().values():
            for o in options:
                n *= len(o)
        return n

    @property
    def hash(self) -> str:
        """Content hash of the space (not of the file's formatting): records in checkpoints and predictors."""
        canon = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(canon.encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "resolutions": list(self.resolutions),
            "stem": {"widths": list(self.stem.widths), "stride": self.stem.stride, "activation": self.stem.activation},
            "stages": [
                {
                    "name": s.name,
                    "widths": list(s.widths),
                    "depths": list(s.depths),
                    "kernel_sizes": list(s.kernel_sizes),
                    "expand_ratios": list(s.expand_ratios),
                    "stride": s.stride,
                    "activation": s.activation,
                    "se": s.se,
                }
                for s in self.stages
            ],
            "head": {"widths": list(self.head.widths), "activation": self.head.activation},
            # Only when not the default, so that spaces without the key keep their hash (checkpoints, caches).
            **({"shortcut": self.shortcut} if self.shortcut != DEFAULT_SHORTCUT else {}),
            **({"kernel_transform": True} if self.kernel_transform else {}),
        }

    # ---- validation ------------------------------------------------------------------------------
    def validate(self, arch: Arch) -> Arch:
        """Raise ValueError naming the field, the stage and the allowed values if `arch` is not in the space."""
        if not isinstance(arch, Arch):
            raise ValueError(f"expected an Arch, got {type(arch).__name__}")
        if arch.resolution not in self.resolutions:
            raise ValueError(f"resolution {arch.resolution} not allowed in space '{self.name}'; allowed: {list(self.resolutions)}")
        n = self.num_stages
        for fld, expected_len in (("width", n + 2), ("depth", n), ("kernel_size", n), ("expand_ratio", n)):
            values = getattr(arch, fld)
            if len(values) != expected_len:
                raise ValueError(
                    f"field '{fld}' has {len(values)} entries, space '{self.name}' needs {expected_len}"
                    + (" (stem, each stage, head)" if fld == "width" else " (one per stage)")
                )
        for fld, options in self.choices().items():
            if fld == "resolution":
                continue
            for i, (v, allowed) in enumerate(zip(getattr(arch, fld), options)):
                if v not in allowed:
                    raise ValueError(
                        f"field '{fld}' of {self._position_name(fld, i)} is {v}; allowed: {list(allowed)}"
                    )
        return arch

    def _position_name(self, fld: str, i: int) -> str:
        if fld == "width":
            if i == 0:
                return "the stem"
            if i == self.num_stages + 1:
                return "the head"
            return f"stage {i} ({self.stages[i - 1].name})"
        return f"stage {i + 1} ({self.stages[i].name})"

    # ---- sampling ---------------------------------------------------------------------------------
    def _pick(self, rng: np.random.Generator | None, mode: str) -> Arch:
        def choose(options: Sequence) -> Any:
            if mode == "min":
                return min(options)
            if mode == "max":
                return max(options)
            return options[int(rng.integers(len(options)))]

        c = self.choices()
        return Arch(
            resolution=choose(c["resolution"][0]),
            width=tuple(choose(o) for o in c["width"]),
            depth=tuple(choose(o) for o in c["depth"]),
            kernel_size=tuple(choose(o) for o in c["kernel_size"]),
            expand_ratio=tuple(choose(o) for o in c["expand_ratio"]),
        )

    def min_arch(self) -> Arch:
        return self._pick(None, "min")

    def max_arch(self) -> Arch:
        return self._pick(None, "max")

    def with_largest(self, arch: Arch, fields: Iterable[str]) -> Arch:
        """`arch` with the named fields (of `ARCH_KEYS`) replaced by the largest arch's: progressive shrinking holds
        the dimensions that are not elastic yet at their largest values."""
        fields = tuple(fields)
        unknown = [f for f in fields if f not in ARCH_KEYS]
        if unknown:
            raise ValueError(f"unknown arch fields {unknown}; allowed: {list(ARCH_KEYS)}")
        if not fields:  # the trainer calls this every step; with nothing held it is `arch` itself
            return arch
        largest = self.max_arch()
        return dataclasses.replace(arch, **{f: getattr(largest, f) for f in fields})

    def sample(self, rng: np.random.Generator) -> Arch:
        """One arch uniformly at random over each choice."""
        _require_generator(rng)
        return self._pick(rng, "random")

    def sample_indices(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` random archs as an int array of choice indices, shape (n, num_genes): fast bulk sampling."""
        _require_generator(rng)
        sizes = np.array(self.gene_sizes())
        return (rng.random((n, len(sizes))) * sizes).astype(np.int64)

    def gene_sizes(self) -> list[int]:
        """Number of options of each gene, in `genes` order (resolution, widths, depths, kernels, expands)."""
        return [len(o) for options in self.choices().values() for o in options]

    @cached_property
    def gene_options(self) -> tuple[tuple, ...]:
        """Allowed values of each gene, in gene order; built once (decoding is on the samplers' hot path)."""
        return tuple(tuple(o) for opts in self.choices().values() for o in opts)

    def arch_from_indices(self, idx: Sequence[int]) -> Arch:
        idx = idx.tolist() if isinstance(idx, np.ndarray) else idx
        values = [opt[int(i)] for opt, i in zip(self.gene_options, idx)]
        n = self.num_stages
        return Arch(
            resolution=values[0],
            width=tuple(values[1 : n + 3]),
            depth=tuple(values[n + 3 : 2 * n + 3]),
            kernel_size=tuple(values[2 * n + 3 : 3 * n + 3]),
            expand_ratio=tuple(values[3 * n + 3 : 4 * n + 3]),
        )

    def arch_to_indices(self, arch: Arch) -> list[int]:
        self.validate(arch)
        values = [arch.resolution, *arch.width, *arch.depth, *arch.kernel_size, *arch.expand_ratio]
        return [opt.index(v) for opt, v in zip(self.gene_options, values)]


def _require_generator(rng: Any) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"expected a seeded numpy.random.Generator, got {type(rng).__name__}")


# ---- loading ------------------------------------------------------------------------------------------
_TOP_KEYS = {"name", "num_classes", "in_chans", "resolutions", "stem", "stages", "head", "shortcut", "kernel_transform"}
_STEM_KEYS = {"widths", "stride", "activation"}
_STAGE_KEYS = {"name", "widths", "depths", "kernel_sizes", "expand_ratios", "stride", "activation", "se"}
_HEAD_KEYS = {"widths", "activation"}


def available_spaces() -> list[str]:
    """Names of the spaces shipped with the package (`attentive/spaces/*.yaml`)."""
    return sorted(p.name[: -len(".yaml")] for p in SPACES_DIR.iterdir() if p.name.endswith(".yaml") and p.is_file())


def load_space(name_or_path: str | Path | SearchSpace) -> SearchSpace:
    """Load a space by name (one shipped in `attentive/spaces`, see `available_spaces()`) or by path to a YAML
    file."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    path = Path(name_or_path)
    source: Path | Traversable = path
    if not path.suffix:
        source = SPACES_DIR / f"{name_or_path}.yaml"
        if not source.is_file():
            raise FileNotFoundError(f"no search space named '{name_or_path}'; available: {available_spaces()}")
    elif not path.is_file():
        raise FileNotFoundError(f"search space file not found: {path}")
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    return space_from_dict(data, where=str(source))


def space_from_dict(data: Any, where: str = "space") -> SearchSpace:
    """Build a space from its YAML/JSON dict; every key and value is checked, errors name the key."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: top level must be a mapping with keys {sorted(_TOP_KEYS)}")
    _check_keys(data, _TOP_KEYS, where, required=_TOP_KEYS - {"in_chans", "shortcut", "kernel_transform"})
    shortcut = data.get("shortcut", DEFAULT_SHORTCUT)
    if shortcut not in SHORTCUTS:
        raise ValueError(f"{where}: unknown shortcut {shortcut!r}; allowed: {list(SHORTCUTS)}")
    stem = data["stem"]
    _check_keys(stem, _STEM_KEYS, f"{where}: stem")
    head = data["head"]
    _check_keys(head, _HEAD_KEYS, f"{where}: head")
    if not isinstance(data["stages"], list) or not data["stages"]:
        raise ValueError(f"{where}: 'stages' must be a non-empty list")
    stages = []
    for i, st in enumerate(data["stages"]):
        loc = f"{where}: stages[{i}]"
        _check_keys(st, _STAGE_KEYS, loc)
        stages.append(
            StageSpec(
                name=_str(st["name"], f"{loc}.name"),
                widths=_int_list(st["widths"], f"{loc}.widths"),
                depths=_int_list(st["depths"], f"{loc}.depths"),
                kernel_sizes=_int_list(st["kernel_sizes"], f"{loc}.kernel_sizes", odd=True),
                expand_ratios=_num_list(st["expand_ratios"], f"{loc}.expand_ratios"),
                stride=_stride(st["stride"], f"{loc}.stride"),
                activation=_activation(st["activation"], f"{loc}.activation"),
                se=_bool(st["se"], f"{loc}.se"),
            )
        )
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: stage names must be unique, got {names}")
    num_classes = data["num_classes"]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"{where}: 'num_classes' must be a positive integer, got {num_classes!r}")
    in_chans = data.get("in_chans", 3)
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"{where}: 'in_chans' must be a positive integer, got {in_chans!r}")
    return SearchSpace(
        name=_str(data["name"], f"{where}: name"),
        resolutions=_int_list(data["resolutions"], f"{where}: resolutions"),
        stem=StemSpec(
            widths=_int_list(stem["widths"], f"{where}: stem.widths"),
            stride=_stride(stem["stride"], f"{where}: stem.stride"),
            activation=_activation(stem["activation"], f"{where}: stem.activation"),
        ),
        stages=tuple(stages),
        head=HeadSpec(
            widths=_int_list(head["widths"], f"{where}: head.widths"),
            activation=_activation(head["activation"], f"{where}: head.activation"),
        ),
        num_classes=num_classes,
        in_chans=in_chans,
        shortcut=shortcut,
        kernel_transform=_bool(data.get("kernel_transform", False), f"{where}: kernel_transform"),
        source=data,
    )


def _check_keys(d: Any, allowed: set[str], where: str, required: set[str] | None = None) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: must be a mapping with keys {sorted(allowed)}")
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    missing = sorted((allowed if required is None else required) - set(d))
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")


def _int_list(v: Any, where: str, odd: bool = False) -> tuple[int, ...]:
    if not isinstance(v, list) or not v:
        raise ValueError(f"{where}: must be a non-empty list of positive integers, got {v!r}")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, int) or x < 1:
            raise ValueError(f"{where}: {x!r} is not a positive integer")
        if odd and x % 2 == 0:
            raise ValueError(f"{where}: kernel size {x} must be odd")
    if len(set(v)) != len(v):
        raise ValueError(f"{where}: duplicate values in {v}")
    return tuple(sorted(v))


def _num_list(v: Any, where: str) -> tuple[float, ...]:
    if not isinstance(v, list) or not v:
        raise ValueError(f"{where}: must be a non-empty list of numbers >= 1, got {v!r}")
    for x in v:
        if isinstance(x, bool) or not isinstance(x, (int, float)) or x < 1 or math.isnan(x):
            raise ValueError(f"{where}: {x!r} is not a number >= 1")
    if len(set(v)) != len(v):
        raise ValueError(f"{where}: duplicate values in {v}")
    return tuple(sorted(int(x) if float(x).is_integer() else float(x) for x in v))


def _stride(v: Any, where: str) -> int:
    if v not in (1, 2) or isinstance(v, bool):
        raise ValueError(f"{where}: stride must be 1 or 2, got {v!r}")
    return int(v)


def _activation(v: Any, where: str) -> str:
    if v not in ACTIVATIONS:
        raise ValueError(f"{where}: unknown activation {v!r}; allowed: {list(ACTIVATIONS)}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{where}: must be true or false, got {v!r}")
    return v


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"{where}: must be a non-empty string, got {v!r}")
    return v
