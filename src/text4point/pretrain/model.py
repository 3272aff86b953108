"""The pre-training model of Text4Point and its two baselines around one 3D U-Net backbone.

``Text4PointModel(backbone, clip_dim, text_embeddings, variant, params)``:

- ``text4point`` (the paper)::

      h3D        = f3D(x, pos)                  # N_b × d'   (backbone.encode: bottleneck)
      ĥ3D        = FC(h3D)                      # N_b × d    (FCExpand d' → d, CLIP's joint space)
      h3D_text   = TQM(ĥ3D, t)                  # N_b × d    (queries ĥ3D, keys/values t: K × d, frozen)
      ĥ3D_text   = FC(h3D_text)                 # N_b × d'
      h3D_aggr   = α·h3D + β·ĥ3D_text           # N_b × d'
      z3D        = g3D(h3D_aggr)                # N × out_dim (backbone.decode, with the encoder's skips)
      z2D        = g2D(h2D)                     # M × out_dim, per matched pixel

  ``L_e = InfoNCE(ĥ3D[bottleneck point of each matched point], h2D[matched pixel])`` (the encoder's
  resolution: a matched input point is represented by its nearest bottleneck point,
  ``Encoded.bottleneck_index``) and ``L_d = InfoNCE(z3D[matched point], z2D[matched pixel])``;
  ``loss = w_e·L_e + w_d·L_d + w_c·L_c`` (``pretrain.loss_weights``), where ``L_c = mean(1 − cos(ĥ3D, h2D))``
  over the matches is OpenScene's distillation loss (not the paper's; ``cosine``, 0 by default: see
  ``results/experiments/dense_teacher.md``, "Transfer into 3D"). The InfoNCE treats the other matches of a
  frame as negatives, most of them pixels of the same class as the positive; the cosine term pulls ĥ3D
  towards the teacher's feature itself.
- ``image_contrast``: the same two losses without the TQM (``h3D_aggr = h3D``): what the text adds is
  the difference between the two.
- ``pointcontrast`` (Xie et al., 2020): ``z3D = g3D(h3D)`` and the InfoNCE between the ``z3D`` of the two
  frames of a pair at corresponding points; no CLIP-space head.

``g2D`` acts *per pixel*: the cached ``h2D`` is one vector per CLIP patch, looked up at each matched pixel,
and ``g2D`` is a two-layer MLP (``d → d → out_dim``, ReLU) applied to each looked-up vector independently;
it has no spatial context (the frozen CLIP image encoder already has it). The text embeddings ``t`` are a
non-persistent buffer: they are not part of the saved weights but come, with their identity check, from
the ``clip_features`` cache.

Every InfoNCE is computed per frame (per pair for ``pointcontrast``) and averaged over the batch: a frame's
``num_matches`` sampled correspondences are its positives and each other's negatives. (One InfoNCE over the
whole batch would cost ``(B·num_matches)²`` logits, which made the loss the largest part of a step.) False
negatives of the InfoNCE: matches whose pixels fall in one CLIP cell share ``h2D`` (``ids_a`` = the
batch's pixel id), matches of one bottleneck point share ``ĥ3D`` (``ids_b`` for ``L_e``), several pixels may
match one point (``ids_b`` for ``L_d``); such off-diagonal logits are removed from the denominators.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..losses import info_nce
from ..models import Backbone, Encoded
from ..names import IMAGE_VARIANTS, VARIANTS
from ..tqm import Aggregation, FCExpand, TextQueryingModule
from .data import FrameBatch
from .pairs import PairBatch


class PixelDecoder(nn.Module):
    """``g2D``: a per-pixel MLP ``d → d → out_dim`` on CLIP's dense feature at a pixel."""

    def __init__(self, clip_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(clip_dim, clip_dim), nn.ReLU(inplace=True), nn.Linear(clip_dim, out_dim))

    def forward(self, h2d: Tensor) -> Tensor:
        return self.net(h2d)


class Text4PointModel(nn.Module):
    """Backbone + (for image variants) ``FC``, ``g2D`` and (for ``text4point``) TQM and aggregation.

    Args:
        backbone: a :class:`~text4point.models.Backbone` (``f3D`` / ``g3D``).
        clip_dim: d, CLIP's joint embedding dimension.
        text_embeddings: ``t`` (``K × d``), the prompt embeddings of the label set's class names; required
            for ``text4point`` (its absence is a one-line ``InputError``), ignored otherwise.
        variant: ``text4point`` | ``image_contrast`` | ``pointcontrast``.
        params: the ``pretrain`` params section (``temperature``, ``loss_weights``, ``alpha``, ``beta``,
            ``learnable_aggregation``, ``tqm_heads``).
    """

    def __init__(self, backbone: Backbone, clip_dim: int, text_embeddings: Tensor | None, variant: str,
                 params: dict):
        super().__init__()
        if variant not in VARIANTS:
            raise InputError(f"pretrain.variants: expected one of {list(VARIANTS)}, got {variant!r}")
        self.backbone = backbone
        self.variant = variant
        self.clip_dim = int(clip_dim)
        self.temperature = float(params["temperature"])
        self.w_encoder = float(params["loss_weights"]["encoder"])
        self.w_decoder = float(params["loss_weights"]["decoder"])
        self.w_cosine = float(params["loss_weights"].get("cosine", 0.0))
        d_b = backbone.bottleneck_dim
        self.fc = self.g2d = self.tqm = self.fc_text = self.aggregation = None
        if variant in IMAGE_VARIANTS:
            self.fc = FCExpand(d_b, self.clip_dim)              # ĥ3D = FC(h3D)
            self.g2d = PixelDecoder(self.clip_dim, backbone.out_dim)
        if variant == "text4point":
            if text_embeddings is None:
                raise InputError("pretrain variant text4point: the Text Querying Module needs the class-name text "
                                 "embeddings t (clip_features' text_embeddings.pt); none were given")
            t = torch.as_tensor(text_embeddings).float()
            if t.dim() != 2 or t.size(1) != self.clip_dim:
                raise InputError(f"text embeddings: expected shape [K, {self.clip_dim}], got {list(t.shape)}")
            self.register_buffer("text", t.clone(), persistent=False)
            self.tqm = TextQueryingModule(self.clip_dim, int(params["tqm_heads"]))
            self.fc_text = FCExpand(self.clip_dim, d_b)          # ĥ3D_text = FC(h3D_text)
            self.aggregation = Aggregation(params["alpha"], params["beta"], bool(params["learnable_aggregation"]))

    # ------------------------------------------------------------ features

    def features(self, x: Tensor, pos: Tensor, batch: Tensor | None = None, decode: bool = True) -> dict:
        """Every intermediate of the forward pass: ``encoded``, ``h`` (h3D), ``h_hat`` (ĥ3D, image variants),
        ``h_text`` / ``attn`` (text4point), ``h_aggr`` and ``z`` (z3D; only when ``decode``)."""
        encoded: Encoded = self.backbone.encode(x, pos, batch)
        h = encoded.h
        out = {"encoded": encoded, "h": h}
        h_aggr = h
        if self.fc is not None:
            out["h_hat"] = self.fc(h)
        if self.tqm is not None:
            h_text, attn = self.tqm(out["h_hat"], self.text.to(out["h_hat"].dtype))
            out["h_text"], out["attn"] = h_text, attn
            h_aggr = self.aggregation(h, self.fc_text(h_text).to(h.dtype))
        out["h_aggr"] = h_aggr
        if decode:
            out["z"] = self.backbone.decode(encoded, h_aggr)
        return out

    def clip_space(self, x: Tensor, pos: Tensor, batch: Tensor | None = None) -> tuple[Tensor, Encoded]:
        """``ĥ3D`` (``N_b × d``) and the encoding: the features the zero-shot evaluation compares with ``t``."""
        if self.fc is None:
            raise InputError(f"pretrain variant {self.variant}: has no CLIP-space head (ĥ3D)")
        encoded = self.backbone.encode(x, pos, batch)
        return self.fc(encoded.h), encoded

    # ------------------------------------------------------------ losses

    def forward(self, batch: FrameBatch | PairBatch) -> dict[str, Tensor]:
        """Losses of one batch: ``loss`` (the weighted total) and its terms (``L_e``, ``L_d`` or ``L_pc``).

        Every value is a 0-dim tensor on the batch's device (no host synchronisation)."""
        out = self.features(batch.x, batch.pos, batch.batch)
        if isinstance(batch, PairBatch):
            z = out["z"]
            loss = self._per_cloud(batch.m_counts, z[batch.m_a], z[batch.m_b])
            return {"loss": loss, "L_pc": loss.detach()}
        m = batch.m_point
        bidx = out["encoded"].bottleneck_index()[m]
        h2d = batch.h2d.float()
        l_e = self._per_cloud(batch.m_counts, h2d, out["h_hat"][bidx], batch.pixel_id, bidx)
        z2d = self.g2d(h2d)
        l_d = self._per_cloud(batch.m_counts, z2d, out["z"][m], batch.pixel_id, m)
        loss = self.w_encoder * l_e + self.w_decoder * l_d
        terms = {"L_e": l_e.detach(), "L_d": l_d.detach()}
        if self.w_cosine > 0:
            l_c = (1 - torch.nn.functional.cosine_similarity(out["h_hat"][bidx].float(), h2d, dim=-1)).mean()
            loss = loss + self.w_cosine * l_c
            terms["L_c"] = l_c.detach()
        return {"loss": loss, **terms}


    def _per_cloud(self, counts: list[int], a: Tensor, b: Tensor, ids_a: Tensor | None = None,
                   ids_b: Tensor | None = None) -> Tensor:
        """Mean over the frames (pairs) of the batch of the InfoNCE of each frame's matches: a frame's
        ``num_matches`` sampled pairs are its positives and each other's negatives (``num_matches - 1``
        negatives per positive), as ``pretrain.num_matches`` defines them; frames without matches are left out."""
        parts = [torch.split(t, counts) if t is not None else [None] * len(counts) for t in (a, b, ids_a, ids_b)]
        losses = [info_nce(pa, pb, self.temperature, ids_a=ia, ids_b=ib)
                  for pa, pb, ia, ib, n in zip(*parts, counts) if n > 0]
        return torch.stack(losses).mean()


__all__ = ["PixelDecoder", "Text4PointModel"]
