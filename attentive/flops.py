"""Analytic multiply-adds (the papers' "FLOPs") and parameter counts.

Convention: every conv (squeeze-excite convs included) and linear layer counts `out_elements * in/groups * k*k`
multiply-adds; BN, activations, pooling and additions count nothing. This equals fvcore's conv + linear count
on the extracted static net (tests/test_flops.py checks it).

`count_flops` walks the decoded spec of one arch; `count_flops_batch` computes many archs at once from lookup
tables indexed by gene (no Python loop over archs): all blocks after the first in a stage are identical, so a
stage costs `first_block + (depth - 1) * later_block`.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

from .space import Arch, SearchSpace
from .spec import HEAD_EXPAND, NetSpec, block_shortcut, conv_out_size, decode, expanded_chs, se_chs

STEM_KERNEL = 3


def _spec_flops_params(spec: NetSpec) -> tuple[int, int]:
    h = conv_out_size(spec.resolution, spec.stem_stride)
    flops = h * h * spec.in_chans * spec.stem_chs * STEM_KERNEL**2
    params = spec.in_chans * spec.stem_chs * STEM_KERNEL**2 + 2 * spec.stem_chs
    for b in spec.blocks:
        hi, ho = b.in_size, b.out_size
        if b.expand:
            flops += hi * hi * b.in_chs * b.mid_chs
            params += b.in_chs * b.mid_chs + 2 * b.mid_chs
        flops += ho * ho * b.mid_chs * b.kernel_size**2
        params += b.mid_chs * b.kernel_size**2 + 2 * b.mid_chs
        if b.se_chs:
            flops += 2 * b.mid_chs * b.se_chs
            params += 2 * b.mid_chs * b.se_chs + b.se_chs + b.mid_chs
        flops += ho * ho * b.mid_chs * b.out_chs
        params += b.mid_chs * b.out_chs + 2 * b.out_chs
        if b.shortcut_conv:
            flops += ho * ho * b.in_chs * b.out_chs
            params += b.in_chs * b.out_chs
    h = spec.head_in_size
    flops += h * h * spec.head_in_chs * spec.head_mid_chs + spec.head_mid_chs * spec.head_out_chs
    flops += spec.head_out_chs * spec.num_classes
    params += spec.head_in_chs * spec.head_mid_chs + 2 * spec.head_mid_chs + spec.head_mid_chs * spec.head_out_chs
    params += spec.head_out_chs * spec.num_classes + spec.num_classes
    return flops, params


def count_flops(space: SearchSpace, arch: Arch | dict, num_classes: int | None = None) -> float:
    """Multiply-adds of `arch`, in millions."""
    arch = Arch.from_dict(arch) if isinstance(arch, dict) else arch
    return _spec_flops_params(decode(space, arch, num_classes))[0] / 1e6


def count_params(space: SearchSpace, arch: Arch | dict, num_classes: int | None = None) -> float:
    """Parameters of `arch` (BN affine included, running stats not), in millions."""
    arch = Arch.from_dict(arch) if isinstance(arch, dict) else arch
    return _spec_flops_params(decode(space, arch, num_classes))[1] / 1e6


class _StageTables:
    """Per-stage lookup tables over (input-width option, expand option) for one stage."""

    def __init__(self, in_widths: Sequence[int], out_widths: Sequence[int], expands: Sequence[float], se: bool,
                 shortcut_conv: np.ndarray | None = None):
        self.mid = np.array([[expanded_chs(i, e) for e in expands] for i in in_widths], dtype=np.int64)
        self.se = np.array([[se_chs(m) if se else 0 for m in row] for row in self.mid], dtype=np.int64)
        # (input-width option, output-width option) -> 1 where the block has a 1x1 shortcut conv
        self.shortcut_conv = shortcut_conv


class FlopsTable:
    """Vectorized FLOPs/params for one (space, num_classes); build once, call with gene-index arrays."""

    def __init__(self, space: SearchSpace, num_classes: int | None = None) -> None:
        self.space = space
        self.num_classes = space.num_classes if num_classes is None else num_classes
        s_count = space.num_stages
        self.w_off, self.d_off = 1, 1 + s_count + 2
        self.k_off, self.e_off = self.d_off + s_count, self.d_off + 2 * s_count
        c = space.choices()
        self.widths = [np.array(o, dtype=np.int64) for o in c["width"]]
        self.depths = [np.array(o, dtype=np.int64) for o in c["depth"]]
        self.kernels = [np.array(o, dtype=np.int64) for o in c["kernel_size"]]
        self.is_expand = [np.array([e != 1 for e in o]) for o in c["expand_ratio"]]
        # Spatial sizes depend only on the resolution: stage input and output sizes per resolution option.
        stem_out = [conv_out_size(r, space.stem.stride) for r in space.resolutions]
        self.stem_size = np.array(stem_out, dtype=np.int64)
        size_in, size_out = [], []
        sizes = list(stem_out)
        for st in space.stages:
            size_in.append(np.array(sizes, dtype=np.int64))
            sizes = [conv_out_size(h, st.stride) for h in sizes]
            size_out.append(np.array(sizes, dtype=np.int64))
        self.size_in, self.size_out = size_in, size_out
        self.first, self.later = [], []
        prev = space.stem.widths
        for s, st in enumerate(space.stages):
            conv = np.array([[block_shortcut(space, s, 0, i, o) == "conv" for o in st.widths] for i in prev],
                            dtype=np.int64)
            self.first.append(_StageTables(prev, st.widths, st.expand_ratios, st.se, conv))
            self.later.append(_StageTables(st.widths, st.widths, st.expand_ratios, st.se))
            prev = st.widths

    def __call__(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(FLOPs, params), both int64 arrays, for gene-index rows `idx` of shape (n, num_genes)."""
        idx = np.asarray(idx, dtype=np.int64)
        r = idx[:, 0]
        h = self.stem_size[r]
        stem_w = self.widths[0][idx[:, self.w_off]]
        flops = h * h * self.space.in_chans * stem_w * STEM_KERNEL**2
        params = self.space.in_chans * stem_w * STEM_KERNEL**2 + 2 * stem_w
        for s in range(self.space.num_stages):
            wi_prev, wi = idx[:, self.w_off + s], idx[:, self.w_off + s + 1]
            ei = idx[:, self.e_off + s]
            w_in, w_out = self.widths[s][wi_prev], self.widths[s + 1][wi]
            k2 = self.kernels[s][idx[:, self.k_off + s]] ** 2
            depth = self.depths[s][idx[:, self.d_off + s]]
            expand = self.is_expand[s][ei]
            hi, ho = self.size_in[s][r], self.size_out[s][r]
            hi2, ho2 = hi * hi, ho * ho

            mid, se = self.first[s].mid[wi_prev, ei], self.first[s].se[wi_prev, ei]
            f_first = expand * hi2 * w_in * mid + ho2 * mid * k2 + 2 * mid * se + ho2 * mid * w_out
            has_conv = self.first[s].shortcut_conv[wi_prev, wi]
            f_first += has_conv * ho2 * w_in * w_out
            p_first = expand * (w_in * mid + 2 * mid) + mid * k2 + 2 * mid + 2 * mid * se + (se > 0) * (se + mid)
            p_first += mid * w_out + 2 * w_out + has_conv * w_in * w_out

            mid, se = self.later[s].mid[wi, ei], self.later[s].se[wi, ei]
            f_later = expand * ho2 * w_out * mid + ho2 * mid * k2 + 2 * mid * se + ho2 * mid * w_out
            p_later = expand * (w_out * mid + 2 * mid) + mid * k2 + 2 * mid + 2 * mid * se + (se > 0) * (se + mid)
            p_later += mid * w_out + 2 * w_out

            flops = flops + f_first + (depth - 1) * f_later
            params = params + p_first + (depth - 1) * p_later
        last = self.widths[-2][idx[:, self.w_off + self.space.num_stages]]
        head = self.widths[-1][idx[:, self.w_off + self.space.num_stages + 1]]
        h = self.size_out[-1][r]
        mid = last * HEAD_EXPAND
        nc = self.num_classes
        flops = flops + h * h * last * mid + mid * head + head * nc
        params = params + last * mid + 2 * mid + mid * head + head * nc + nc
        return flops, params


@lru_cache(maxsize=32)
def _table(space_hash: str, num_classes: int | None, space: SearchSpace) -> FlopsTable:
    return FlopsTable(space, num_classes)


def flops_table(space: SearchSpace, num_classes: int | None = None) -> FlopsTable:
    return _table(space.hash, num_classes, space)


def encode(space: SearchSpace, archs: Sequence[Arch | dict]) -> np.ndarray:
    """Gene-index array (n, num_genes) for a list of archs (validated)."""
    out = np.empty((len(archs), len(space.gene_sizes())), dtype=np.int64)
    for i, a in enumerate(archs):
        out[i] = space.arch_to_indices(Arch.from_dict(a) if isinstance(a, dict) else a)
    return out


def count_flops_batch(space: SearchSpace, archs: Sequence[Arch | dict] | np.ndarray,
                      num_classes: int | None = None) -> np.ndarray:
    """MFLOPs of many archs at once (float64 array). `archs` is a list of Arch/dicts, or a gene-index array
    from `space.sample_indices` / `encode` (the fast path)."""
    idx = archs if isinstance(archs, np.ndarray) else encode(space, archs)
    return flops_table(space, num_classes)(idx)[0] / 1e6


def count_params_batch(space: SearchSpace, archs: Sequence[Arch | dict] | np.ndarray,
                       num_classes: int | None = None) -> np.ndarray:
    """Parameters (millions) of many archs at once."""
    idx = archs if isinstance(archs, np.ndarray) else encode(space, archs)
    return flops_table(space, num_classes)(idx)[1] / 1e6
