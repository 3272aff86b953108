"""Fault-injection points for the SIGKILL harness (``tests/test_faults.py``).

A stage calls :func:`point` at places where a crash is interesting (a scene half written, a checkpoint
between epochs, a table written and the next one not). Nothing happens unless ``$TEXT4POINT_FAULT`` names
that point; then the process writes ``$TEXT4POINT_FAULT_DIR/<name>`` and waits, and the harness, seeing the
file, kills the whole pipeline (Snakemake and every job) with SIGKILL. The harness therefore kills at a known
place and from outside, as a crash or an out-of-memory kill would, and the code never cleans up after itself.

``$TEXT4POINT_FAULT`` is ``<name>`` or ``<name>@<key>=<value>``, e.g. ``pretrain.step@epoch=2`` (the first
step of the second epoch); every keyword given to :func:`point` can be matched. With
``$TEXT4POINT_FAULT_ACTION=sigterm`` the process instead sends itself SIGTERM there and goes on (what Slurm does
before a preemption, at a known place); with ``wait`` it waits until the harness creates ``<marker>.go`` and then
goes on (so the harness can break something meanwhile, e.g. stop the tracking server).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

ENV, DIR_ENV, ACTION_ENV = "TEXT4POINT_FAULT", "TEXT4POINT_FAULT_DIR", "TEXT4POINT_FAULT_ACTION"


def point(name: str, **where) -> None:
    """Stop here (wait to be killed) when ``$TEXT4POINT_FAULT`` names this point; otherwise return at once."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want, _, cond = spec.partition("@")
    if want != name:
        return
    if cond:
        key, _, value = cond.partition("=")
        if str(where.get(key)) != value:
            return
    marker = Path(os.environ.get(DIR_ENV, ".")) / name
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{os.getpid()} {where}\n")
    action = os.environ.get(ACTION_ENV)
    if action == "sigterm":
        import signal

        os.kill(os.getpid(), signal.SIGTERM)
        return
    go = marker.with_name(marker.name + ".go")
    # the harness kills the pipeline (or lets it go on); a forgotten harness shows up as a hang, not a clean exit
    while not (action == "wait" and go.exists()):
        time.sleep(0.5)


__all__ = ["point"]
