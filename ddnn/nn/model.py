"""The DDNN model: device slices, local aggregator, optional edge tier, cloud (paper Fig. 2/4).

One `DDNN` module holds every tier so that it can be trained jointly on one machine; its
forward pass is the composition of per-tier methods (`devices`, `local_exit`, `edge_tier`,
`cloud_exit`), the tiers a deployment runs apart.

Shapes: x is (B, D, C, H, W) for D devices; `present` is (B, D) bool (True where the device
took part). Device feature maps are (B, D, f, h, w): binary (+-1) when the device tier is
binary, which is what goes over the wire bit-packed when a sample is escalated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ddnn.core.config import DDNNConfig, ModelConfig, tap_exit
from ddnn.nn.fusion import Fusion
from ddnn.nn.layers import FC, ConvP, Precision, parallel_conv_p, pooled_size
from ddnn.nn.router import RouterNet


def conv_stack(in_ch: int, filters: list[int], precision: Precision) -> nn.Sequential:
    blocks = []
    for f in filters:
        blocks.append(ConvP(in_ch, f, precision))
        in_ch = f
    return nn.Sequential(*blocks)


class DeviceSlice(nn.Module):
    """What runs on one end device: ConvP blocks, then an FC exit head to |C| scores.

    Without ConvP blocks (Fig. 2 (a)) the device forwards its raw input and has no head.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c, h, w = cfg.input_shape
        filters = cfg.device.conv_filters
        self.blocks = conv_stack(c, filters, cfg.device.precision)
        n = len(filters)
        self.feature_shape = (filters[-1] if filters else c, pooled_size(h, n), pooled_size(w, n))
        f, fh, fw = self.feature_shape
        self.head = (
            FC(f * fh * fw, len(cfg.classes), cfg.device.precision, activation=False)
            if cfg.local is not None
            else None
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """x: (B, C, H, W) -> (class scores (B, |C|) or None, feature map (B, f, h, w))."""
        features = self.blocks(x)
        scores = self.head(features) if self.head is not None else None
        return scores, features


class UpperTier(nn.Module):
    """An edge or the cloud: fuse the feature maps below, ConvP blocks, FC blocks, exit head."""

    def __init__(
        self,
        aggregation: str,
        n_inputs: int,
        in_shape: tuple[int, int, int],
        conv_filters: list[int],
        fc_hidden: list[int],
        precision: Precision,
        n_classes: int,
        taps: Sequence[int] = (),
    ) -> None:
        super().__init__()
        self.aggregate = Fusion(aggregation, n_inputs)
        self.in_shape = in_shape  # of each input's feature map
        c, h, w = in_shape
        c = self.aggregate.out_channels(c)
        self.blocks = conv_stack(c, conv_filters, precision)
        n = len(conv_filters)
        self.feature_shape = (
            conv_filters[-1] if conv_filters else c,
            pooled_size(h, n),
            pooled_size(w, n),
        )
        width = self.feature_shape[0] * self.feature_shape[1] * self.feature_shape[2]
        fcs = []
        for m in fc_hidden:
            fcs.append(FC(width, m, precision))
            width = m
        self.fcs = nn.Sequential(*fcs)
        self.head = FC(width, n_classes, precision, activation=False)
        # The exit-placement paper's multi-exit model: a head after each tapped block (keyed by its
        # 1-based number), on that block's feature map; only the last head decides in a deployment.
        self.taps = nn.ModuleDict()
        for block in taps:
            f, size = conv_filters[block - 1], pooled_size(h, block) * pooled_size(w, block)
            self.taps[str(block)] = FC(f * size, n_classes, precision, activation=False)

    def forward(
        self, features: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features: (B, N, f, h, w), present: (B, N) -> (scores (B, |C|), own feature map)."""
        scores, x, _, _ = self.forward_with_taps(features, present)
        return scores, x

    def forward_with_taps(
        self, features: torch.Tensor, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[int, torch.Tensor], torch.Tensor]:
        """`forward`, each tap's class scores (B, |C|) by block number, and the fused input."""
        fused = x = self.aggregate(features, present)
        tapped = {}
        for block, module in enumerate(self.blocks, start=1):
            x = module(x)
            if str(block) in self.taps:
                tapped[block] = self.taps[str(block)](x)
        return self.head(self.fcs(x)), x, tapped, fused


@dataclass
class DDNNOutput:
    # exit name -> (B, |C|) class scores, lowest tier first; the edge's taps (edge@<block>)
    # come before the edge's own exit
    logits: dict[str, torch.Tensor]
    device_features: torch.Tensor  # (B, D, f, h, w)
    device_scores: torch.Tensor | None = None  # (B, D, |C|) when there is a local exit
    edge_scores: torch.Tensor | None = None  # (B, E, |C|) each edge's, when there are edges
    edge_present: torch.Tensor | None = None  # (B, E) bool: edges with a device present
    # the fused input of every tier that max-pools binary maps (an OR of bits), for the
    # training loss that keeps each channel of it near half +1 (`train.or_balance`)
    or_maps: list[torch.Tensor] = field(default_factory=list)


class DDNN(nn.Module):
    """Every tier of the topology `cfg`; with `routed`, also the learned router of each of
    those exits (ddnn/nn/router.py; trained after the model, run in NumPy)."""

    def __init__(
        self, cfg: ModelConfig, routed: Sequence[str] = (), router_hidden: int = 32
    ) -> None:
        super().__init__()
        self.cfg = cfg
        n_classes = len(cfg.classes)
        self.routers = nn.ModuleDict({name: RouterNet(n_classes, router_hidden) for name in routed})
        self.device_slices = nn.ModuleList(DeviceSlice(cfg) for _ in range(cfg.n_devices))
        device_shape = self.device_slices[0].feature_shape

        self.local = (
            Fusion(cfg.local.aggregation, cfg.n_devices, out_features=n_classes)
            if cfg.local is not None
            else None
        )

        cloud_in_shape, cloud_inputs = device_shape, cfg.n_devices
        self.edges = nn.ModuleList()
        self.edge_exit = None
        if cfg.edge is not None:
            e = cfg.edge
            for group in e.groups:
                self.edges.append(
                    UpperTier(
                        e.aggregation,
                        len(group),
                        device_shape,
                        e.conv_filters,
                        [],
                        e.precision,
                        n_classes,
                        e.taps,
                    )
                )
            self.edge_exit = Fusion(e.exit_aggregation, len(e.groups), out_features=n_classes)
            cloud_in_shape, cloud_inputs = self.edges[0].feature_shape, len(e.groups)
            # Edges of unequal group sizes under CC produce equal feature shapes (their
            # ConvP output has conv_filters[-1] channels), so the cloud can fuse them.

        self.cloud = (
            UpperTier(
                cfg.cloud.aggregation,
                cloud_inputs,
                cloud_in_shape,
                cfg.cloud.conv_filters,
                cfg.cloud.fc_hidden,
                cfg.cloud.precision,
                n_classes,
            )
            if cfg.cloud is not None
            else None
        )

    @property
    def exits(self) -> list[str]:
        return self.cfg.exits

    @property
    def device_feature_shape(self) -> tuple[int, int, int]:
        return self.device_slices[0].feature_shape

    def devices(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Run every device slice: x (B, D, C, H, W) -> (scores (B, D, |C|) or None,
        features (B, D, f, h, w))."""
        b, d = x.shape[:2]
        h = x.flatten(1, 2)  # device i's input is channels [i*C, (i+1)*C)
        for level in range(len(self.cfg.device.conv_filters)):
            h = parallel_conv_p([s.blocks[level] for s in self.device_slices], h)
        features = h.reshape(b, d, *self.device_feature_shape)
        if self.local is None:
            return None, features
        scores = [s.head(features[:, i]) for i, s in enumerate(self.device_slices)]
        return torch.stack(scores, dim=1), features

    def local_exit(self, scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """The local aggregator: fuse the devices' class scores (B, D, |C|) -> (B, |C|)."""
        return self.local(scores, present)

    def edge_tier(
        self, out: DDNNOutput, present: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every edge on its group of `out`'s devices: fills in each edge's class scores
        (B, E, |C|) and presence (B, E) (an edge takes part when any of its devices does),
        the tap exits' logits (where the one edge has taps) and the edges' ORs; returns the
        edges' feature maps (B, E, f, h, w) and presence. The edge exit fuses the scores
        (`edge_exit`)."""
        e = self.cfg.edge
        scores, maps, edge_present = [], [], []
        for edge, group in zip(self.edges, e.groups, strict=True):
            s, m, tapped, fused = edge.forward_with_taps(
                out.device_features[:, group], present[:, group]
            )
            scores.append(s)
            maps.append(m)
            edge_present.append(present[:, group].any(dim=1))
            out.logits.update({tap_exit(block): t for block, t in tapped.items()})
            if self.cfg.edge_is_or:
                out.or_maps.append(fused)
        out.edge_scores = torch.stack(scores, dim=1)
        out.edge_present = torch.stack(edge_present, dim=1)
        return torch.stack(maps, dim=1), out.edge_present

    def cloud_exit(self, out: DDNNOutput, features: torch.Tensor, present: torch.Tensor) -> None:
        """The cloud: fuse the feature maps of the tier below into `out`'s cloud logits
        (B, |C|), and its OR when it is one."""
        scores, _, _, fused = self.cloud.forward_with_taps(features, present)
        out.logits["cloud"] = scores
        if self.cfg.cloud_is_or:  # then its fused input comes last in `or_maps`
            out.or_maps.append(fused)

    def above_devices(
        self, scores: torch.Tensor | None, features: torch.Tensor, present: torch.Tensor
    ) -> DDNNOutput:
        """Every tier above the devices, on the devices' outputs under one presence mask:
        the exits' logits (exit name -> (B, |C|) class scores, lowest tier first), each
        edge's class scores and presence where there are edges, and the ORs. Training runs
        it under several masks per batch on one pass of the devices."""
        out = DDNNOutput(logits={}, device_features=features, device_scores=scores)
        if self.local is not None:
            out.logits["local"] = self.local_exit(scores, present)
        upper_features, upper_present = features, present
        if self.edge_exit is not None:
            upper_features, upper_present = self.edge_tier(out, present)
            out.logits["edge"] = self.edge_exit(out.edge_scores, upper_present)
        if self.cloud is not None:
            self.cloud_exit(out, upper_features, upper_present)
        return out

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> DDNNOutput:
        if present is None:
            present = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.above_devices(*self.devices(x), present)


def build_model(cfg: DDNNConfig) -> DDNN:
    """The untrained model of a whole config: its topology and the routers its exits use."""
    return DDNN(cfg.model, cfg.routed_exits, cfg.router.hidden)
