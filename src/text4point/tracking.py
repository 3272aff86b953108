"""MLflow tracking: one run per job, params written once, tags to group runs in ``mlflow ui``.

The tracking URI is ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory
(the project root under Snakemake/DVC). A stage calls :func:`check_reachable` before doing any work,
so an unreachable server stops it at start with one line naming the URI.

This is the only module that talks to MLflow: stages open a run with :func:`run` and write to it with
:func:`log_metrics`, :func:`log_batch`, :func:`log_dict` and :func:`log_artifacts`, which do nothing when no
run is active (a job run with ``track=False``, or a rank other than 0).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from .errors import InputError

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> str:
    """Fail fast, in one line, when the tracking store cannot be used; return the URI."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status != 200:
                    raise InputError(f"MLflow tracking server {uri} answered /health with HTTP {r.status}")
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise InputError(f"MLflow tracking server {uri} is unreachable ({reason}); "
                             f"start it or set MLFLOW_TRACKING_URI") from None
    elif uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        parent = db.parent if str(db.parent) else Path(".")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise InputError(f"MLflow tracking store {uri}: directory {parent} does not exist or is not writable")
    return uri


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flatten(d: dict, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = str(v)[:6000]
    return out


@contextlib.contextmanager
def run(stage: str, params: dict, tags: dict | None = None, experiment_prefix: str = "text4point",
        run_name: str | None = None, enabled: bool = True) -> Iterator["object"]:
    """Start one MLflow run for one job of ``stage``; params are logged once, flattened (``a.b.c``).

    Yields the active run, or None when not ``enabled`` (an untracked job: the log functions do nothing)."""
    if not enabled:
        yield None
        return
    import mlflow  # imported lazily: it is slow and only tracked stages need it

    uri = check_reachable()
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(f"{experiment_prefix}/{stage}")
    all_tags = {"stage": stage, "git_commit": git_commit()}
    all_tags.update(tags or {})
    with mlflow.start_run(run_name=run_name or stage, tags={k: str(v) for k, v in all_tags.items()}) as active:
        mlflow.log_params(_flatten(params))
        yield active


def _active():
    import sys

    if "mlflow" not in sys.modules:  # nothing was ever started in this process
        return None
    import mlflow

    return mlflow.active_run()


def log_metrics(metrics: dict, step: int | None = None) -> None:
    """Log the numeric values of ``metrics`` (booleans, None and non-numbers are left out) to the active run."""
    if _active() is None:
        return
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)


def log_batch(rows: list[tuple[str, float, int]]) -> None:
    """Log ``(key, value, step)`` rows to the active run in batches of at most 900 (MLflow's limit is 1000)."""
    run_ = _active()
    if run_ is None or not rows:
        return
    import time

    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client = mlflow.tracking.MlflowClient()
    metrics = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
    for i in range(0, len(metrics), 900):
        client.log_batch(run_.info.run_id, metrics=metrics[i:i + 900])


def log_dict(obj: dict, artifact_file: str) -> None:
    """Write ``obj`` as a JSON artifact of the active run."""
    if _active() is None:
        return
    import mlflow

    mlflow.log_dict(obj, artifact_file)


def log_artifacts(local_dir: str | Path, artifact_path: str) -> None:
    """Copy a directory's files into the active run's artifacts."""
    if _active() is None:
        return
    import mlflow

    mlflow.log_artifacts(str(local_dir), artifact_path)
