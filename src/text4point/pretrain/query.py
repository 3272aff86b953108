"""Ask a scene in words: score every point of a scene against free text through a pre-trained ``ĥ3D``.

``text4point query --checkpoint models/pretrain/text4point/checkpoint.pt --scene val_0000 "a red chair"``

- The scene's labelled cloud is voxelized and featurized exactly as the zero-shot evaluation does
  (:func:`text4point.pretrain.zeroshot.voxel_cloud`: ``correspondences.voxel_size``, the checkpoint's input
  channels); the network gives ``ĥ3D`` at its bottleneck points.
- Each query is embedded by the frozen CLIP text tower the checkpoint was pre-trained against (its identity is
  checked), as written: no prompt template is added.
- A point's score is the cosine between its voxel's nearest bottleneck ``ĥ3D`` and the query embedding
  (``[-1, 1]``; the zero-shot protocol's nearest-point upsampling).

Writes ``<out-dir>/<scene>.npz`` (``scores`` ``[Q, N]`` float32 in the scene's point order, ``queries``,
``xyz``) and ``<out-dir>/<scene>.png`` (per query: a top view and a perspective view, points coloured by
score), both atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoints import load_checkpoint, load_weights
from ..errors import InputError
from ..fsutil import atomic_path
from ..names import IMAGE_VARIANTS
from ..scene import Dataset


def _model(cfg: dict, ck: dict, path: Path):
    """The checkpoint's network (its architecture and input channels from its metadata) in eval mode, and the
    channels."""
    from .engine import build_model

    meta = ck.get("meta") or {}
    variant = meta.get("variant")
    if variant not in IMAGE_VARIANTS:
        raise InputError(f"{path}: pre-training variant {variant!r} has no CLIP-space head (ĥ3D); query needs one "
                         f"of {list(IMAGE_VARIANTS)}")
    bb = meta.get("backbone") or {}
    pc = {**cfg["pretrain"], "backbone": bb.get("name"),
          **{k: bb[k] for k in ("width", "bottleneck_dim", "out_dim", "channels", "radii", "max_neighbors") if k in bb}}
    clip_dim = int(meta.get("clip_dim") or 0)
    # the TQM's class embeddings are a non-persistent buffer that ĥ3D does not read: a placeholder stands in
    text = torch.zeros(1, clip_dim) if variant == "text4point" else None
    model = build_model({**cfg, "pretrain": pc}, variant, clip_dim, text)
    load_weights(model, ck["model"], path)
    return model.eval(), tuple(pc["channels"])


@torch.no_grad()
def score_scene(cfg: dict, checkpoint: Path, data_root: Path, scene_id: str, queries: list[str],
                clip_checkpoint: Path | None, device) -> dict:
    """``{"scores": [Q, N], "xyz": [N, 3], "queries": [...]}`` for the scene ``scene_id`` of ``data_root``."""
    from ..clip.load import load_clip, same_weights
    from .zeroshot import voxel_cloud

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError(f"{checkpoint}: pre-training checkpoint not found")
    if not queries or any(not q.strip() for q in queries):
        raise InputError(f"query: expected at least one non-empty text, got {queries!r}")
    ck = load_checkpoint(checkpoint)
    model, channels = _model(cfg, ck, checkpoint)
    model.to(device)
    ds = Dataset(data_root)
    ids = [s for split in ("clip", "train", "val") for s in ds.split(split)]
    if scene_id not in ids:
        raise InputError(f"{data_root}: scene {scene_id!r} not found (it has {len(ids)} scenes, e.g. {ids[:3]})")
    clip = load_clip(cfg["clip"], device, clip_checkpoint)
    want = (ck.get("meta") or {}).get("clip_identity") or {}
    if want and not same_weights(clip.identity, want):
        raise InputError(f"{checkpoint}: pre-trained against CLIP {want.get('model')} "
                         f"({str(want.get('weights_sha256'))[:12]}), but clip.* loads {clip.identity.get('model')} "
                         f"({str(clip.identity.get('weights_sha256'))[:12]})")
    t = F.normalize(clip.encode_text(queries).float().to(device), dim=1)
    cloud = ds.scene(scene_id).points()
    vpos, vx, cluster = voxel_cloud(cloud["xyz"], cloud["rgb"], float(cfg["correspondences"]["voxel_size"]), device,
                                    channels)
    h_hat, encoded = model.clip_space(vx, vpos, None)
    s = F.normalize(h_hat.float(), dim=1) @ t.T                  # [N_b, Q]
    scores = s[encoded.bottleneck_index()][cluster].T.cpu().numpy().astype(np.float32)
    return {"scores": scores, "xyz": np.asarray(cloud["xyz"], np.float32), "queries": list(queries)}


def draw(result: dict, path: Path, title: str = "") -> None:
    """Per query, a top view and a perspective view of the points coloured by score (PNG, atomic)."""
    from ..plotting import pyplot, save_png

    plt = pyplot()
    xyz, scores = result["xyz"], result["scores"]
    q = len(result["queries"])
    fig = plt.figure(figsize=(11, 4.6 * q))
    for i, text in enumerate(result["queries"]):
        sc = scores[i]
        order = np.argsort(sc)                                  # high scores drawn last, on top
        top = fig.add_subplot(q, 2, 2 * i + 1)
        im = top.scatter(xyz[order, 0], xyz[order, 1], c=sc[order], s=1.5, cmap="viridis", linewidths=0)
        top.set_aspect("equal")
        top.set_title(f"{text!r}: top view")
        top.set_xlabel("x (m)")
        top.set_ylabel("y (m)")
        persp = fig.add_subplot(q, 2, 2 * i + 2, projection="3d")
        persp.scatter(xyz[order, 0], xyz[order, 1], xyz[order, 2], c=sc[order], s=1.0, cmap="viridis",
                      linewidths=0, depthshade=False)
        persp.view_init(elev=35, azim=-60)
        persp.set_box_aspect(np.ptp(xyz, axis=0) + 1e-6)
        persp.set_axis_off()
        persp.set_title(f"{text!r}: perspective")
        fig.colorbar(im, ax=[top, persp], shrink=0.8, label="cosine(ĥ3D, text)")
    if title:
        fig.suptitle(title)
    save_png(fig, path)
    plt.close(fig)


def query(cfg: dict, checkpoint: Path, data_root: Path, scene_id: str, queries: list[str], out_dir: Path,
          clip_checkpoint: Path | None, device) -> tuple[Path, Path]:
    """Score ``scene_id`` against ``queries`` and write ``<out_dir>/<scene>.npz`` and ``.png``."""
    result = score_scene(cfg, checkpoint, data_root, scene_id, queries, clip_checkpoint, device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    npz, png = out_dir / f"{scene_id}.npz", out_dir / f"{scene_id}.png"
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, scores=result["scores"], xyz=result["xyz"], queries=np.array(result["queries"]))
    draw(result, png, title=f"{scene_id} ({Path(checkpoint).parent.name})")
    return npz, png


__all__ = ["draw", "query", "score_scene"]
