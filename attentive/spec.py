"""Arch decoder: (space, arch) -> plain dicts describing every layer of the subnet.

Kept apart from the module builders (as in timm's `_efficientnet_builder`): the static net, the supernet's
`set_arch` and the FLOPs counter all read the same decoded spec, so they cannot disagree on a channel count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from timm.layers import make_divisible

from .space import Arch, SearchSpace

SE_REDUCTION = 4
HEAD_EXPAND = 6  # MobileNetV3 head: a 1x1 conv expands the last stage's width 6x (fixed, not searched)


def expanded_chs(in_chs: int, expand_ratio: float) -> int:
    """Width of an MBConv block's depthwise stage; equal to the input when there is no expansion conv."""
    if expand_ratio == 1:
        return in_chs
    return make_divisible(round(in_chs * expand_ratio), 8)


def se_chs(mid_chs: int) -> int:
    return make_divisible(mid_chs // SE_REDUCTION, 8)


def conv_out_size(size: int, stride: int) -> int:
    """Output size of a 'same'-padded conv (padding k//2, odd k) or of the 2x2 ceil-mode shortcut pool."""
    return math.ceil(size / stride)


@dataclass(frozen=True)
class BlockSpec:
    in_chs: int
    mid_chs: int
    out_chs: int
    kernel_size: int
    stride: int
    se_chs: int  # 0: no squeeze-excite
    expand: bool  # False: no 1x1 expansion conv (expand ratio 1)
    activation: str
    stage: int
    index_in_stage: int
    in_size: int  # spatial size of the block's input
    shortcut: str = "identity"  # identity | conv (1x1 projection) | pad (channels cut or zero-padded)

    @property
    def out_size(self) -> int:
        return conv_out_size(self.in_size, self.stride)

    @property
    def shortcut_pool(self) -> bool:
        return self.stride > 1

    @property
    def shortcut_conv(self) -> bool:
        return self.shortcut == "conv"


def stage_start_widths_can_differ(space: SearchSpace, stage: int) -> bool:
    """Whether some arch has different input and output widths at `stage`'s first block."""
    prev = space.stem.widths if stage == 0 else space.stages[stage - 1].widths
    return any(i != o for i in prev for o in space.stages[stage].widths)


def block_shortcut(space: SearchSpace, stage: int, index_in_stage: int, in_chs: int, out_chs: int) -> str:
    """The shortcut kind of one block under the space's `shortcut` rule (see attentive.space.SHORTCUTS)."""
    if index_in_stage > 0 or not stage_start_widths_can_differ(space, stage):
        return "identity"
    if space.shortcut == "channel_pad":
        return "pad" if in_chs != out_chs else "identity"
    if space.shortcut == "conv_at_stage_start":
        return "conv"
    return "conv" if in_chs != out_chs else "identity"


@dataclass(frozen=True)
class NetSpec:
    in_chans: int
    resolution: int
    stem_chs: int
    stem_stride: int
    stem_activation: str
    blocks: tuple[BlockSpec, ...]
    head_in_chs: int
    head_mid_chs: int
    head_out_chs: int
    head_activation: str
    head_in_size: int
    num_classes: int
    arch: Arch  # what was decoded, so a net built from the spec knows its arch and space
    space: SearchSpace = field(compare=False, repr=False)


def decode(space: SearchSpace, arch: Arch, num_classes: int | None = None) -> NetSpec:
    """Every layer's sizes for `arch` (validated against `space`)."""
    space.validate(arch)
    size = conv_out_size(arch.resolution, space.stem.stride)
    in_chs = arch.width[0]
    blocks = []
    for s, stage in enumerate(space.stages):
        out_chs = arch.width[s + 1]
        for j in range(arch.depth[s]):
            stride = stage.stride if j == 0 else 1
            mid = expanded_chs(in_chs, arch.expand_ratio[s])
            blocks.append(
                BlockSpec(
                    in_chs=in_chs,
                    mid_chs=mid,
                    out_chs=out_chs,
                    kernel_size=arch.kernel_size[s],
                    stride=stride,
                    se_chs=se_chs(mid) if stage.se else 0,
                    expand=arch.expand_ratio[s] != 1,
                    activation=stage.activation,
                    stage=s,
                    index_in_stage=j,
                    in_size=size,
                    shortcut=block_shortcut(space, s, j, in_chs, out_chs),
                )
            )
            size = conv_out_size(size, stride)
            in_chs = out_chs
    return NetSpec(
        in_chans=space.in_chans,
        resolution=arch.resolution,
        stem_chs=arch.width[0],
        stem_stride=space.stem.stride,
        stem_activation=space.stem.activation,
        blocks=tuple(blocks),
        head_in_chs=in_chs,
        head_mid_chs=in_chs * HEAD_EXPAND,
        head_out_chs=arch.width[-1],
        head_activation=space.head.activation,
        head_in_size=size,
        num_classes=space.num_classes if num_classes is None else num_classes,
        arch=arch,
        space=space,
    )
