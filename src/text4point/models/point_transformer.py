"""Point Transformer U-Net (Zhao et al., 2021) in PyTorch Geometric style: a 3D backbone of Text4Point.

Encoder ``f3D``: an input MLP and Point Transformer block at full resolution, then per level a
transition down (farthest-point sampling, k-NN grouping, MLP on ``[pos_j - pos_i, x_j]``, max
pool) and a Point Transformer block (:class:`PointTransformerConv` on the level's k-NN graph);
a linear layer maps the coarsest level to ``h3D`` (``N_b × d'``).

Decoder ``g3D``: a summit MLP and Point Transformer block on the bottleneck feature (``h3D`` or
``h3D_aggr``), then per level a transition up (k-NN inverse-distance interpolation of the coarse
features plus an MLP of the skip features) and a Point Transformer block; a head gives ``z3D``.

As in :mod:`text4point.models.pointnet2`, farthest-point sampling starts deterministically at the
first point of each cloud.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch_cluster
from torch import Tensor, nn
from torch_geometric.nn import MLP, PointTransformerConv, knn_interpolate
from torch_geometric.utils import scatter

from text4point.errors import InputError
from text4point.models import Backbone, Encoded
from text4point.models.sampling import fps


class TransformerBlock(nn.Module):
    """Linear → PointTransformerConv (vector attention on the k-NN graph) → Linear, with a residual."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.lin_in = nn.Linear(channels, channels)
        self.conv = PointTransformerConv(
            channels, channels,
            pos_nn=MLP([3, hidden, channels], norm=None, plain_last=False),
            attn_nn=MLP([channels, hidden, channels], norm=None, plain_last=False))
        self.lin_out = nn.Linear(channels, channels)

    def forward(self, x: Tensor, pos: Tensor, edge_index: Tensor) -> Tensor:
        y = self.lin_in(x).relu()
        y = self.conv(y, pos, edge_index)
        return x + self.lin_out(y).relu()


class TransitionDown(nn.Module):
    """fps (``ratio``) → k-NN grouping → MLP on ``[pos_j - pos_i, x_j]`` → max pool per centroid."""

    def __init__(self, in_channels: int, out_channels: int, ratio: float, k: int):
        super().__init__()
        self.ratio, self.k = float(ratio), int(k)
        self.mlp = MLP([3 + in_channels, out_channels], plain_last=False)

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        idx = fps(pos, batch, self.ratio)
        sub_pos, sub_batch = pos[idx], batch[idx]
        centre, member = torch_cluster.knn(pos, sub_pos, self.k, batch, sub_batch)
        feats = self.mlp(torch.cat([pos[member] - sub_pos[centre], x[member]], dim=1))
        out = scatter(feats, centre, dim=0, dim_size=idx.size(0), reduce="max")
        return out, sub_pos, sub_batch


class TransitionUp(nn.Module):
    """Interpolate the coarse features onto the fine points and add an MLP of the skip features."""

    def __init__(self, coarse_channels: int, out_channels: int, k: int = 3):
        super().__init__()
        self.k = int(k)
        self.mlp_coarse = MLP([coarse_channels, out_channels], plain_last=False)
        self.mlp_skip = MLP([out_channels, out_channels], plain_last=False)

    def forward(self, x_coarse: Tensor, pos_coarse: Tensor, batch_coarse: Tensor, x_skip: Tensor,
                pos_skip: Tensor, batch_skip: Tensor) -> Tensor:
        up = knn_interpolate(self.mlp_coarse(x_coarse), pos_coarse, pos_skip, batch_coarse,
                             batch_skip, k=self.k)
        return self.mlp_skip(x_skip) + up


class PointTransformerUNet(Backbone):
    """Point Transformer segmentation U-Net with a split ``encode`` (``f3D``) / ``decode`` (``g3D``).

    Level ``l`` (``l = 0 … L``, ``L = len(ratios)``) has ``width·2^l`` channels; ``h3D`` is a
    linear map of the coarsest level to ``bottleneck_dim`` (d'), and the decoder maps ``h``
    back with a summit MLP before its first block.

    Args:
        in_channels: per-point input features (3 for rgb in [0, 1], 6 with normals).
        width: channels of the finest level; every level's channels scale with it.
        bottleneck_dim: d', the channels of ``h3D``.
        out_dim: the channels of ``z3D``.
        ratios: fps sampling ratio of each transition down.
        k: neighbours of the k-NN graphs and of the transition-down grouping.
        interpolation_k: neighbours of the inverse-distance interpolation.
    """

    def __init__(self, in_channels: int, width: int = 32, bottleneck_dim: int = 256,
                 out_dim: int = 64, ratios: Sequence[float] = (0.25, 0.25, 0.25), k: int = 16,
                 interpolation_k: int = 3):
        super().__init__()
        ratios = tuple(float(r) for r in ratios)
        if not ratios or any(not 0.0 < r <= 1.0 for r in ratios):
            raise InputError(f"backbone.ratios: expected one or more values in (0, 1], got {list(ratios)}")
        self.in_channels, self.width = int(in_channels), int(width)
        self.bottleneck_dim, self.out_dim = int(bottleneck_dim), int(out_dim)
        self.k = int(k)
        levels = len(ratios)
        dims = [width * 2 ** lvl for lvl in range(levels + 1)]

        self.mlp_input = MLP([self.in_channels, dims[0]], plain_last=False)
        self.block_input = TransformerBlock(dims[0], dims[0])
        self.down = nn.ModuleList(TransitionDown(dims[lvl - 1], dims[lvl], ratios[lvl - 1], k)
                                  for lvl in range(1, levels + 1))
        self.blocks_down = nn.ModuleList(TransformerBlock(dims[lvl], dims[lvl])
                                         for lvl in range(1, levels + 1))
        self.to_bottleneck = nn.Linear(dims[-1], self.bottleneck_dim)  # h3D: plain

        self.mlp_summit = MLP([self.bottleneck_dim, dims[-1]], plain_last=False)
        self.block_summit = TransformerBlock(dims[-1], dims[-1])
        # up[l] / blocks_up[l]: from level l+1 to level l
        self.up = nn.ModuleList(TransitionUp(dims[lvl + 1], dims[lvl], interpolation_k)
                                for lvl in range(levels))
        self.blocks_up = nn.ModuleList(TransformerBlock(dims[lvl], dims[lvl]) for lvl in range(levels))
        self.head = MLP([dims[0], dims[0], self.out_dim])  # z3D: plain last layer

    def _graph(self, pos: Tensor, batch: Tensor) -> Tensor:
        return torch_cluster.knn_graph(pos, self.k, batch, loop=False)

    def _encode(self, x: Tensor, pos: Tensor, batch: Tensor) -> Encoded:
        graphs = [self._graph(pos, batch)]
        x = self.block_input(self.mlp_input(x), pos, graphs[0])
        xs, poss, batches = [x], [pos], [batch]
        for down, block in zip(self.down, self.blocks_down):
            x, pos, batch = down(x, pos, batch)
            graphs.append(self._graph(pos, batch))
            x = block(x, pos, graphs[-1])
            xs.append(x), poss.append(pos), batches.append(batch)
        xs[-1] = self.to_bottleneck(x)
        return Encoded(xs=xs, poss=poss, batches=batches, graphs=graphs)

    def _graph_of(self, encoded: Encoded, lvl: int) -> Tensor:
        """The k-NN graph of level ``lvl``, reused from the encoder when it kept them."""
        if encoded.graphs is not None:
            return encoded.graphs[lvl]
        return self._graph(encoded.poss[lvl], encoded.batches[lvl])

    def decode(self, encoded: Encoded, h: Tensor, index: Tensor | None = None) -> Tensor:
        """``z3D = g3D(h)``: ``h`` (``h3D`` or ``h3D_aggr``, ``N_b × d'``) through the summit block,
        then up through every level with the skips of ``encoded``; returns ``N × out_dim``."""
        self._check_bottleneck(encoded, h)
        levels = len(self.up)
        pos, batch = encoded.pos_b, encoded.batch_b
        x = self.block_summit(self.mlp_summit(h), pos, self._graph_of(encoded, levels))
        for lvl in reversed(range(levels)):
            pos_f, batch_f = encoded.poss[lvl], encoded.batches[lvl]
            x = self.up[lvl](x, pos, batch, encoded.xs[lvl], pos_f, batch_f)
            x = self.blocks_up[lvl](x, pos_f, self._graph_of(encoded, lvl))
            pos, batch = pos_f, batch_f
        return self.head(x if index is None else x[index])
