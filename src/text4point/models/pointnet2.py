"""PointNet++ U-Net (Qi et al., 2017) in PyTorch Geometric style: a 3D backbone of Text4Point.

Encoder ``f3D``: set-abstraction levels, each farthest-point sampling (``ratio`` of the points),
radius grouping (at most ``max_neighbors`` per centroid) and a :class:`PointNetConv` (shared
MLP on ``[x_j, pos_j - pos_i]``, max over the group). The last level's output is ``h3D``
(``N_b × d'``, no norm or activation after its last linear layer).

Decoder ``g3D``: feature propagation by k-NN inverse-distance interpolation (:func:`interpolate`, PyTorch
Geometric's ``knn_interpolate`` as a sparse product) back through every level, concatenated with the encoder's
skip features, then an MLP; a head maps the finest level to ``z3D`` (``N × out_dim``).

Farthest-point sampling starts at the first point of each cloud (``random_start=False``):
torch_cluster's random start does not follow ``torch.manual_seed``, and the project promises
identical results for identical seeds. Shuffle point order in the data pipeline (seeded) for
variety.
"""

from __future__ import annotations

import warnings

from collections.abc import Sequence

import torch
import torch_cluster
from torch import Tensor, nn
from torch_geometric.nn import MLP, PointNetConv

from text4point.errors import InputError
from text4point.models import Backbone, Encoded
from text4point.models.sampling import fps


class SetAbstraction(nn.Module):
    """One encoder level: fps (``ratio``) → radius grouping (``radius``) → PointNetConv."""

    def __init__(self, ratio: float, radius: float, max_neighbors: int, mlp: nn.Module):
        super().__init__()
        self.ratio = float(ratio)
        self.radius = float(radius)
        self.max_neighbors = int(max_neighbors)
        # The centroid is one of the source points (distance 0), so it is in its own group.
        self.conv = PointNetConv(local_nn=mlp, add_self_loops=False)

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        idx = fps(pos, batch, self.ratio)
        row, col = torch_cluster.radius(pos, pos[idx], self.radius, batch, batch[idx],
                                        max_num_neighbors=self.max_neighbors)
        # PointNetConv's message local_nn([x_j, pos_j - pos_i]), max over each centroid's group; radius returns the
        # edges sorted by centroid and every group holds its centroid, so the max is a segment max
        msg = self.conv.local_nn(torch.cat([x[col], pos[col] - pos[idx][row]], dim=1))
        if row.numel() > 1 and not bool((row[1:] >= row[:-1]).all()):
            order = torch.argsort(row, stable=True)
            row, msg = row[order], msg[order]
        lengths = torch.bincount(row, minlength=idx.numel())
        out = torch.segment_reduce(msg, "max", lengths=lengths, axis=0, unsafe=True)
        return out, pos[idx], batch[idx], idx


def interpolate(x: Tensor, pos: Tensor, pos_fine: Tensor, batch: Tensor, batch_fine: Tensor, k: int) -> Tensor:
    """PyTorch Geometric's ``knn_interpolate`` (inverse squared distance weights of the ``k`` nearest coarse points
    of the same cloud, normalised per fine point) as one sparse (CSR) matrix product: the same values, faster on
    CPU forward + backward (tests/test_models.py checks the values)."""
    with torch.no_grad():
        row, col = torch_cluster.knn(pos, pos_fine, k, batch, batch_fine)  # row: fine point, col: coarse point
        w = 1.0 / (pos[col] - pos_fine[row]).pow(2).sum(1).clamp(min=1e-16)
        w = w / torch.zeros(pos_fine.size(0), dtype=w.dtype, device=w.device).index_add_(0, row, w)[row]
        W = torch.sparse_coo_tensor(torch.stack([row, col]), w.to(x.dtype), (pos_fine.size(0), x.size(0)),
                                    check_invariants=False)  # built from knn's indices: valid by construction
        with warnings.catch_warnings():  # torch's "CSR support is in beta" notice, once per process, on stderr
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            W = W.coalesce().to_sparse_csr()
    return torch.sparse.mm(W, x)


class FeaturePropagation(nn.Module):
    """One decoder level: k-NN interpolation from the coarse level, concat skip, MLP."""

    def __init__(self, k: int, mlp: nn.Module):
        super().__init__()
        self.k = int(k)
        self.mlp = mlp

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor, x_skip: Tensor, pos_skip: Tensor,
                batch_skip: Tensor) -> Tensor:
        x = interpolate(x, pos, pos_skip, batch, batch_skip, k=self.k)
        return self.mlp(torch.cat([x, x_skip], dim=1))


class PointNet2UNet(Backbone):
    """PointNet++ segmentation U-Net with a split ``encode`` (``f3D``) / ``decode`` (``g3D``).

    Channel sizes (``L = len(ratios)`` levels, ``w = width``): level ``l`` of the encoder has
    ``w·2^l`` output channels (``l = 1 … L-1``) and hidden MLP width ``w·2^(l-1)``; the last level
    outputs ``bottleneck_dim`` (d'). The decoder mirrors the encoder with ``w·2^max(l,1)``
    channels at level ``l``. ``width`` scales every channel but d' and ``out_dim``.

    Args:
        in_channels: per-point input features (3 for rgb in [0, 1], 6 with normals).
        width: channel multiplier ``w``.
        bottleneck_dim: d', the channels of ``h3D``.
        out_dim: the channels of ``z3D``.
        ratios: fps sampling ratio of each set-abstraction level.
        radii: grouping radius (metres) of each level; one per ratio. The defaults suit
            0.05 m voxels, as the point spacing doubles at each level with ratio 0.25.
        max_neighbors: at most this many points per group.
        interpolation_k: neighbours of the inverse-distance interpolation.
    """

    def __init__(self, in_channels: int, width: int = 32, bottleneck_dim: int = 256,
                 out_dim: int = 64, ratios: Sequence[float] = (0.25, 0.25, 0.25),
                 radii: Sequence[float] = (0.1, 0.2, 0.4), max_neighbors: int = 32,
                 interpolation_k: int = 3):
        super().__init__()
        ratios, radii = tuple(float(r) for r in ratios), tuple(float(r) for r in radii)
        if not ratios or len(radii) != len(ratios):
            raise InputError(f"backbone.radii: expected one radius per ratio ({len(ratios)}), "
                             f"got {len(radii)}")
        if any(not 0.0 < r <= 1.0 for r in ratios):
            raise InputError(f"backbone.ratios: expected values in (0, 1], got {list(ratios)}")
        self.in_channels, self.width = int(in_channels), int(width)
        self.bottleneck_dim, self.out_dim = int(bottleneck_dim), int(out_dim)
        levels = len(ratios)

        enc = [self.in_channels] + [width * 2 ** lvl for lvl in range(1, levels)] + [self.bottleneck_dim]
        self.encoder = nn.ModuleList()
        for lvl in range(1, levels + 1):
            hidden = width * 2 ** (lvl - 1)
            mlp = MLP([enc[lvl - 1] + 3, hidden, hidden, enc[lvl]])  # plain last: h3D has no BN/ReLU
            self.encoder.append(SetAbstraction(ratios[lvl - 1], radii[lvl - 1], max_neighbors, mlp))

        dec = [width * 2 ** max(lvl, 1) for lvl in range(levels)]  # decoder channels of level l
        self.decoder = nn.ModuleList()  # decoder[l]: from level l+1 to level l
        for lvl in range(levels):
            coarse = self.bottleneck_dim if lvl == levels - 1 else dec[lvl + 1]
            mlp = MLP([coarse + enc[lvl], dec[lvl], dec[lvl]], plain_last=False)
            self.decoder.append(FeaturePropagation(interpolation_k, mlp))
        self.head = MLP([dec[0], dec[0], self.out_dim])  # z3D: plain last layer

    def _encode(self, x: Tensor, pos: Tensor, batch: Tensor) -> Encoded:
        xs, poss, batches, samples = [x], [pos], [batch], []
        for sa in self.encoder:
            x, pos, batch, idx = sa(x, pos, batch)
            xs.append(x), poss.append(pos), batches.append(batch), samples.append(idx)
        return Encoded(xs=xs, poss=poss, batches=batches, samples=samples)

    def decode(self, encoded: Encoded, h: Tensor, index: Tensor | None = None) -> Tensor:
        """``z3D = g3D(h)``: propagate ``h`` (``h3D`` or ``h3D_aggr``, ``N_b × d'``) to every
        input point through the skips of ``encoded``; returns ``N × out_dim`` (only the rows ``index`` when
        given: the finest level and the head then run on those points alone)."""
        self._check_bottleneck(encoded, h)
        x = h
        for lvl in reversed(range(len(self.decoder))):
            rows = index if (lvl == 0 and index is not None) else slice(None)
            x = self.decoder[lvl](x, encoded.poss[lvl + 1], encoded.batches[lvl + 1],
                                  encoded.xs[lvl][rows], encoded.poss[lvl][rows], encoded.batches[lvl][rows])
        return self.head(x)
