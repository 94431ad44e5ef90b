"""The elastic supernet: every arch of a space runs inside it with shared, sliced weights."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import (DynamicBatchNorm2d, DynamicConv2d, DynamicLinear, DynamicSqueezeExcite, SlicedLayer,
                     act_layer, drop_connect, dropout, pad_channels, slices_taken)
from .space import Arch, SearchSpace, load_space
from .spec import HEAD_EXPAND, BlockSpec, NetSpec, block_shortcut, decode, expanded_chs, se_chs
from .static import BlockLayers, ConvBnAct, MBConvBlock, MobileNetV3Head, StaticNet


class DynamicMBConv(nn.Module):
    """Elastic inverted residual block; `set_active(spec)` picks its widths and kernel."""

    def __init__(
        self,
        max_in_chs: int,
        max_mid_chs: int,
        max_out_chs: int,
        kernel_sizes: tuple[int, ...],
        stride: int,
        max_se_chs: int,
        has_expand: bool,
        has_shortcut_conv: bool,
        activation: str,
        kernel_transform: bool = False,
    ) -> None:
        super().__init__()
        act = act_layer(activation)
        self.conv_pw = DynamicConv2d(max_in_chs, max_mid_chs, 1) if has_expand else None
        self.bn1 = DynamicBatchNorm2d(max_mid_chs) if has_expand else None
        self.act1 = act(inplace=True)
        self.conv_dw = DynamicConv2d(max_mid_chs, max_mid_chs, kernel_sizes, stride, depthwise=True,
                                     kernel_transform=kernel_transform)
        self.bn2 = DynamicBatchNorm2d(max_mid_chs)
        self.act2 = act(inplace=True)
        self.se = DynamicSqueezeExcite(max_mid_chs, max_se_chs) if max_se_chs else nn.Identity()
        self.conv_pwl = DynamicConv2d(max_mid_chs, max_out_chs, 1)
        self.bn3 = DynamicBatchNorm2d(max_out_chs)
        self.shortcut_pool = nn.AvgPool2d(2, ceil_mode=True) if stride > 1 else nn.Identity()
        self.shortcut_conv = DynamicConv2d(max_in_chs, max_out_chs, 1) if has_shortcut_conv else None
        self.drop_connect_rate = 0.0
        self.generator: torch.Generator | None = None

    def set_active(self, spec: BlockSpec) -> None:
        self.active_spec = spec
        if spec.expand:
            self.conv_pw.set_active(spec.in_chs, spec.mid_chs)
            self.bn1.set_active(spec.mid_chs)
        self.use_expand = spec.expand
        self.conv_dw.set_active(spec.mid_chs, spec.mid_chs, spec.kernel_size)
        self.bn2.set_active(spec.mid_chs)
        if spec.se_chs:
            self.se.set_active(spec.mid_chs, spec.se_chs)
        self.conv_pwl.set_active(spec.mid_chs, spec.out_chs)
        self.bn3.set_active(spec.out_chs)
        self.use_shortcut_conv = spec.shortcut_conv
        self.shortcut_pad_to = spec.out_chs if spec.shortcut == "pad" else None
        if spec.shortcut_conv:
            self.shortcut_conv.set_active(spec.in_chs, spec.out_chs)
        # the layers this spec's forward runs, for `slices_taken`
        self.active_layers: list[SlicedLayer] = (
            ([self.conv_pw, self.bn1] if spec.expand else []) + [self.conv_dw, self.bn2]
            + ([self.se.conv_reduce, self.se.conv_expand] if spec.se_chs else []) + [self.conv_pwl, self.bn3]
            + ([self.shortcut_conv] if spec.shortcut_conv else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.shortcut_pool(x)
        if self.use_shortcut_conv:
            shortcut = self.shortcut_conv(shortcut)
        elif self.shortcut_pad_to is not None:
            shortcut = pad_channels(shortcut, self.shortcut_pad_to)
        if self.use_expand:
            x = self.act1(self.bn1(self.conv_pw(x)))
        x = self.se(self.act2(self.bn2(self.conv_dw(x))))
        x = self.bn3(self.conv_pwl(x))
        if self.drop_connect_rate > 0 and self.training:
            x = drop_connect(x, self.drop_connect_rate, self.generator)
        return x + shortcut

    @torch.no_grad()
    def to_static(self) -> MBConvBlock:
        """The static twin of the active block: copies of the active slices, no supernet involved."""
        spec = self.active_spec
        return MBConvBlock(spec, BlockLayers(
            conv_pw=self.conv_pw.to_static() if spec.expand else None,
            bn1=self.bn1.to_static() if spec.expand else None,
            conv_dw=self.conv_dw.to_static(),
            bn2=self.bn2.to_static(),
            se=self.se.to_static() if spec.se_chs else None,
            conv_pwl=self.conv_pwl.to_static(),
            bn3=self.bn3.to_static(),
            shortcut_conv=self.shortcut_conv.to_static() if spec.shortcut_conv else None,
        ))


class Supernet(nn.Module):
    """Weight-sharing supernet over `space`.

    `set_arch(arch)` activates a subnet; `forward` then runs only its blocks, resizing the input to the arch
    resolution when it differs. `extract(arch)` returns a standalone `StaticNet` with copied weights.
    """

    def __init__(self, space: SearchSpace | str, num_classes: int | None = None, seed: int = 0) -> None:
        super().__init__()
        space = load_space(space)
        self.space = space
        self.num_classes = space.num_classes if num_classes is None else num_classes
        # Dropout and drop-connect masks come from this generator, never the global RNG (exact resume).
        self.generator = torch.Generator().manual_seed(seed)

        max_stem = max(space.stem.widths)
        self.stem_conv = DynamicConv2d(space.in_chans, max_stem, 3, space.stem.stride)
        self.stem_bn = DynamicBatchNorm2d(max_stem)
        self.stem_act = act_layer(space.stem.activation)(inplace=True)

        blocks: list[DynamicMBConv] = []
        self.stage_block_ids: list[list[int]] = []
        prev_widths = space.stem.widths
        for s, stage in enumerate(space.stages):
            ids = []
            for j in range(max(stage.depths)):
                in_widths = prev_widths if j == 0 else stage.widths
                max_mid = max(expanded_chs(i, e) for i in in_widths for e in stage.expand_ratios)
                blocks.append(
                    DynamicMBConv(
                        max_in_chs=max(in_widths),
                        max_mid_chs=max_mid,
                        max_out_chs=max(stage.widths),
                        kernel_sizes=stage.kernel_sizes,
                        stride=stage.stride if j == 0 else 1,
                        max_se_chs=se_chs(max_mid) if stage.se else 0,
                        has_expand=max(stage.expand_ratios) != 1,
                        # a conv where the space's rule gives some arch one (attentive.spec.block_shortcut)
                        has_shortcut_conv=any(block_shortcut(space, s, j, i, o) == "conv"
                                              for i in in_widths for o in stage.widths),
                        activation=stage.activation,
                        kernel_transform=space.kernel_transform,
                    )
                )
                ids.append(len(blocks) - 1)
            self.stage_block_ids.append(ids)
            prev_widths = stage.widths
        self.blocks = nn.ModuleList(blocks)
        for b in self.blocks:
            b.generator = self.generator

        max_last = max(prev_widths)
        max_head = max(space.head.widths)
        head_act = act_layer(space.head.activation)
        self.head_conv = DynamicConv2d(max_last, max_last * HEAD_EXPAND, 1)
        self.head_bn = DynamicBatchNorm2d(max_last * HEAD_EXPAND)
        self.head_act1 = head_act(inplace=True)
        self.head_mix = DynamicConv2d(max_last * HEAD_EXPAND, max_head, 1)
        self.head_act2 = head_act(inplace=True)
        self.classifier = DynamicLinear(max_head, self.num_classes)
        self.dropout_rate = 0.0

        self._zero_init_last_bn()
        self.set_arch(space.max_arch())

    def _zero_init_last_bn(self) -> None:
        # Each block starts as its shortcut (AttentiveNAS/OFA): deep subnets train stably from step one.
        for b in self.blocks:
            nn.init.zeros_(b.bn3.weight)

    # ---- arch selection --------------------------------------------------------------------------
    def set_arch(self, arch: Arch | dict) -> NetSpec:
        """Activate `arch` (an Arch or an AttentiveNAS-style dict). Returns its decoded spec."""
        if isinstance(arch, dict):
            arch = Arch.from_dict(arch)
        spec = decode(self.space, arch, self.num_classes)
        self.stem_conv.set_active(self.space.in_chans, spec.stem_chs)
        self.stem_bn.set_active(spec.stem_chs)
        active = []
        for s, ids in enumerate(self.stage_block_ids):
            for j in range(arch.depth[s]):
                active.append(self.blocks[ids[j]])
        for block, bspec in zip(active, spec.blocks):
            block.set_active(bspec)
        self.active_blocks = active
        self.head_conv.set_active(spec.head_in_chs, spec.head_mid_chs)
        self.head_bn.set_active(spec.head_mid_chs)
        self.head_mix.set_active(spec.head_mid_chs, spec.head_out_chs)
        self.classifier.set_active(spec.head_out_chs)
        self._feature_layers = [self.stem_conv, self.stem_bn] + [layer for b in active for layer in b.active_layers]
        self._head_layers = [self.head_conv, self.head_bn, self.head_mix, self.classifier]
        self.active_arch = arch
        self.active_spec = spec
        return spec

    # ---- regularization (largest subnet only, in the training recipe) ------------------------------
    def set_regularization(self, dropout: float = 0.0, drop_connect: float = 0.0,
                           drop_connect_last_stages: int | None = 2) -> None:
        """Dropout before the classifier; drop-connect rate `drop_connect * block_index / num_blocks`, on the
        blocks of the last `drop_connect_last_stages` stages (None: all), as AttentiveNAS does."""
        for name, v in (("dropout", dropout), ("drop_connect", drop_connect)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        self.dropout_rate = dropout
        n = len(self.blocks)
        stages = self.stage_block_ids if drop_connect_last_stages is None else self.stage_block_ids[-drop_connect_last_stages:]
        chosen = {i for ids in stages for i in ids}
        for i, b in enumerate(self.blocks):
            b.drop_connect_rate = drop_connect * i / n if i in chosen else 0.0

    @contextlib.contextmanager
    def regularization(self, dropout: float = 0.0, drop_connect: float = 0.0,
                       drop_connect_last_stages: int | None = 2) -> Iterator[None]:
        """`with supernet.regularization(0.2, 0.2): loss = ...` turns both on for the enclosed forward only."""
        self.set_regularization(dropout, drop_connect, drop_connect_last_stages)
        try:
            yield
        finally:
            self.set_regularization(0.0, 0.0)

    # ---- forward -----------------------------------------------------------------------------------
    # The active layers' parameter slices are taken in one call per part (attentive.layers.slices_taken).
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with slices_taken(self._feature_layers):
            x = self.stem_act(self.stem_bn(self.stem_conv(x)))
            for block in self.active_blocks:
                x = block(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        with slices_taken(self._head_layers[:-1] if pre_logits else self._head_layers):
            x = self.head_act1(self.head_bn(self.head_conv(x)))
            x = x.mean((2, 3), keepdim=True)
            x = self.head_act2(self.head_mix(x)).flatten(1)
            if pre_logits:
                return x
            if self.dropout_rate > 0 and self.training:
                x = dropout(x, self.dropout_rate, self.generator)
            return self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.active_arch.resolution
        if x.shape[-1] != r or x.shape[-2] != r:
            x = F.interpolate(x, size=r, mode="bicubic", align_corners=False)
        return self.forward_head(self.forward_features(x))

    # ---- extraction --------------------------------------------------------------------------------
    @torch.no_grad()
    def extract(self, arch: Arch | dict | None = None) -> StaticNet:
        """A standalone static net of plain torch layers with the weights (and BN statistics) of `arch`.

        Leaves `arch` active in the supernet. The returned net is in the supernet's train/eval mode.
        """
        spec = self.set_arch(arch) if arch is not None else self.active_spec
        stem = ConvBnAct(self.stem_conv.to_static(), self.stem_bn.to_static(), act_layer(spec.stem_activation))
        blocks = [block.to_static() for block in self.active_blocks]
        head = MobileNetV3Head(self.head_conv.to_static(), self.head_bn.to_static(), self.head_mix.to_static(),
                               self.classifier.to_static(), act_layer(spec.head_activation))
        net = StaticNet(spec, stem=stem, blocks=blocks, head=head)
        p = next(self.parameters())
        return net.to(p.device, p.dtype).train(self.training)
