"""Checkpoint files: loading (weights only, one-line errors), fitting weights into a model, the weights'
hash, the newest epoch checkpoint of a directory, and every RNG state as tensors and plain types (so that
``torch.load(..., weights_only=True)`` can read it back)."""

from __future__ import annotations

import hashlib
import random
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .fsutil import atomic_path

EPOCH_FILE = re.compile(r"^epoch_(\d{4,})\.pt$")


def weights_sha256(state_dict: dict) -> str:
    """sha256 over the state dict's tensors (names, dtypes, shapes, bytes) in key order."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def rng_state(generator: torch.Generator | None) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, pstate, pgauss = random.getstate()
    state = {
        "python": {"version": int(version), "state": torch.tensor(pstate, dtype=torch.int64),
                   "gauss": None if pgauss is None else float(pgauss)},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": generator.get_state() if generator is not None else None,
    }
    return state


def set_rng_state(state: dict, generator: torch.Generator | None) -> None:
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and state.get("loader") is not None:
        generator.set_state(state["loader"])


def save(obj, path: Path) -> None:
    """``torch.save`` atomically, through a file object: the archive then has the same bytes whatever the file is
    called (torch names the archive's records after a path it is given, and the temporary names differ), and a
    failed write (a full disk) is an ``OSError`` that :func:`~text4point.fsutil.atomic_path` reports in one line."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as e:  # torch's zip writer fails again while closing after the OSError
                cause = e.__context__
                while cause is not None and not isinstance(cause, OSError):
                    cause = cause.__context__
                if cause is None:
                    raise
                raise cause from None


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The epoch checkpoint with the highest epoch number in ``checkpoint_dir`` (None if there is none)."""
    if not Path(checkpoint_dir).is_dir():
        return None
    found = [(int(m.group(1)), p) for p in Path(checkpoint_dir).iterdir() if (m := EPOCH_FILE.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: Path) -> dict:
    """``torch.load`` of a checkpoint on the CPU (weights only); a missing or unreadable file is one line."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: checkpoint not found") from None
    except Exception as e:  # noqa: BLE001 - truncated/corrupt/unpicklable files
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
                         ) from None


def load_weights(module: nn.Module, state: dict, path: Path | str, strict: bool = True) -> None:
    """``module.load_state_dict(state)``; tensors that do not fit are one line naming the first bad key."""
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as e:  # torch lists every mismatch, one per line, under a header line
        lines = [s.strip() for s in str(e).splitlines() if s.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else type(e).__name__)
        raise InputError(f"checkpoint {path}: does not fit this model ({detail[:240]})") from None
