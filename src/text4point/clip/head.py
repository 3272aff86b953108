"""The bootstrap teacher's dense head: per-cell features at a quarter of the input resolution.

A ViT's dense read-out has one feature per patch: t4p-tiny (patch 8) on the world's frames gives a grid too
coarse to resolve a chair. LSeg (Li et al., 2022) and OpenSeg put a light decoder on the image tower and train
its per-pixel output against the text embeddings of the pixels' classes; :class:`DenseHead` is such a decoder,
small enough for a CPU: a convolutional branch on the image (stride 2, 4 and 8) and the ViT's patch tokens
(``dense.dense_forward`` without a head: the MaskCLIP read-out, in CLIP's joint space) projected and
upsampled to stride 8, fused there, upsampled to stride 4 and fused with the stride-4 branch, then projected
into the joint space: ``[B, H/4, W/4, embed_dim]``. The tokens carry the frame's context (what the room is),
the convolutions its edges.

The head is part of the teacher: the ``clip_bootstrap`` stage trains it with the image and text towers and
saves it in the same checkpoint (``{"state_dict": <open_clip's>, "dense_head": {"config", "state_dict"}}``);
open_clip reads only ``state_dict``, ``load.load_clip`` also the head, and ``dense.dense_features`` then reads
features out through it. Real CLIP checkpoints have no head and keep the MaskCLIP read-out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STRIDE = 4  # input pixels per output cell
HEAD_KEY = "dense_head"


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DenseHead(nn.Module):
    """``forward(images [B, 3, H, W], tokens [B, gh, gw, token_dim]) -> [B, H/4, W/4, embed_dim]``.

    ``config`` (stored with the weights): ``token_dim`` (the tokens' width: the CLIP's embed dim),
    ``embed_dim`` (the output's: the same joint space) and ``width`` (channels of the stride-4 branch).
    H and W must be multiples of 8.
    """

    def __init__(self, token_dim: int, embed_dim: int, width: int = 64):
        super().__init__()
        self.config = {"token_dim": int(token_dim), "embed_dim": int(embed_dim), "width": int(width),
                       "stride": STRIDE}
        w = int(width)
        self.stride = STRIDE
        self.s2 = nn.Sequential(_conv(3, w // 2, 2), _conv(w // 2, w // 2))
        self.s4 = nn.Sequential(_conv(w // 2, w, 2), _conv(w, w))
        self.s8 = nn.Sequential(_conv(w, 2 * w, 2), _conv(2 * w, 2 * w))
        self.tokens = nn.Sequential(nn.Conv2d(token_dim, 2 * w, 1, bias=False), nn.BatchNorm2d(2 * w),
                                    nn.ReLU(inplace=True))
        self.fuse8 = _conv(4 * w, 2 * w)
        self.fuse4 = nn.Sequential(_conv(3 * w, w), nn.Conv2d(w, embed_dim, 1))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        x4 = self.s4(self.s2(images))
        x8 = self.s8(x4)
        t = self.tokens(tokens.permute(0, 3, 1, 2).to(x8.dtype))
        t = F.interpolate(t, size=x8.shape[-2:], mode="bilinear", align_corners=False)
        x8 = self.fuse8(torch.cat([x8, t], 1))
        up = F.interpolate(x8, size=x4.shape[-2:], mode="bilinear", align_corners=False)
        return self.fuse4(torch.cat([x4, up], 1)).permute(0, 2, 3, 1)

    def to_checkpoint(self) -> dict:
        """The checkpoint entry: ``{"config": {...}, "state_dict": {...}}`` (tensors and plain data only)."""
        return {"config": dict(self.config),
                "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}}


def head_mismatch(entry: object, embed_dim: int) -> str | None:
    """Why a checkpoint's ``dense_head`` entry does not fit a CLIP of ``embed_dim``; None when it fits."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict) \
            or not isinstance(entry.get("state_dict"), dict):
        return "expected {'config': {...}, 'state_dict': {...}}"
    cfg = entry["config"]
    for key in ("token_dim", "embed_dim", "width"):
        if not isinstance(cfg.get(key), int) or isinstance(cfg.get(key), bool) or cfg[key] < 2:
            return f"config.{key} must be an integer >= 2, got {cfg.get(key)!r}"
    if cfg.get("stride", STRIDE) != STRIDE:
        return f"config.stride must be {STRIDE}, got {cfg.get('stride')!r}"
    if cfg["token_dim"] != embed_dim or cfg["embed_dim"] != embed_dim:
        return (f"its token_dim {cfg['token_dim']} and embed_dim {cfg['embed_dim']} must both be the model's "
                f"embed dim {embed_dim}")
    ref = DenseHead(cfg["token_dim"], cfg["embed_dim"], cfg["width"]).state_dict()
    state = entry["state_dict"]
    for key in ref:
        if key not in state:
            return f"missing key {key!r}"
    for key in state:
        if key not in ref:
            return f"unexpected key {key!r}"
        if tuple(state[key].shape) != tuple(ref[key].shape):
            return f"{key!r} has shape {list(state[key].shape)}, the config needs {list(ref[key].shape)}"
    return None


def build_head(entry: dict) -> DenseHead:
    """The head of a checked checkpoint entry (see :func:`head_mismatch`), weights loaded, in eval mode."""
    cfg = entry["config"]
    head = DenseHead(cfg["token_dim"], cfg["embed_dim"], cfg["width"])
    head.load_state_dict(entry["state_dict"])
    return head.eval()
