"""3D backbones of Text4Point: the encoder ``f3D`` and decoder ``g3D`` as one U-Net.

Text4Point (Huang et al., 2023) puts its Text Querying Module *between* the encoder and the
decoder of a 3D U-Net: the encoder gives ``h3D`` (``N_b × d'``) at the bottleneck, the model
computes ``h3D_aggr = α·h3D + β·ĥ3D_text`` and the decoder turns ``h3D_aggr`` into the per-point
``z3D``. Every backbone therefore splits its forward pass in two:

- :meth:`Backbone.encode` ``(x, pos, batch) -> Encoded``: the features, positions and batch vectors
  of every level (the skip connections), the last level being the bottleneck (``h3D``);
- :meth:`Backbone.decode` ``(encoded, h_bottleneck) -> z``: the decoder ``g3D`` on a (possibly
  modified) bottleneck feature, with the skips of ``encoded``;

and :meth:`Backbone.forward` is ``decode(encode(...), encoded.h)`` packed as a
:class:`BackboneOutput`.

Inputs follow PyTorch Geometric: ``x`` (``N × in_channels``; colour in ``[0, 1]``, optionally
normals), ``pos`` (``N × 3``, metres) and ``batch`` (``N``, cloud index of each point; ``None``
means a single cloud). Grouping (radius and k-NN queries) is torch_cluster's, farthest-point
sampling :func:`text4point.models.sampling.fps` (torch_cluster on CUDA, fpsample on CPU); tensors stay on the
device of the inputs.

Backbones are registered by name in :data:`BACKBONES`; :func:`build_backbone` builds one.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
import torch_cluster
from torch import Tensor, nn

from text4point.errors import InputError


@dataclass
class Encoded:
    """What the encoder ``f3D`` hands to the decoder ``g3D``: one entry per level, finest first.

    ``xs[0]``/``poss[0]``/``batches[0]`` are the input level (N points; ``xs[0]`` is the raw ``x``
    for PointNet++, the first block's output for Point Transformer); ``xs[-1]`` is ``h3D``,
    the encoder output at the bottleneck (``N_b × d'``). The intermediate entries are the skip
    connections of the U-Net. ``graphs`` optionally keeps each level's neighbourhood graph
    (``edge_index``) so that the decoder need not rebuild it.
    """

    xs: list[Tensor]
    poss: list[Tensor]
    batches: list[Tensor]
    graphs: list[Tensor] | None = None
    samples: list[Tensor] | None = None  # samples[l]: the rows of level l that are the points of level l+1

    @property
    def h(self) -> Tensor:
        """``h3D``: the encoder output at the bottleneck level (``N_b × d'``)."""
        return self.xs[-1]

    @property
    def pos_b(self) -> Tensor:
        """Positions of the bottleneck points (``N_b × 3``)."""
        return self.poss[-1]

    @property
    def batch_b(self) -> Tensor:
        """Cloud index of each bottleneck point (``N_b``)."""
        return self.batches[-1]

    def bottleneck_index(self) -> Tensor:
        """For each input point, the index of its nearest bottleneck point in the same cloud (``N``).

        Maps per-point quantities (correspondences, labels) to the encoder's resolution, e.g. the
        point side of ``L_e`` or the labels of the score map ``s = ĥ3D · tᵀ``.
        """
        assign = torch_cluster.knn(self.pos_b, self.poss[0], 1, self.batch_b, self.batches[0])
        index = torch.empty(self.poss[0].size(0), dtype=torch.long, device=self.pos_b.device)
        index[assign[0]] = assign[1]
        return index


@dataclass
class BackboneOutput:
    """A full pass through a backbone.

    Attributes:
        h: ``h3D``, the encoder output at the bottleneck (``N_b × d'``).
        pos_b: positions of the bottleneck points (``N_b × 3``).
        batch_b: cloud index of each bottleneck point (``N_b``).
        z: ``z3D``, the decoder output per input point (``N × out_dim``).
        encoded: the full :class:`Encoded` (skips of every level).
    """

    h: Tensor
    pos_b: Tensor
    batch_b: Tensor
    z: Tensor
    encoded: Encoded


class Backbone(nn.Module, abc.ABC):
    """Base class of the 3D U-Nets: encoder ``f3D`` → bottleneck ``h3D`` → decoder ``g3D``.

    Subclasses set ``in_channels``, ``bottleneck_dim`` (d') and ``out_dim`` and implement
    :meth:`_encode` and :meth:`decode`.
    """

    in_channels: int
    bottleneck_dim: int
    out_dim: int

    def encode(self, x: Tensor, pos: Tensor, batch: Tensor | None = None) -> Encoded:
        """Run the encoder ``f3D``; ``encoded.h`` is ``h3D`` (``N_b × d'``)."""
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"x: expected shape [N, {self.in_channels}], got {list(x.shape)}")
        if pos.dim() != 2 or pos.size(1) != 3 or pos.size(0) != x.size(0):
            raise ValueError(f"pos: expected shape [{x.size(0)}, 3], got {list(pos.shape)}")
        if batch is None:
            batch = torch.zeros(pos.size(0), dtype=torch.long, device=pos.device)
        elif batch.shape != (pos.size(0),):
            raise ValueError(f"batch: expected shape [{pos.size(0)}], got {list(batch.shape)}")
        return self._encode(x, pos, batch.long())

    @abc.abstractmethod
    def _encode(self, x: Tensor, pos: Tensor, batch: Tensor) -> Encoded:
        """The encoder ``f3D`` proper (inputs already checked)."""

    @abc.abstractmethod
    def decode(self, encoded: Encoded, h: Tensor, index: Tensor | None = None) -> Tensor:
        """Run the decoder ``g3D`` on a bottleneck feature ``h`` (``N_b × d'``; ``h3D`` or
        ``h3D_aggr``) with the skips of ``encoded``; returns ``z3D`` (``N × out_dim``), or only its rows
        ``index`` (input points) when given: the same values, computed for those points only."""

    def _check_bottleneck(self, encoded: Encoded, h: Tensor) -> None:
        expected = [encoded.pos_b.size(0), self.bottleneck_dim]
        if list(h.shape) != expected:
            raise ValueError(f"h: expected bottleneck features of shape {expected}, got {list(h.shape)}")

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor | None = None) -> BackboneOutput:
        """``f3D`` then ``g3D`` on the unmodified bottleneck: ``z3D = g3D(f3D(x))``."""
        encoded = self.encode(x, pos, batch)
        z = self.decode(encoded, encoded.h)
        return BackboneOutput(h=encoded.h, pos_b=encoded.pos_b, batch_b=encoded.batch_b, z=z,
                              encoded=encoded)


# The backbones import the base classes above, so they are imported after them.
from text4point.models.point_transformer import PointTransformerUNet  # noqa: E402
from text4point.models.pointnet2 import PointNet2UNet  # noqa: E402

BACKBONES: dict[str, type[Backbone]] = {
    "pointnet2": PointNet2UNet,
    "point_transformer": PointTransformerUNet,
}


def backbone_from_params(pc: dict) -> Backbone:
    """The backbone that the ``pretrain`` params section describes (pre-training and fine-tuning build the same
    one): ``backbone``, ``width``, ``bottleneck_dim``, ``out_dim``, the input ``channels``
    (:mod:`text4point.point_features`) and, for PointNet++, the grouping ``radii`` and ``max_neighbors``."""
    from text4point.point_features import num_channels

    kwargs = {"in_channels": num_channels(pc["channels"]), "width": int(pc["width"]),
              "bottleneck_dim": int(pc["bottleneck_dim"]), "out_dim": int(pc["out_dim"])}
    if pc["backbone"] == "pointnet2":
        kwargs.update(radii=tuple(float(r) for r in pc["radii"]), max_neighbors=int(pc["max_neighbors"]))
    return build_backbone(pc["backbone"], **kwargs)


def build_backbone(name: str, **kwargs) -> Backbone:
    """Build the backbone registered as ``name`` in :data:`BACKBONES` with ``kwargs``.

    Raises :class:`~text4point.errors.InputError` (one line) for an unknown name.
    """
    try:
        cls = BACKBONES[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(BACKBONES))
        raise InputError(f"backbone: expected one of {known}, got {name!r}") from None
    return cls(**kwargs)


__all__ = ["BACKBONES", "Backbone", "BackboneOutput", "Encoded", "PointNet2UNet", "backbone_from_params",
           "PointTransformerUNet", "build_backbone"]
