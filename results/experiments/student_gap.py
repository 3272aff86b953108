"""Where the zero-shot student loses the 2D teacher's labels (issue 13, part 2): coverage, resolution, fitting or
generalization. See results/experiments/student_gap.md for the runs and what they show.

For a pre-training checkpoint with a CLIP-space head, on the ``val`` scenes and on the ``train`` scenes whose frames
it was pre-trained on, with the zero-shot protocol of ``text4point.pretrain.zeroshot``:

- ``all``: the network's zero-shot mIoU on every labelled point (the stage's ``zeroshot_miou``);
- ``covered``: the network on the points the teacher's frames see, ``teacher``: the teacher there (the ceiling),
  ``agreement``: the share of those points where the two give the same class;
- ``bottleneck_ceiling``: the teacher's votes summed over the points each bottleneck point represents (the
  network's own bottleneck of that scene), that class given back to the points: the best labelling a network
  whose ``ĥ3D`` lives at the bottleneck can reach with nearest-point upsampling, on the covered points;
- ``agreement_bottleneck``: the network against that labelling (what it was asked to fit, at its resolution);
- ``frame_agreement``: on the pre-training items themselves (the split's frames, ``num_matches`` matches each, as
  epoch 0 draws them), the share of matches where the class of ``ĥ3D`` at the matched point's bottleneck point
  is the class of the teacher's ``h2D`` at the matched pixel: how well the loss's own pairs are fitted, without
  the step from single frames to whole scenes; ``frame_agreement_class_mean``: the same per teacher class,
  averaged over the classes the teacher gives (what mIoU weighs), ``frame_teacher_class_share``: how often the
  teacher gives each class.

Run from the project root:

    python results/experiments/student_gap.py --checkpoint CKPT --data data/world --corr data/correspondences \\
        --features data/clip_features/t4p-tiny --clip-checkpoint models/clip/bootstrap.pt --out OUT.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from text4point import params
from text4point.checkpoints import load_checkpoint
from text4point.clip.cache import load_features
from text4point.labels import IGNORE_LABEL
from text4point.metrics import confusion_matrix, iou_from_confusion
from text4point.pretrain import zeroshot
from text4point.pretrain.data import build_dataset, collate_for
from text4point.pretrain.engine import clip_identity
from text4point.pretrain.query import _model
from text4point.scene import Dataset


@torch.no_grad()
def bottleneck_ceiling(model, ds, features, ids, text, voxel, channels, tol) -> dict:
    k = text.shape[0]
    t = F.normalize(text.float(), dim=1)
    conf = np.zeros((k, k), np.int64)
    agree = n = 0
    for sid in ids:
        scene = ds.scene(sid)
        cloud = scene.points()
        sem = np.asarray(cloud["semantic"], np.int64)
        vpos, vx, cluster = zeroshot.voxel_cloud(cloud["xyz"], cloud["rgb"], voxel, "cpu", channels)
        h_hat, enc = model.clip_space(vx, vpos, None)
        point_b = enc.bottleneck_index()[cluster]  # the bottleneck point of each scene point
        votes, seen = zeroshot.teacher_votes(scene, features, sid, torch.as_tensor(np.asarray(cloud["xyz"],
                                                                                               np.float32)), t, tol)
        bvotes = torch.zeros(len(h_hat), k).index_add_(0, point_b[seen], votes[seen])
        label = bvotes.argmax(1)[point_b].numpy()
        m = seen.numpy()
        conf += confusion_matrix(label[m], sem[m], k)
        net = (F.normalize(h_hat.float(), dim=1) @ t.T).argmax(1)[point_b].numpy()
        keep = m & (sem != IGNORE_LABEL)
        agree += int((net[keep] == label[keep]).sum())
        n += int(keep.sum())
    return {"miou": iou_from_confusion(conf)[0], "accuracy": float(np.trace(conf) / max(conf.sum(), 1)),
            "agreement_network": agree / max(n, 1)}


@torch.no_grad()
def frame_agreement(model, cfg, corr, data, features, ids, text) -> dict:
    pc = cfg["pretrain"]
    ds = build_dataset(model.variant, corr, data, features, ids, pc, int(cfg["seed"]))
    collate = collate_for(model.variant)
    t = F.normalize(text.float(), dim=1)
    k = t.shape[0]
    pair = np.zeros((k, k), np.int64)  # [teacher class, network class] over the matches
    keys = [(0, i) for i in range(len(ds))]
    for start in range(0, len(keys), 8):
        b = collate([ds[k] for k in keys[start:start + 8]])
        h_hat, enc = model.clip_space(b.x, b.pos, b.batch)
        net = (F.normalize(h_hat.float(), dim=1) @ t.T).argmax(1)[enc.bottleneck_index()[b.m_point]]
        teacher = (F.normalize(b.h2d.float(), dim=1) @ t.T).argmax(1)
        pair += np.bincount((teacher * k + net).numpy(), minlength=k * k).reshape(k, k)
    per_class = np.diag(pair) / np.maximum(pair.sum(1), 1)
    return {"agreement": float(np.trace(pair) / max(pair.sum(), 1)),
            "agreement_class_mean": float(per_class[pair.sum(1) > 0].mean()),
            "teacher_class_share": (pair.sum(1) / max(pair.sum(), 1)).round(4).tolist()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--features", type=Path, required=True)
    ap.add_argument("--clip-checkpoint", type=Path, default=None)
    ap.add_argument("--corr", type=Path, required=True)
    ap.add_argument("--params", type=Path, default=Path("params.yaml"))
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = params.load(a.params)
    ck = load_checkpoint(a.checkpoint)
    model, channels = _model(cfg, ck, a.checkpoint)
    fc = load_features(a.features, clip_identity(cfg, a.features, a.clip_checkpoint))
    ds = Dataset(a.data)
    text = torch.as_tensor(fc.text()[ds.label_set.name]["prompt_embeddings"]).float()
    voxel = float(cfg["correspondences"]["voxel_size"])
    tol = float(cfg["correspondences"]["depth_tolerance"])
    out = {"checkpoint": str(a.checkpoint), "params_hash": (ck.get("meta") or {}).get("params_hash")}
    for split in ("val", "train"):
        ids = ds.split(split)
        r = zeroshot.evaluate(model, a.data, ids, text, voxel, "cpu", channels, teacher=(fc, tol))
        b = bottleneck_ceiling(model, ds, fc, ids, text, voxel, channels, tol)
        frames = frame_agreement(model, cfg, a.corr, a.data, fc, ds.split(split, nonempty=True), text)
        out[split] = {"scenes": len(ids), "miou_all": r["miou"], "accuracy_all": r["accuracy"],
                      "miou_covered": r["covered"]["miou"], "accuracy_covered": r["covered"]["accuracy"],
                      "teacher_miou": r["teacher"]["miou"], "teacher_accuracy": r["teacher"]["accuracy"],
                      "teacher_coverage": r["teacher"]["coverage"], "agreement": r["agreement"],
                      "bottleneck_ceiling_miou": b["miou"], "bottleneck_ceiling_accuracy": b["accuracy"],
                      "agreement_bottleneck": b["agreement_network"], "frame_agreement": frames["agreement"],
                      "frame_agreement_class_mean": frames["agreement_class_mean"],
                      "frame_teacher_class_share": frames["teacher_class_share"],
                      "iou_covered": r["covered"]["iou"], "iou_teacher": r["teacher"]["iou"]}
        print(split, {k: round(v, 3) for k, v in out[split].items() if isinstance(v, float)}, flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    tmp.replace(a.out)


if __name__ == "__main__":
    main()
