"""Pre-training balanced over the teacher's classes, two ways (an experiment, not a param).

``TEACHER_BALANCE=sample``: each frame's matches drawn balanced over the teacher's classes. The stage draws ``num_matches`` of a frame's pixel <-> point matches uniformly, so about 72 % of them are pixels the
teacher calls wall or floor (results/experiments/student_gap.md). Here every candidate match of the frame gets its
teacher class (``argmax`` of its ``h2D`` against the class prompts' text embeddings, which the teacher's zero-shot
labelling uses as well) and the matches are drawn without replacement with probability ``1 / (matches of that class
in the frame)``. (On the default world 89 % of the frames have fewer candidate matches than ``num_matches``, so
this changes almost nothing: see results/experiments/student_gap.md.)

``TEACHER_BALANCE=weight``: the cosine distillation term ``L_c`` (``pretrain.loss_weights.cosine``) as a weighted
mean over the batch's matches, a match weighing ``1 / (matches of its teacher class in the batch)``, so that every
class the teacher gives in the batch weighs the same. ``L_e`` / ``L_d`` are unchanged.

Everything else is the ``text4point pretrain`` command's: this script patches the engine and then runs the CLI with
the given arguments. Run from the project root:

    TEACHER_BALANCE=weight python results/experiments/teacher_balance.py pretrain --params-json "$J" ...
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from text4point import cli
from text4point.pretrain import data as D
from text4point.pretrain import engine as E

MATCH_FIELDS = ("m_point", "m_cell", "m_image", "h2d")


class BalancedFrames(D.FrameDataset):
    text: np.ndarray  # [K, d], L2-normalized class prompt embeddings

    def __getitem__(self, key) -> dict:
        want = self.num_matches
        self.num_matches = 1 << 40  # every candidate match (the parent's uniform draw is skipped)
        try:
            item = super().__getitem__(key)
        finally:
            self.num_matches = want
        n = len(item["m_point"])
        if n <= want:
            return item
        epoch, index = D._split_key(key)
        rng = np.random.default_rng([self.seed, epoch, index, 7])
        cls = (item["h2d"].astype(np.float32) @ self.text.T).argmax(1)
        weight = 1.0 / np.bincount(cls)[cls]
        pick = np.sort(rng.choice(n, want, replace=False, p=weight / weight.sum()))
        return {k: (v[pick] if k in MATCH_FIELDS else v) for k, v in item.items()}


def build_dataset(variant, corr_dir, data_root, features, scene_ids, pcfg, seed):
    ds = D.build_dataset(variant, corr_dir, data_root, features, scene_ids, pcfg, seed)
    if isinstance(ds, D.FrameDataset):
        ds.__class__ = BalancedFrames
        from text4point.scene import Dataset

        t = np.asarray(features.text()[Dataset(data_root).label_set.name]["prompt_embeddings"], np.float32)
        ds.text = t / np.linalg.norm(t, axis=1, keepdims=True)
    return ds


def weighted_forward(self, batch):
    """``Text4PointModel.forward`` for frame batches with the class-weighted ``L_c`` (the teacher's class of a match:
    ``argmax`` of its ``h2D`` against the model's class prompt embeddings ``self.text``, text4point only)."""
    out = self.features(batch.x, batch.pos, batch.batch)
    m = batch.m_point
    bidx = out["encoded"].bottleneck_index()[m]
    h2d = batch.h2d.float()
    l_e = self._per_cloud(batch.m_counts, h2d, out["h_hat"][bidx], batch.pixel_id, bidx)
    l_d = self._per_cloud(batch.m_counts, self.g2d(h2d), out["z"][m], batch.pixel_id, m)
    with torch.no_grad():
        cls = (F.normalize(h2d, dim=1) @ F.normalize(self.text.float(), dim=1).T).argmax(1)
        w = 1.0 / torch.bincount(cls)[cls].float()
        w = w / w.sum()
    l_c = ((1 - F.cosine_similarity(out["h_hat"][bidx].float(), h2d, dim=-1)) * w).sum()
    loss = self.w_encoder * l_e + self.w_decoder * l_d + self.w_cosine * l_c
    return {"loss": loss, "L_e": l_e.detach(), "L_d": l_d.detach(), "L_c": l_c.detach()}


if __name__ == "__main__":
    mode = os.environ.get("TEACHER_BALANCE")
    if mode == "sample":
        E.build_dataset = build_dataset
    elif mode == "weight":
        from text4point.pretrain.model import Text4PointModel

        Text4PointModel.forward = weighted_forward
    else:
        sys.exit("TEACHER_BALANCE: expected 'sample' or 'weight'")
    sys.exit(cli.main(sys.argv[1:]))
