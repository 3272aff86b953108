"""Matplotlib helpers shared by the figure-drawing stages (``show``, ``figures``) and ``pretrain.query``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .fsutil import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def class_colours(k: int) -> np.ndarray:
    """``[k, 3]`` RGB colours in [0, 1], one per class (matplotlib's tab20, cycled)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return np.array([cmap(i % 20)[:3] for i in range(k)])


def save_png(fig, path: Path) -> None:
    """Write ``fig`` as a PNG, atomically."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
