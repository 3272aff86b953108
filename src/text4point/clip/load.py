"""Load the frozen CLIP model through open_clip, whatever ``clip.pretrained`` names.

``clip.pretrained`` is one of

* ``bootstrap``: the checkpoint that the ``clip_bootstrap`` stage trains offline (passed as ``checkpoint``);
* a path to a local checkpoint file (an open_clip state dict, e.g. a downloaded ``open_clip_pytorch_model.bin``);
* an open_clip pretrained tag (``laion2b_s34b_b79k``, ``openai``, ...), which needs network access or the
  Hugging Face cache.

A checkpoint file may also hold a dense head (``head.DenseHead``, key ``dense_head``; the bootstrap's does):
it is checked against the model and loaded into ``ClipHandle.dense_head``, through which
``dense.dense_features`` then reads the dense features out.

Every file is loaded by ``open_clip.create_model_and_transforms(name, pretrained=<path>)``, i.e. open_clip's own
loading path, so a bootstrap checkpoint is an ordinary open_clip checkpoint. The project's model configs
(``model_configs/*.json``, e.g. ``t4p-tiny``) are registered with open_clip when this module is imported.

Every failure is one line (``InputError``) naming the key and what was expected.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from ..errors import InputError
from ..fsutil import sha256_file
from .head import HEAD_KEY, DenseHead, build_head, head_mismatch

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
if CONFIG_DIR not in [Path(p) for p in open_clip.factory._MODEL_CONFIG_PATHS]:
    open_clip.add_model_config(CONFIG_DIR)

BOOTSTRAP = "bootstrap"
BOOTSTRAP_STAGE = "clip_bootstrap"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence open_clip's own logging (it logs errors to the root logger before raising) and warnings."""
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _short(e: BaseException, limit: int = 240) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- preprocessing


def _as_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # decoded PIL images are read-only; torch wants writable memory
    return torch.as_tensor(images)


def preprocess_images(images: np.ndarray | torch.Tensor, size: tuple[int, int], mean: Sequence[float],
                      std: Sequence[float]) -> torch.Tensor:
    """uint8 RGB ``[B, H, W, 3]`` (or one ``[H, W, 3]``) -> float ``[B, 3, h, w]`` normalized model input.

    A plain (aspect-changing) bilinear resize with antialiasing to ``size = (h, w)``: every colour pixel keeps
    a place in the model's input, so each one has a dense feature (see ``features.grid_geometry``).
    Runs on the tensor's device (no model needed).
    """
    x = _as_tensor(images)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got shape {tuple(x.shape)}")
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    h, w = int(size[0]), int(size[1])
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return normalize_images(x, mean, std)


def normalize_images(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """float ``[B, 3, h, w]`` in [0, 1] -> normalized with the model's per-channel mean and std."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------- the handle


@dataclass
class ClipHandle:
    """A frozen open_clip model with what the stages need around it."""

    model: torch.nn.Module
    name: str
    identity: dict  # {"model", "pretrained", "weights_sha256"}
    tokenizer: Callable
    device: torch.device
    image_size: tuple[int, int]  # the model's native input (h, w)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int  # input pixels per image-tower token (ViT patch; 32 for a ModifiedResNet)
    kind: str  # "vit" | "resnet" | "other"
    extra: dict = field(default_factory=dict)
    dense_head: DenseHead | None = None  # the checkpoint's dense head (None: the MaskCLIP read-out)

    @property
    def cell_size(self) -> int:
        """Input pixels per dense-feature cell: the head's stride, else the patch size."""
        return self.dense_head.stride if self.dense_head is not None else self.patch_size

    def preprocess(self, images: np.ndarray | torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` frames -> normalized ``[B, 3, h, w]`` on the model's device."""
        x = _as_tensor(images).to(self.device)
        return preprocess_images(x, size or self.image_size, self.mean, self.std)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts)).to(self.device)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
        """L2-normalized text embeddings ``[N, d]`` (float32)."""
        out = [self.model.encode_text(self.tokenize(texts[i:i + batch_size]), normalize=True).float()
               for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.embed_dim, device=self.device)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalized global image embeddings ``[B, d]`` of preprocessed images."""
        return self.model.encode_image(images.to(self.device), normalize=True).float()

    @property
    def embed_dim(self) -> int:
        visual = self.model.visual
        return int(getattr(visual, "output_dim", 0) or self.model.text_projection.shape[-1])


def _visual_info(model: torch.nn.Module) -> tuple[str, int]:
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    if isinstance(visual, VisionTransformer):
        return "vit", int(visual.patch_size[0])
    if isinstance(visual, ModifiedResNet):
        return "resnet", 32
    return "other", 0


def wrap_model(model: torch.nn.Module, name: str, identity: dict, device: torch.device | str,
               freeze: bool = True, dense_head: DenseHead | None = None) -> ClipHandle:
    """A ``ClipHandle`` around an open_clip model (loaded, freshly built, or being trained) and its dense head."""
    device = torch.device(device)
    pp = open_clip.get_model_preprocess_cfg(model)
    size = pp.get("size", getattr(model.visual, "image_size", 224))
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    mean = tuple(float(v) for v in pp.get("mean", open_clip.OPENAI_DATASET_MEAN))
    std = tuple(float(v) for v in pp.get("std", open_clip.OPENAI_DATASET_STD))
    if freeze:
        model.eval().requires_grad_(False)
    model.to(device)
    if dense_head is not None:
        if freeze:
            dense_head.eval().requires_grad_(False)
        dense_head.to(device)
    kind, patch = _visual_info(model)
    with _quiet():
        tokenizer = open_clip.get_tokenizer(name)
    return ClipHandle(model=model, name=name, identity=dict(identity), tokenizer=tokenizer, device=device,
                      image_size=(int(size[0]), int(size[1])), mean=mean, std=std, patch_size=patch, kind=kind,
                      dense_head=dense_head)


# ---------------------------------------------------------------- checkpoints


def _read_state_dict(path: Path) -> dict:
    """The checkpoint's tensors, as open_clip reads them (``torch.load(weights_only=True)``)."""
    try:
        state = open_clip.factory.load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling, zip and format errors all mean "not a checkpoint"
        raise InputError(f"clip.pretrained: {path} is not a readable torch checkpoint ({_short(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"clip.pretrained: {path} is not a state dict of tensors")
    return state


def checkpoint_mismatch(path: Path, model: torch.nn.Module) -> str | None:
    """First key or shape in which checkpoint ``path`` does not fit ``model``; None when it fits exactly.

    Applies the same normalizations as open_clip's ``load_checkpoint`` (``module.`` prefixes, third-party
    key conversion, scalar/1-d logit scale) but not its silent positional-embedding resize: a checkpoint
    of another input size is a different model.
    """
    state = _read_state_dict(path)
    with _quiet():
        try:
            from open_clip.convert import convert_state_dict

            state = convert_state_dict(model, state)
        except Exception:  # noqa: BLE001 - keep the keys as they are
            pass
    state = dict(state)
    state.pop("text.transformer.embeddings.position_ids", None)
    ref = model.state_dict()
    if "logit_bias" not in state and "logit_bias" in ref:
        state["logit_bias"] = ref["logit_bias"]
    for key in ref:
        if key not in state:
            return f"missing key {key!r}"
    for key in state:
        if key not in ref:
            return f"unexpected key {key!r}"
    for key, want in ref.items():
        got = state[key]
        same = tuple(got.shape) == tuple(want.shape) or (key in ("logit_scale", "logit_bias")
                                                         and got.numel() == want.numel())
        if not same:
            return f"{key!r} has shape {list(got.shape)} in the checkpoint, {list(want.shape)} in the model"
    return None


def model_names_hint(n: int = 6) -> str:
    names = open_clip.list_models()
    preferred = [m for m in ("t4p-tiny", "ViT-B-16", "ViT-B-32", "ViT-L-14", "RN50") if m in names]
    return ", ".join(preferred[:n])


def check_model_name(name: str) -> str:
    """``name`` as open_clip knows it (OpenAI's ``ViT-B/32`` spelling is ``ViT-B-32``); unknown -> one line."""
    models = open_clip.list_models()
    if name not in models and name.replace("/", "-") in models:
        name = name.replace("/", "-")
    if name not in models:
        raise InputError(f"clip.model: expected one of open_clip's models (e.g. {model_names_hint()}), got {name!r}")
    return name


def build_model(name: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A freshly initialized (random) open_clip model of architecture ``name`` (trainable, on ``device``)."""
    name = check_model_name(name)
    with _quiet():
        try:
            model = open_clip.create_model(name, pretrained=None, device=device)
        except Exception as e:  # noqa: BLE001
            raise InputError(f"clip.model: open_clip cannot build {name!r} ({_short(e)})") from None
    return model


def _load_head(name: str, path: Path, model: torch.nn.Module) -> DenseHead | None:
    """The dense head stored beside the state dict in checkpoint ``path`` (None when there is none)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not a zip-format file: no mmap
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or HEAD_KEY not in ckpt:
        return None
    kind, _ = _visual_info(model)
    embed_dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[-1])
    problem = ("it needs a ViT or ModifiedResNet image tower, the model's is " + type(model.visual).__name__
               if kind == "other" else head_mismatch(ckpt[HEAD_KEY], embed_dim))
    if problem:
        raise InputError(f"clip.pretrained: checkpoint {path}: its dense head does not fit model {name} ({problem})")
    return build_head(ckpt[HEAD_KEY])


def _load_file(name: str, path: Path) -> tuple[torch.nn.Module, DenseHead | None]:
    """Load a local checkpoint through ``open_clip.create_model_and_transforms``, and its dense head if it has
    one; mismatches are one line."""
    err: BaseException | None = None
    model = None
    with _quiet():
        try:
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - open_clip raises RuntimeError, KeyError, ValueError, ...
            err = e
    reference = model if model is not None else build_model(name)
    problem = checkpoint_mismatch(path, reference)
    if problem:
        raise InputError(f"clip.pretrained: checkpoint {path} does not match model {name} ({problem})")
    if err is not None:
        raise InputError(f"clip.pretrained: open_clip could not load checkpoint {path} for model {name} "
                         f"({_short(err)})")
    return model, _load_head(name, path, model)


def _load_tag(name: str, tag: str) -> tuple[torch.nn.Module, str]:
    """Load open_clip's pretrained ``tag``; returns the model and the sha256 of its weights file."""
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"its tags: {', '.join(tags)}" if tags else "open_clip has no pretrained tags for it"
        raise InputError(f"clip.pretrained: {tag!r} is neither 'bootstrap', an existing checkpoint file, nor an "
                         f"open_clip pretrained tag of model {name} ({known})")
    with _quiet():
        try:
            weights = open_clip.download_pretrained(pcfg)
        except Exception as e:  # noqa: BLE001 - hub/offline/HTTP errors
            raise InputError(f"clip.pretrained: cannot fetch open_clip weights {tag!r} of model {name} "
                             f"(offline? {_short(e, 160)}); set clip.pretrained to a local checkpoint path instead"
                             ) from None
        if not weights or not Path(weights).is_file():
            raise InputError(f"clip.pretrained: cannot fetch open_clip weights {tag!r} of model {name}; set "
                             f"clip.pretrained to a local checkpoint path instead")
        try:
            model, _, _ = open_clip.create_model_and_transforms(name, pretrained=tag, device="cpu")
        except Exception as e:  # noqa: BLE001
            raise InputError(f"clip.pretrained: open_clip could not load {tag!r} of model {name} ({_short(e)}); "
                             f"set clip.pretrained to a local checkpoint path instead") from None
    return model, sha256_file(weights)


def load_clip(clip_cfg: dict, device: torch.device | str, checkpoint: Path | None = None) -> ClipHandle:
    """The frozen CLIP of ``clip_cfg`` (``{"model", "pretrained", ...}``) in eval mode on ``device``.

    ``checkpoint``: the bootstrap stage's file, used when ``clip_cfg["pretrained"] == "bootstrap"``.
    """
    name, pretrained = check_model_name(str(clip_cfg["model"])), str(clip_cfg["pretrained"])
    if pretrained == BOOTSTRAP:
        if checkpoint is None:
            raise InputError(f"clip.pretrained: 'bootstrap' needs the checkpoint that the {BOOTSTRAP_STAGE} stage "
                             f"writes (models/clip/bootstrap.pt); none was given")
        path = Path(checkpoint)
        if not path.is_file():
            raise InputError(f"{path}: bootstrap CLIP checkpoint not found (the {BOOTSTRAP_STAGE} stage makes it)")
        (model, head), sha = _load_file(name, path), sha256_file(path)
    elif Path(pretrained).expanduser().is_file():
        path = Path(pretrained).expanduser()
        (model, head), sha = _load_file(name, path), sha256_file(path)
    else:
        (model, sha), head = _load_tag(name, pretrained), None
    identity = {"model": name, "pretrained": pretrained, "weights_sha256": sha}
    return wrap_model(model, name, identity, device, dense_head=head)


def same_weights(a: dict, b: dict) -> bool:
    """Two CLIP identities give the same features: same model and the same weights."""
    return a.get("model") == b.get("model") and a.get("weights_sha256") == b.get("weights_sha256")
