"""The fine-tuning network: a backbone (from scratch or a pre-training checkpoint) with a task head, and for the
``text4point`` initialisation the paper's language guidance at fine-tuning time.

- ``scratch``, ``pointcontrast``, ``image_contrast``: ``z3D = g3D(f3D(x))`` and the head on ``z3D`` (the plain
  backbone + head), so the comparison separates what pre-training gave the backbone.
- ``text4point``: the learnable prompt ``[p1 … pM][CLS]`` through the frozen CLIP text encoder gives the class
  embeddings ``t`` (``K × d``, :class:`~text4point.clip.prompt.PromptLearner`); ``ĥ3D = FC(h3D)`` at the
  bottleneck; the score map ``s = cos(ĥ3D, t) / τ`` gets an auxiliary cross-entropy against the bottleneck
  points' labels (weight ``finetune.aux_weight``); the TQM queries ``t`` with ``ĥ3D``, and
  ``h3D_aggr = α·h3D + β·FC(h3D_text)`` feeds the decoder, whose ``z3D`` feeds the head. ``FC``, TQM, the
  second ``FC`` and α/β come from the pre-training checkpoint.

Heads (:mod:`text4point.heads`): ``semseg`` a per-point classifier; ``insseg`` PointGroup-style semantic +
offset branches; ``det`` VoteNet-style voting from seeds = the first set-abstraction level's points (a
quarter of the voxels, by farthest-point sampling) carrying their ``z3D``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..heads import DetectionHead, InstanceHead, SemanticHead, seed_values
from ..models import build_backbone
from ..pretrain.engine import load_weights
from ..tqm import Aggregation, FCExpand, TextQueryingModule

TASKS = ("semseg", "insseg", "det")
INITS = ("scratch", "pointcontrast", "image_contrast", "text4point")
LANGUAGE_PREFIXES = ("fc.", "tqm.", "fc_text.", "aggregation.")


class FinetuneModel(nn.Module):
    """Backbone + head (+ the text4point language modules). See the module docstring.

    Args:
        backbone: a :class:`~text4point.models.Backbone`.
        task: ``semseg`` | ``insseg`` | ``det``.
        num_classes: K, the label set's size.
        ft: the ``finetune`` params section.
        prompt: a :class:`~text4point.clip.prompt.PromptLearner` (``text4point`` only), else None.
        clip_dim: d (``text4point`` only).
        pretrain_params: the ``pretrain`` params section (TQM heads, α, β) for ``text4point``.
    """

    def __init__(self, backbone, task: str, num_classes: int, ft: dict, prompt: nn.Module | None = None,
                 clip_dim: int | None = None, pretrain_params: dict | None = None):
        super().__init__()
        if task not in TASKS:
            raise InputError(f"finetune.tasks: expected one of {list(TASKS)}, got {task!r}")
        self.backbone, self.task, self.num_classes = backbone, task, int(num_classes)
        out = backbone.out_dim
        if task == "semseg":
            self.head = SemanticHead(out, self.num_classes)
        elif task == "insseg":
            self.head = InstanceHead(out, self.num_classes)
        else:
            self.head = DetectionHead(out, self.num_classes, num_proposals=int(ft["det"]["num_proposals"]),
                                      radius=float(ft["det"]["radius"]))
        self.prompt = prompt
        self.aux_weight = float(ft.get("aux_weight", 1.0))
        self.temperature = float(ft.get("temperature", 0.07))
        self.fc = self.tqm = self.fc_text = self.aggregation = None
        if prompt is not None:
            pp = pretrain_params or {}
            d_b = backbone.bottleneck_dim
            self.fc = FCExpand(d_b, int(clip_dim))
            self.tqm = TextQueryingModule(int(clip_dim), int(pp.get("tqm_heads", 4)))
            self.fc_text = FCExpand(int(clip_dim), d_b)
            self.aggregation = Aggregation(pp.get("alpha", 1.0), pp.get("beta", 1.0),
                                           bool(pp.get("learnable_aggregation", True)))

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor) -> dict:
        encoded = self.backbone.encode(x, pos, batch)
        out = {"encoded": encoded}
        h = encoded.h
        if self.prompt is not None:
            t = self.prompt()
            h_hat = self.fc(h)
            out["scores"] = F.normalize(h_hat, dim=1) @ t.T / self.temperature  # s = ĥ3D·tᵀ, N_b × K
            h_text, _ = self.tqm(h_hat, t.to(h_hat.dtype))
            h = self.aggregation(h, self.fc_text(h_text).to(h.dtype))
        z = self.backbone.decode(encoded, h)
        if self.task == "det":
            seed_pos, seed_batch = encoded.poss[1], encoded.batches[1]
            seed_feat = seed_values(z, pos, batch, seed_pos, seed_batch)
            out["det"] = self.head(seed_feat, seed_pos, seed_batch)
            out["seed_pos"], out["seed_batch"] = seed_pos, seed_batch
        else:
            out["head"] = self.head(z)
        return out

    def losses(self, out: dict, batch) -> dict[str, Tensor]:
        """The task's losses (+ ``aux``, the score map's cross-entropy, for text4point); ``loss`` is the total."""
        if self.task == "semseg":
            terms = {"loss": self.head.loss(out["head"], batch.semantic)}
        elif self.task == "insseg":
            o = out["head"]
            terms = self.head.loss(batch.pos, batch.batch, o.sem_logits, o.offsets, batch.semantic, batch.instance)
        else:
            gts = [{"centers": b[:, :3], "sizes": b[:, 3:], "classes": c, "instances": i}
                   for b, c, i in zip(batch.boxes, batch.box_classes, batch.box_instances)]
            seed_inst = seed_values(batch.instance, batch.pos, batch.batch, out["seed_pos"], out["seed_batch"])
            terms = self.head.loss(out["det"], gts, seed_inst)
            terms = {k: v for k, v in terms.items() if k != "positives"}
        if "scores" in out:
            enc = out["encoded"]
            labels = seed_values(batch.semantic, batch.pos, batch.batch, enc.pos_b, enc.batch_b)
            valid = labels != 255
            aux = (F.cross_entropy(out["scores"][valid], labels[valid]) if bool(valid.any())
                   else out["scores"].sum() * 0)
            terms["aux"] = aux
            terms["loss"] = terms["loss"] + self.aux_weight * aux
        return terms


def build(cfg: dict, task: str, init: str, num_classes: int, init_checkpoint: dict | None, prompt=None,
          init_path: str = "") -> FinetuneModel:
    """The fine-tuning model with its weights initialised from ``init_checkpoint`` (a ``pretrain`` stage
    checkpoint, ``{"model", "meta"}``) or at random (``scratch``); the backbone's architecture is
    ``pretrain.backbone/width/bottleneck_dim/out_dim`` and must be the checkpoint's."""
    pc, ft = cfg["pretrain"], cfg["finetune"]
    if init not in INITS:
        raise InputError(f"finetune.inits: expected one of {list(INITS)}, got {init!r}")
    want = {"name": pc["backbone"], "width": int(pc["width"]), "bottleneck_dim": int(pc["bottleneck_dim"]),
            "out_dim": int(pc["out_dim"])}
    clip_dim = None
    if init_checkpoint is not None:
        meta = init_checkpoint.get("meta") or {}
        got = {k: (meta.get("backbone") or {}).get(k) for k in want}
        if got != want:
            raise InputError(f"checkpoint {init_path} was made with backbone {got}, but params ask for {want}")
        if meta.get("variant") != init:
            raise InputError(f"checkpoint {init_path} is of pre-training variant {meta.get('variant')!r}, not "
                             f"{init!r}")
        clip_dim = meta.get("clip_dim")
    backbone = build_backbone(pc["backbone"], in_channels=3, width=want["width"],
                              bottleneck_dim=want["bottleneck_dim"], out_dim=want["out_dim"])
    if init == "text4point" and prompt is None:
        raise InputError("finetune init text4point: needs the learnable prompt (the frozen CLIP) - none was given")
    model = FinetuneModel(backbone, task, num_classes, ft, prompt if init == "text4point" else None,
                          clip_dim, pc)
    if init_checkpoint is not None:
        state = init_checkpoint["model"]
        take = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        load_weights(model.backbone, take, init_path)
        if init == "text4point":
            lang = {k: v for k, v in state.items() if k.startswith(LANGUAGE_PREFIXES)}
            missing = [p for p in LANGUAGE_PREFIXES if not any(k.startswith(p) for k in lang)]
            if missing:
                raise InputError(f"checkpoint {init_path}: has no {missing[0].rstrip('.')} weights (is it a "
                                 f"text4point pre-training checkpoint?)")
            load_weights(model, lang, init_path, strict=False)
    return model


__all__ = ["FinetuneModel", "INITS", "TASKS", "build"]
