"""Device and seeding: CUDA when present, CPU otherwise; nothing else in the package picks a device."""

from __future__ import annotations

import os
import random

import numpy as np


def device(prefer: str | None = None):
    """``torch.device``: $TEXT4POINT_DEVICE or ``prefer`` if given, else CUDA when available, else CPU."""
    import torch

    name = prefer or os.environ.get("TEXT4POINT_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
