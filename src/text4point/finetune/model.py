"""The fine-tuning network: a backbone (from scratch or a pre-training checkpoint) with a task head, and for the
``text4point`` initialisation the paper's language guidance at fine-tuning time.

- ``scratch``, ``pointcontrast``, ``image_contrast``: ``z3D = g3D(f3D(x))`` and the head on ``z3D`` (the plain
  backbone + head), so the comparison separates what pre-training gave the backbone.
- ``text4point``: the learnable prompt ``[p1 … pM][CLS]`` through the frozen CLIP text encoder gives the class
  embeddings ``t`` (``K × d``, :class:`~text4point.clip.prompt.PromptLearner`); ``ĥ3D = FC(h3D)`` at the
  bottleneck; the score map ``s = cos(ĥ3D, t) / τ`` gets an auxiliary cross-entropy against the bottleneck
  points' labels (weight ``finetune.aux_weight``); the TQM queries ``t`` with ``ĥ3D``, and
  ``h3D_aggr = α·h3D + β·FC(h3D_text)`` feeds the decoder, whose ``z3D`` feeds the head. ``FC``, TQM, the
  second ``FC`` and α/β come from the pre-training checkpoint. The paper's ablations switch parts off:
  ``finetune.tqm`` false feeds ``h3D`` to the decoder (no TQM, no aggregation; the score map stays),
  ``finetune.learnable_prompt`` false keeps the context at its initialisation, ``finetune.aux_weight`` 0 drops
  the score map's loss.

The task's head, its forward and its loss come from the task registry (:mod:`text4point.tasks`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .. import tasks
from ..checkpoints import load_weights
from ..errors import InputError
from ..labels import IGNORE_LABEL
from ..models import backbone_from_params
from ..names import INITS, LANGUAGE_INITS
from ..tasks._base import seed_values
from ..tqm import Aggregation, FCExpand, TextQueryingModule

LANGUAGE_PREFIXES = ("fc.", "tqm.", "fc_text.", "aggregation.")


class FinetuneModel(nn.Module):
    """Backbone + head (+ the text4point language modules). See the module docstring.

    Args:
        backbone: a :class:`~text4point.models.Backbone`.
        task: a registered task name (:data:`text4point.tasks.NAMES`).
        num_classes: K, the label set's size.
        ft: the ``finetune`` params section.
        prompt: a :class:`~text4point.clip.prompt.PromptLearner` (``text4point`` only), else None.
        clip_dim: d (``text4point`` only).
        pretrain_params: the ``pretrain`` params section (TQM heads, α, β) for ``text4point``.
    """

    def __init__(self, backbone, task: str, num_classes: int, ft: dict, prompt: nn.Module | None = None,
                 clip_dim: int | None = None, pretrain_params: dict | None = None):
        super().__init__()
        self.backbone, self.task, self.num_classes = backbone, tasks.get(task), int(num_classes)
        self.head = self.task.head(backbone.out_dim, self.num_classes, ft)
        self.prompt = prompt
        self.aux_weight = float(ft["aux_weight"])
        self.temperature = float(ft["temperature"])
        self.fc = self.tqm = self.fc_text = self.aggregation = None
        if prompt is not None:
            pp = pretrain_params
            d_b = backbone.bottleneck_dim
            self.fc = FCExpand(d_b, int(clip_dim))
            if ft["tqm"]:
                self.tqm = TextQueryingModule(int(clip_dim), int(pp["tqm_heads"]))
                self.fc_text = FCExpand(int(clip_dim), d_b)
                self.aggregation = Aggregation(pp["alpha"], pp["beta"], bool(pp["learnable_aggregation"]))
            if not ft["learnable_prompt"]:
                prompt.ctx.requires_grad_(False)

    def forward(self, x: Tensor, pos: Tensor, batch: Tensor, index: Tensor | None = None) -> dict:
        """The task's outputs; ``index`` (training): decode and supervise only these input points (the encoder still
        sees every point); the task may ask for other rows (detection: its seeds)."""
        encoded = self.backbone.encode(x, pos, batch)
        rows = self.task.decode_rows(encoded, index)
        out = {"encoded": encoded, "rows": rows}
        h = encoded.h
        if self.prompt is not None:
            t = self.prompt()
            h_hat = self.fc(h)
            out["scores"] = F.normalize(h_hat, dim=1) @ t.T / self.temperature  # s = ĥ3D·tᵀ, N_b × K
            if self.tqm is not None:
                h_text, _ = self.tqm(h_hat, t.to(h_hat.dtype))
                h = self.aggregation(h, self.fc_text(h_text).to(h.dtype))
        z = self.backbone.decode(encoded, h, rows)
        out.update(self.task.forward(self.head, z, encoded, pos, batch))
        return out

    def losses(self, out: dict, batch) -> dict[str, Tensor]:
        """The task's losses (+ ``aux``, the score map's cross-entropy, for text4point); ``loss`` is the total."""
        terms = self.task.loss(self.head, out, batch)
        if "scores" in out:
            enc = out["encoded"]
            labels = seed_values(batch.semantic, batch.pos, batch.batch, enc.pos_b, enc.batch_b)
            valid = labels != IGNORE_LABEL
            aux = (F.cross_entropy(out["scores"][valid], labels[valid]) if bool(valid.any())
                   else out["scores"].sum() * 0)
            terms["aux"] = aux
            terms["loss"] = terms["loss"] + self.aux_weight * aux
        return terms


def build(cfg: dict, task: str, init: str, num_classes: int, init_checkpoint: dict | None, prompt=None,
          init_path: str = "") -> FinetuneModel:
    """The fine-tuning model with its weights initialised from ``init_checkpoint`` (a ``pretrain`` stage
    checkpoint, ``{"model", "meta"}``) or at random (``scratch``); the backbone's architecture is
    ``pretrain.backbone/width/bottleneck_dim/out_dim/channels/radii/max_neighbors`` and must be the checkpoint's."""
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
        channels = (meta.get("backbone") or {}).get("channels", ["rgb"])
        if list(channels) != list(pc["channels"]):
            raise InputError(f"checkpoint {init_path} was pre-trained on input channels {list(channels)}, but "
                             f"pretrain.channels are {list(pc['channels'])}")
        if meta.get("variant") != init:
            raise InputError(f"checkpoint {init_path} is of pre-training variant {meta.get('variant')!r}, not "
                             f"{init!r}")
        clip_dim = meta.get("clip_dim")
    backbone = backbone_from_params(pc)
    if init in LANGUAGE_INITS and prompt is None:
        raise InputError("finetune init text4point: needs the learnable prompt (the frozen CLIP) - none was given")
    model = FinetuneModel(backbone, task, num_classes, ft, prompt if init in LANGUAGE_INITS else None,
                          clip_dim, pc)
    if init_checkpoint is not None:
        state = init_checkpoint["model"]
        take = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        load_weights(model.backbone, take, init_path)
        if init in LANGUAGE_INITS:
            prefixes = LANGUAGE_PREFIXES if ft["tqm"] else LANGUAGE_PREFIXES[:1]
            lang = {k: v for k, v in state.items() if k.startswith(prefixes)}
            missing = [p for p in prefixes if not any(k.startswith(p) for k in lang)]
            if missing:
                raise InputError(f"checkpoint {init_path}: has no {missing[0].rstrip('.')} weights (is it a "
                                 f"text4point pre-training checkpoint?)")
            load_weights(model, lang, init_path, strict=False)
    return model


__all__ = ["FinetuneModel", "build"]
