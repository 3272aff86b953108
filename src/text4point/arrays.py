"""Checks of numpy arguments shared by the libraries: each returns the converted array or raises a one-line
``ValueError`` (``<argument>: expected <what>, got <what>``)."""

from __future__ import annotations

import numpy as np


def int_vector(x, n: int | None, where: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or (n is not None and len(a) != n):
        want = f"a 1-D array of length {n}" if n is not None else "a 1-D array"
        raise ValueError(f"{where}: expected {want}, got shape {a.shape}")
    if len(a) and not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{where}: expected integer ids, got dtype {a.dtype}")
    return a.astype(np.int64)


def score_vector(x, n: int, where: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1 or len(a) != n:
        raise ValueError(f"{where}: expected a 1-D array of length {n}, got shape {a.shape}")
    if len(a) and not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"{where}: expected numeric scores, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{where}: expected finite scores, got {a[~np.isfinite(a)][:3].tolist()}")
    return a


def boxes_array(x, where: str) -> np.ndarray:
    """``(N, 6)`` float64 boxes ``(cx, cy, cz, dx, dy, dz)``: finite, with non-negative sizes."""
    b = np.asarray(x, dtype=np.float64) if np.size(x) else np.zeros((0, 6))
    if b.ndim != 2 or b.shape[1] != 6:
        raise ValueError(f"{where}: expected an (N, 6) array of boxes (cx, cy, cz, dx, dy, dz), got shape {b.shape}")
    if not np.isfinite(b).all() or (b[:, 3:] < 0).any():
        raise ValueError(f"{where}: expected finite boxes with non-negative sizes, got a non-finite value or a "
                         f"negative size")
    return b
