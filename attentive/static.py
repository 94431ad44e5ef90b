"""Standalone static subnets built from plain torch layers: what `Supernet.extract` returns and what is deployed."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .layers import ChannelPad, SqueezeExcite, act_layer
from .space import Arch, SearchSpace
from .spec import BlockSpec, NetSpec, decode


class ConvBnAct(nn.Module):
    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        act_layer: Callable[..., nn.Module],
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class MBConvBlock(nn.Module):
    """Inverted residual (MobileNetV2/V3) with the AttentiveNAS shortcut that is always added: identity,
    2x2 average pool when strided, then a 1x1 projection conv or a channel pad (`shortcut`, see spec.py)."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int,
        se_chs: int,
        expand: bool,
        act_layer: Callable[..., nn.Module],
        shortcut: str = "identity",
    ) -> None:
        super().__init__()
        self.conv_pw = nn.Conv2d(in_chs, mid_chs, 1, bias=False) if expand else nn.Identity()
        self.bn1 = nn.BatchNorm2d(mid_chs) if expand else nn.Identity()
        self.act1 = act_layer(inplace=True) if expand else nn.Identity()
        self.conv_dw = nn.Conv2d(mid_chs, mid_chs, kernel_size, stride, kernel_size // 2, groups=mid_chs, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_chs)
        self.act2 = act_layer(inplace=True)
        self.se = SqueezeExcite(mid_chs, se_chs) if se_chs else nn.Identity()
        self.conv_pwl = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut_pool = nn.AvgPool2d(2, ceil_mode=True) if stride > 1 else nn.Identity()
        shortcuts = {"identity": nn.Identity, "conv": lambda: nn.Conv2d(in_chs, out_chs, 1, bias=False),
                     "pad": lambda: ChannelPad(out_chs)}
        self.shortcut_conv = shortcuts[shortcut]()

    @classmethod
    def from_spec(cls, b: BlockSpec) -> "MBConvBlock":
        return cls(b.in_chs, b.mid_chs, b.out_chs, b.kernel_size, b.stride, b.se_chs, b.expand,
                   act_layer(b.activation), b.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_conv(self.shortcut_pool(x))
        x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.se(self.act2(self.bn2(self.conv_dw(x))))
        x = self.bn3(self.conv_pwl(x))
        return x + shortcut


class MobileNetV3Head(nn.Module):
    """1x1 expand with BN, global pool, 1x1 feature-mix conv without BN, classifier."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        num_classes: int,
        act_layer: Callable[..., nn.Module],
    ) -> None:
        super().__init__()
        self.conv_expand = nn.Conv2d(in_chs, mid_chs, 1, bias=False)
        self.bn = nn.BatchNorm2d(mid_chs)
        self.act1 = act_layer(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_mix = nn.Conv2d(mid_chs, out_chs, 1, bias=False)
        self.act2 = act_layer(inplace=True)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(out_chs, num_classes)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pool(self.act1(self.bn(self.conv_expand(x))))
        x = self.flatten(self.act2(self.conv_mix(x)))
        return x if pre_logits else self.classifier(x)


class StaticNet(nn.Module):
    """A deployable subnet. `StaticNet.from_arch(space, arch)` builds it with fresh weights; `load_state_dict`
    then restores an exported one, with no supernet involved."""

    def __init__(self, spec: NetSpec) -> None:
        super().__init__()
        self.spec = spec
        self.resolution = spec.resolution
        self.stem = ConvBnAct(spec.in_chans, spec.stem_chs, 3, spec.stem_stride, act_layer(spec.stem_activation))
        self.blocks = nn.Sequential(*[MBConvBlock.from_spec(b) for b in spec.blocks])
        self.head = MobileNetV3Head(spec.head_in_chs, spec.head_mid_chs, spec.head_out_chs, spec.num_classes,
                                    act_layer(spec.head_activation))

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
