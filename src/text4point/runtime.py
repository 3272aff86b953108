"""Devices, CPU threads and seeding: CUDA when present, CPU otherwise; nothing else in the package picks a
device or sets the intra-op thread count."""

from __future__ import annotations

import contextlib
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


def resolve_device(dev=None):
    """``torch.device(dev)``, or :func:`device`'s choice when ``dev`` is None."""
    import torch

    return device() if dev is None else torch.device(dev)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def cpu_threads(dev, n: int = 1):
    """On CPU, run torch with ``n`` intra-op threads (restored afterwards); on CUDA, do nothing.

    The stages' tensors are small (tens of thousands of elements): extra threads gain little, and on a shared
    machine one descheduled worker stalls every op at its barrier; results also stop depending on the thread
    count. Parallelism on CPU comes from DataLoader workers, parallel jobs and torchrun processes.
    """
    import torch

    if torch.device(dev).type != "cpu" or torch.get_num_threads() == n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
