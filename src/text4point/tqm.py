"""The Text Querying Module (TQM) of Text4Point and the ``α/β`` aggregation around it.

The paper's flow between the 3D encoder ``f3D`` and decoder ``g3D``::

    ĥ3D       = FC(h3D)                          # N × d   (FCExpand: d' → d, CLIP's joint dim)
    h3D_text  = TQM(ĥ3D, t)                      # N × d   (TextQueryingModule; t: K × d)
    ĥ3D_text  = FC(h3D_text)                     # N × d'  (FCExpand: d → d')
    h3D_aggr  = α·h3D + β·ĥ3D_text               # N × d'  (Aggregation) → g3D → z3D

The TQM is a pre-norm cross-attention block: queries come from the points, keys and values from
the text embeddings ``t`` of the class names, so every point gathers the text features it matches.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class FCExpand(nn.Linear):
    """The paper's ``FC`` layers: ``ĥ3D = FC(h3D)`` (d' → d) and ``ĥ3D_text = FC(h3D_text)`` (d → d').

    A plain :class:`torch.nn.Linear` with bias; named for the role it plays in the paper.
    """

    def __init__(self, d_in: int, d_out: int, bias: bool = True):
        super().__init__(d_in, d_out, bias=bias)


class TextQueryingModule(nn.Module):
    """TQM: ``LayerNorm → multi-head cross-attention(q = ĥ3D, k = v = t) → residual →
    LayerNorm → MLP → residual``.

    Queries are the points' ``ĥ3D`` (``N × d``), keys and values the text embeddings ``t``
    (``K × d``, one per class name). The queries and the text are layer-normalised by separate
    :class:`~torch.nn.LayerNorm` s before the attention (pre-norm, as in Perceiver-style
    cross-attention blocks), so the scale of CLIP's text embeddings does not matter.

    Args:
        dim: d, CLIP's joint embedding dimension (of both ``ĥ3D`` and ``t``).
        heads: attention heads; ``dim`` must be divisible by it.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
        dropout: dropout on the attention weights and in the MLP.

    ``forward(q, text)`` returns ``(h3D_text, attn)`` where ``attn`` holds the attention weights
    averaged over heads: rows sum to one over the K text embeddings.
    """

    def __init__(self, dim: int, heads: int = 8, mlp_ratio: float = 4, dropout: float = 0.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads = int(dim), int(heads)
        self.head_dim = self.dim // self.heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_text = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(dropout)
        self.norm_mlp = nn.LayerNorm(dim)
        hidden = int(round(dim * mlp_ratio))
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim), nn.Dropout(dropout))

    def forward(self, q: Tensor, text: Tensor) -> tuple[Tensor, Tensor]:
        """Query the text embeddings with the points.

        Args:
            q: ``ĥ3D``, ``[N, d]`` or ``[B, N, d]``.
            text: ``t``, ``[K, d]`` (shared by every query) or ``[B, K, d]``.

        Returns:
            ``h3D_text`` with the shape of ``q``, and the attention over text averaged over heads,
            ``[N, K]`` (or ``[B, N, K]``).
        """
        if q.size(-1) != self.dim or text.size(-1) != self.dim:
            raise ValueError(f"q and text: expected last dimension {self.dim}, "
                             f"got {list(q.shape)} and {list(text.shape)}")
        unbatched = q.dim() == 2
        if unbatched:
            q = q.unsqueeze(0)
        if text.dim() == 2:
            text = text.unsqueeze(0).expand(q.size(0), -1, -1)
        if q.dim() != 3 or text.dim() != 3 or text.size(0) != q.size(0):
            raise ValueError(f"q and text: expected [N, d]/[B, N, d] and [K, d]/[B, K, d], "
                             f"got {list(q.shape)} and {list(text.shape)}")
        b, n, _ = q.shape

        t = self.norm_text(text)
        queries = self._split(self.to_q(self.norm_q(q)))          # B, H, N, dh
        keys, values = self._split(self.to_k(t)), self._split(self.to_v(t))  # B, H, K, dh
        scores = queries @ keys.transpose(-1, -2) / math.sqrt(self.head_dim)  # B, H, N, K
        weights = scores.softmax(dim=-1)
        attended = self.attn_drop(weights) @ values                # B, H, N, dh
        attended = attended.transpose(1, 2).reshape(b, n, self.dim)
        x = q + self.proj(attended)
        x = x + self.mlp(self.norm_mlp(x))
        attn = weights.mean(dim=1)                                 # B, N, K
        if unbatched:
            return x.squeeze(0), attn.squeeze(0)
        return x, attn

    def _split(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)


class Aggregation(nn.Module):
    """``h3D_aggr = α·h3D + β·ĥ3D_text``, the input of the 3D decoder ``g3D``.

    Args:
        alpha: α, the weight of the encoder's own feature ``h3D``.
        beta: β, the weight of the text-queried feature ``ĥ3D_text``.
        learnable: α and β are trainable parameters when true, fixed buffers (saved in the
            state dict, never updated) otherwise.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, learnable: bool = False):
        super().__init__()
        self.learnable = bool(learnable)
        alpha_t = torch.tensor(float(alpha))
        beta_t = torch.tensor(float(beta))
        if self.learnable:
            self.alpha = nn.Parameter(alpha_t)
            self.beta = nn.Parameter(beta_t)
        else:
            self.register_buffer("alpha", alpha_t)
            self.register_buffer("beta", beta_t)

    def forward(self, h: Tensor, h_text_proj: Tensor) -> Tensor:
        """``α·h + β·h_text_proj`` for ``h = h3D`` and ``h_text_proj = ĥ3D_text`` (both ``N × d'``)."""
        if h.shape != h_text_proj.shape:
            raise ValueError(f"h and h_text_proj: expected equal shapes, got {list(h.shape)} "
                             f"and {list(h_text_proj.shape)}")
        return self.alpha * h + self.beta * h_text_proj

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.item():g}, beta={self.beta.item():g}, learnable={self.learnable}"
