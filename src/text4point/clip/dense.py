"""Dense CLIP image features and class-name text embeddings: the frozen targets of Text4Point pre-training.

Dense features (:func:`dense_features`) live in CLIP's joint image-text space, one vector per input patch:

* ViT (open_clip ``VisionTransformer``): the image goes through the tower as usual (``conv1``, class token,
  positional embedding, ``ln_pre``, ``transformer``), and every *patch* token - not only the class token -
  is passed through the final norm ``ln_post`` and the projection ``proj``. This is the MaskCLIP-style dense
  read-out without retraining (Zhou et al., 2022, "Extract Free Dense Labels from CLIP"). For a model with
  average pooling (``pool_type: avg``, like the project's ``t4p-tiny``) it is exact: the mean of the dense
  features over the grid *is* the global image embedding, so each patch feature is that patch's share of it.
  Inputs of another size than the model's native one get bicubically interpolated positional embeddings.
* ModifiedResNet (RN50 ...): the attention pool's value (``v_proj``) and output (``c_proj``) projections are
  applied at every position of the last feature map (MaskCLIP's ResNet recipe), with the pool's positional
  embedding added (interpolated to the grid).

* A teacher with a dense head (``ClipHandle.dense_head``, :mod:`.head`: the bootstrap's): the read-out above
  gives the tokens, and the head - trained with them against the text embeddings of the pixels' classes
  (LSeg's objective, ``bootstrap._dense_loss``) - turns image and tokens into one feature per 4x4 input
  pixels. Real CLIP checkpoints have no head.

Features are not L2-normalized (without a head their mean is the image embedding); consumers normalize as
they need.
:func:`grid_geometry` / :func:`pixel_to_cell` map a colour pixel to its cell.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..scene import Scene, read_image
from .load import ClipHandle, preprocess_images

FEATURE_DTYPE = np.float16
DENSE_SCALE = 1.5  # default clip.dense_scale: the dense input's short side, in units of the model's native input side


def _grid_pos_embed(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int], extra: int = 1) -> torch.Tensor:
    """Positional embedding ``[extra + gh*gw, C]`` resized (bicubic) from grid ``old`` to grid ``new``."""
    if tuple(old) == tuple(new):
        return pos
    head, grid = pos[:extra], pos[extra:]
    g = grid.reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2).float()
    g = F.interpolate(g, size=tuple(new), mode="bicubic", align_corners=False)
    g = g.permute(0, 2, 3, 1).reshape(new[0] * new[1], -1).to(pos.dtype)
    return torch.cat([head, g], 0)


def _vit_dense(visual, images: torch.Tensor) -> torch.Tensor:
    if getattr(visual, "attn_pool", None) is not None:
        raise InputError("clip.model: dense features of a ViT with an attentional pooler (CoCa) are not supported")
    dtype = visual.conv1.weight.dtype
    x = visual.conv1(images.to(dtype))  # [B, width, gh, gw]
    b, c, gh, gw = x.shape
    x = x.reshape(b, c, gh * gw).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, c).expand(b, 1, c)
    x = torch.cat([cls, x], dim=1)
    x = x + _grid_pos_embed(visual.positional_embedding, visual.grid_size, (gh, gw)).to(x.dtype)
    x = visual.ln_pre(x)
    x = visual.transformer(x)
    x = visual.ln_post(x[:, 1:])
    if visual.proj is not None:
        x = x @ visual.proj
    return x.reshape(b, gh, gw, -1)


def _resnet_dense(visual, images: torch.Tensor) -> torch.Tensor:
    x = images.to(visual.conv1.weight.dtype)
    x = visual.stem(x)
    x = visual.layer4(visual.layer3(visual.layer2(visual.layer1(x))))  # [B, C, gh, gw]
    b, c, gh, gw = x.shape
    pool = visual.attnpool
    s = int(round((pool.positional_embedding.shape[0] - 1) ** 0.5))
    pos = _grid_pos_embed(pool.positional_embedding, (s, s), (gh, gw))[1:]
    x = x.reshape(b, c, gh * gw).permute(0, 2, 1) + pos.to(x.dtype)
    x = pool.c_proj(pool.v_proj(x))
    return x.reshape(b, gh, gw, -1)


def dense_forward(model: torch.nn.Module, kind: str, images: torch.Tensor,
                  head: torch.nn.Module | None = None) -> torch.Tensor:
    """``[B, gh, gw, d]`` dense features of an open_clip ``model`` whose image tower is ``kind`` ("vit" |
    "resnet"), through its dense ``head`` when there is one, with autograd (the bootstrap trains through it);
    ``dense_features`` is the frozen read-out."""
    if kind == "vit":
        tokens = _vit_dense(model.visual, images)
    elif kind == "resnet":
        tokens = _resnet_dense(model.visual, images)
    else:
        raise InputError(f"clip.model: dense features need an open_clip VisionTransformer or ModifiedResNet image "
                         f"tower, got {type(model.visual).__name__}")
    return tokens if head is None else head(images, tokens)


@torch.no_grad()
def dense_features(handle: ClipHandle, images: torch.Tensor) -> torch.Tensor:
    """Preprocessed images ``[B, 3, H, W]`` (H, W from ``dense_input_size``) -> ``[B, gh, gw, d]`` float32.

    ``gh = H // cell``, ``gw = W // cell`` (``handle.cell_size``: the patch, or the dense head's stride);
    features are in CLIP's joint space (see the module docstring).
    """
    return dense_forward(handle.model, handle.kind, images.to(handle.device), handle.dense_head).float()


@torch.no_grad()
def text_embeddings(handle: ClipHandle, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """``[K, T, d]`` float32 text embeddings of ``template.format(class)``, each L2-normalized."""
    texts = [t.format(c) for c in class_names for t in templates]
    emb = handle.encode_text(texts)
    return emb.reshape(len(class_names), len(templates), -1)


def template_mean(emb: torch.Tensor) -> torch.Tensor:
    """``[K, T, d]`` -> ``[K, d]``: the mean over templates, L2-normalized (CLIP's prompt ensembling)."""
    return F.normalize(emb.float().mean(dim=1), dim=-1)


def label_set_text(handle: ClipHandle, classes: Sequence[str], prompt: str, templates: Sequence[str]) -> dict:
    """One label set's entry of ``text_embeddings.pt``: templates[0] is the prompt, the rest clip.templates."""
    all_templates = [prompt] + [t for t in templates]
    emb = text_embeddings(handle, classes, all_templates).cpu()
    rest = emb[:, 1:] if len(templates) else emb
    return {"classes": list(classes), "templates": all_templates, "prompt": prompt,
            "embeddings": emb.contiguous(), "prompt_embeddings": emb[:, 0].contiguous(),
            "template_mean_embeddings": template_mean(rest).contiguous()}


def dense_input_size(handle: ClipHandle, color_size: Sequence[int], scale: float = DENSE_SCALE) -> tuple[int, int]:
    """Model input ``(h, w)`` for dense features of frames of ``color_size = (w, h)``.

    The frame keeps its aspect ratio; its short side becomes ``scale`` (``clip.dense_scale``) times the model's
    native input side, both sides rounded to whole patches (positional embeddings are interpolated to that
    grid, as in MaskCLIP) and, with a dense head, to multiples of 8. For t4p-tiny (48 px, patch 8) and
    324x242 frames at scale 2 (the world's default): 96x128 input, 12x16 tokens and, through the bootstrap's
    dense head (stride 4), a 24x32 grid; ViT-B-16 (224 px, patch 16) at scale 1.5: a 21x28 grid. The
    bootstrap trains its dense term at this size, so the teacher's features are read out at the resolution
    they were trained at.
    """
    cw, ch = int(color_size[0]), int(color_size[1])
    p = handle.patch_size or 1
    if handle.dense_head is not None:
        p = math.lcm(p, 8)
    short = max(p, int(round(min(handle.image_size) * float(scale) / p)) * p)
    long = max(p, int(round(short * max(cw, ch) / min(cw, ch) / p)) * p)
    return (short, long) if ch <= cw else (long, short)


def grid_geometry(handle: ClipHandle, color_size: Sequence[int], input_size: Sequence[int]) -> dict:
    """How a colour pixel maps to a dense-feature cell (stored as ``grid.json``); ``input_size = (h, w)``.
    ``patch_size`` is the input pixels per cell (``handle.cell_size``)."""
    cw, ch = int(color_size[0]), int(color_size[1])
    ih, iw = input_size
    p = handle.cell_size
    return {"color_size": [cw, ch], "input_size": [int(iw), int(ih)], "resize": "plain bilinear (antialiased)",
            "scale_x": iw / cw, "scale_y": ih / ch, "patch_size": p, "grid": [int(ih) // p, int(iw) // p],
            "feature_dim": handle.embed_dim, "dtype": np.dtype(FEATURE_DTYPE).name,
            "cell_of_pixel": "row = floor((v + 0.5) * scale_y / patch_size), col = floor((u + 0.5) * scale_x / "
                             "patch_size), clipped to the grid; (u, v) = (column, row) in colour pixels"}


def pixel_to_cell(u, v, grid: dict) -> tuple[np.ndarray, np.ndarray]:
    """Grid cell ``(row, col)`` (int64 arrays) of colour pixels at column ``u`` and row ``v`` (arrays or scalars).

    ``grid`` is a scene's ``grid.json``. Pixel centres are mapped through the resize, then to the patch that
    contains them: ``row = floor((v + 0.5) * scale_y / patch)``, clipped to ``[0, gh - 1]`` (same for columns).
    """
    p = float(grid["patch_size"])
    gh, gw = grid["grid"]
    row = np.floor((np.asarray(v, dtype=np.float64) + 0.5) * grid["scale_y"] / p).astype(np.int64)
    col = np.floor((np.asarray(u, dtype=np.float64) + 0.5) * grid["scale_x"] / p).astype(np.int64)
    return np.clip(row, 0, gh - 1), np.clip(col, 0, gw - 1)


def features_at_pixels(features: np.ndarray, u, v, grid: dict) -> np.ndarray:
    """Dense features ``[..., d]`` of one frame's ``features [gh, gw, d]`` at colour pixels ``(u, v)``."""
    row, col = pixel_to_cell(u, v, grid)
    return features[row, col]


def decode_color(scene: Scene, frame: int, min_size: Sequence[int] | None = None) -> np.ndarray:
    """A frame's colour image as uint8 ``[H', W', 3]``, like ``Scene.color`` (same checks, same ``FrameDefect``).

    ``min_size = (h, w)``: the image is only needed at that size, so a JPEG is decoded at a reduced scale
    (libjpeg's DCT scaling, 1/2 to 1/8, never below ``min_size``; an area average, so no aliasing) - several
    times faster than a full decode. Without ``min_size`` (or for PNG) the full image is decoded.
    """
    cw, ch = scene.meta["color_size"]
    draft = (int(min_size[1]), int(min_size[0])) if min_size is not None else None
    return read_image(scene.frame_path("color", frame), size=(cw, ch), mode="RGB", draft=draft)


def frame_tensor(scene: Scene, frame: int, input_size: Sequence[int], mean, std) -> torch.Tensor:
    """One frame's preprocessed model input ``[3, h, w]`` (the stage's own decoding: ``decode_color`` at the
    reduced scale, then ``preprocess_images``); raises ``FrameDefect`` when the colour does not decode."""
    return preprocess_images(decode_color(scene, frame, input_size), input_size, mean, std)[0]
