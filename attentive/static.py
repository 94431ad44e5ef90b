"""Standalone static subnets built from plain torch layers: what `Supernet.extract` returns and what is deployed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .layers import ChannelPad, SqueezeExcite, act_layer
from .space import Arch, SearchSpace
from .spec import BlockSpec, NetSpec, decode


class ConvBnAct(nn.Module):
    """Conv, BN, activation: built from given layers (`Supernet.extract` hands in copies of its slices) or, with
    `ConvBnAct.fresh`, freshly initialized."""

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, act_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act = act_layer(inplace=True)

    @classmethod
    def fresh(cls, in_chs: int, out_chs: int, kernel_size: int, stride: int,
              act_layer: Callable[..., nn.Module]) -> "ConvBnAct":
        return cls(nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False),
                   nn.BatchNorm2d(out_chs), act_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


@dataclass
class BlockLayers:
    """The weighted layers of one `MBConvBlock`; None where the block has none (no expansion conv, no
    squeeze-excite, a shortcut without a conv)."""

    conv_pw: nn.Conv2d | None
    bn1: nn.BatchNorm2d | None
    conv_dw: nn.Conv2d
    bn2: nn.BatchNorm2d
    se: SqueezeExcite | None
    conv_pwl: nn.Conv2d
    bn3: nn.BatchNorm2d
    shortcut_conv: nn.Conv2d | None


def fresh_block_layers(b: BlockSpec) -> BlockLayers:
    """Freshly initialized layers for block `b` (created in module order: the seeded init depends on it)."""
    conv_pw = nn.Conv2d(b.in_chs, b.mid_chs, 1, bias=False) if b.expand else None
    bn1 = nn.BatchNorm2d(b.mid_chs) if b.expand else None
    conv_dw = nn.Conv2d(b.mid_chs, b.mid_chs, b.kernel_size, b.stride, b.kernel_size // 2, groups=b.mid_chs,
                        bias=False)
    bn2 = nn.BatchNorm2d(b.mid_chs)
    se = SqueezeExcite.fresh(b.mid_chs, b.se_chs) if b.se_chs else None
    conv_pwl = nn.Conv2d(b.mid_chs, b.out_chs, 1, bias=False)
    bn3 = nn.BatchNorm2d(b.out_chs)
    shortcut_conv = nn.Conv2d(b.in_chs, b.out_chs, 1, bias=False) if b.shortcut_conv else None
    return BlockLayers(conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3, shortcut_conv)


class MBConvBlock(nn.Module):
    """Inverted residual (MobileNetV2/V3) with the AttentiveNAS shortcut that is always added: identity,
    2x2 average pool when strided, then a 1x1 projection conv or a channel pad (`spec.shortcut`, see spec.py)."""

    def __init__(self, spec: BlockSpec, layers: BlockLayers | None = None) -> None:
        super().__init__()
        layers = fresh_block_layers(spec) if layers is None else layers
        expand = spec.expand
        needed = {"conv_pw": expand, "bn1": expand, "se": bool(spec.se_chs), "shortcut_conv": spec.shortcut_conv}
        missing = [name for name, need in needed.items() if need and getattr(layers, name) is None]
        if missing:
            raise ValueError(f"block {spec.index_in_stage} of stage {spec.stage} needs the layers {missing}; "
                             f"none were given")
        act = act_layer(spec.activation)
        self.conv_pw = layers.conv_pw if expand else nn.Identity()
        self.bn1 = layers.bn1 if expand else nn.Identity()
        self.act1 = act(inplace=True) if expand else nn.Identity()
        self.conv_dw = layers.conv_dw
        self.bn2 = layers.bn2
        self.act2 = act(inplace=True)
        self.se = layers.se if spec.se_chs else nn.Identity()
        self.conv_pwl = layers.conv_pwl
        self.bn3 = layers.bn3
        self.shortcut_pool = nn.AvgPool2d(2, ceil_mode=True) if spec.shortcut_pool else nn.Identity()
        shortcuts = {"identity": nn.Identity, "conv": lambda: layers.shortcut_conv,
                     "pad": lambda: ChannelPad(spec.in_chs, spec.out_chs)}
        self.shortcut_conv = shortcuts[spec.shortcut]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_conv(self.shortcut_pool(x))
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.se(self.act2(self.bn2(self.conv_dw(x))))
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut


class MobileNetV3Head(nn.Module):
    """1x1 expand with BN, global pool, 1x1 feature-mix conv without BN, classifier; built from given layers or,
    with `MobileNetV3Head.fresh`, freshly initialized."""

    def __init__(self, conv_expand: nn.Conv2d, bn: nn.BatchNorm2d, conv_mix: nn.Conv2d, classifier: nn.Linear,
                 act_layer: Callable[..., nn.Module]) -> None:
        super().__init__()
        self.conv_expand = conv_expand
        self.bn = bn
        self.act1 = act_layer(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_mix = conv_mix
        self.act2 = act_layer(inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = classifier

    @classmethod
    def fresh(cls, in_chs: int, mid_chs: int, out_chs: int, num_classes: int,
              act_layer: Callable[..., nn.Module]) -> "MobileNetV3Head":
        return cls(nn.Conv2d(in_chs, mid_chs, 1, bias=False), nn.BatchNorm2d(mid_chs),
                   nn.Conv2d(mid_chs, out_chs, 1, bias=False), nn.Linear(out_chs, num_classes), act_layer)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(self.act1(self.bn(self.conv_expand(x))))
        x = self.flatten(self.act2(self.conv_mix(x)))
        return x if pre_logits else self.classifier(x)


class StaticNet(nn.Module):
    """A deployable subnet of plain torch layers; `arch` and `space` say which one (from `spec`).

    `StaticNet(spec)` / `StaticNet.from_arch(space, arch)` build it with fresh weights (`load_state_dict` then
    restores an exported one, with no supernet involved). `Supernet.extract` passes the copies of its active
    slices as `stem`, `blocks` and `head` instead.
    """

    def __init__(self, spec: NetSpec, *, stem: ConvBnAct | None = None, blocks: Sequence[MBConvBlock] | None = None,
                 head: MobileNetV3Head | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.arch: Arch = spec.arch
        self.space: SearchSpace = spec.space
        self.resolution = spec.resolution
        # Fresh parts are created in this order whatever is given: the seeded init of a fresh net depends on it.
        self.stem = stem if stem is not None else ConvBnAct.fresh(spec.in_chans, spec.stem_chs, 3, spec.stem_stride,
                                                                  act_layer(spec.stem_activation))
        if blocks is None:
            blocks = [MBConvBlock(b) for b in spec.blocks]
        elif len(blocks) != len(spec.blocks):
            raise ValueError(f"{len(blocks)} blocks given, the spec has {len(spec.blocks)}")
        self.blocks = nn.Sequential(*blocks)
        self.head = head if head is not None else MobileNetV3Head.fresh(
            spec.head_in_chs, spec.head_mid_chs, spec.head_out_chs, spec.num_classes, act_layer(spec.head_activation))

    @classmethod
    def from_arch(cls, space: SearchSpace, arch: Arch, num_classes: int | None = None) -> "StaticNet":
        return cls(decode(space, arch, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Same input handling as the supernet: images of another size are resized to the arch resolution.
        if x.shape[-1] != self.resolution or x.shape[-2] != self.resolution:
            x = nn.functional.interpolate(x, size=self.resolution, mode="bicubic", align_corners=False)
        return self.forward_head(self.forward_features(x))
