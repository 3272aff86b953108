"""The downstream tasks: one module per task (``semseg``, ``insseg``, ``det``), each holding its head, loss,
decoding, scoring with the official metric, metric names and figure drawer (:class:`~._base.Task`).

:func:`get` returns a task by name (importing its module on first use); :data:`NAMES` are the registered tasks
(:func:`text4point.names.task_names`: every public module of this package), which the fine-tuning stage, the
tables, the figures, the params schema's enum and the Snakemake wildcard constraints all read. Adding a fourth
task means adding one file here.
"""

from __future__ import annotations

import importlib

from ..names import task_names

NAMES = task_names()


def get(name: str):
    """The :class:`~._base.Task` registered as ``name`` (a one-line ``InputError`` for an unknown one)."""
    if name not in NAMES:
        from ..errors import InputError

        raise InputError(f"finetune.tasks: expected one of {list(NAMES)}, got {name!r}")
    return importlib.import_module(f"{__name__}.{name}").TASK


__all__ = ["NAMES", "get"]
