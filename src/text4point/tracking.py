"""MLflow tracking: one run per job, params written once, tags to group runs in ``mlflow ui``.

The tracking URI is ``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory
(the project root under Snakemake/DVC). A stage calls :func:`check_reachable` before doing any work,
so an unreachable server stops it at start with one line naming the URI.

This is the only module that talks to MLflow: stages open a run with :func:`run` and write to it with
:func:`log_metrics`, :func:`log_batch`, :func:`log_dict` and :func:`log_artifacts`, which do nothing when no
run is active (a job run with ``track=False``, or a rank other than 0).

Faults: MLflow's HTTP retries are bounded (:data:`HTTP_DEFAULTS`, unless the environment sets them), and a server
lost during a run stops the job with one line naming the URI and what was not logged (:class:`TrackingLost`);
the stage's files are written atomically, so they are complete or absent. Two jobs creating one experiment at once
both land in it (:func:`experiment_id`; a SQLite store is also locked while a run starts,
:func:`_store_lock`). A job that resumes (pre-training from an epoch checkpoint) continues its
MLflow run (``run_id``), so ``mlflow ui`` shows one curve per job; a new run of a job whose earlier attempt was
killed marks that attempt KILLED (tag ``superseded_by``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

from .errors import InputError

DEFAULT_URI = "sqlite:///mlflow.db"
# MLflow's own HTTP settings: 2 retries 1 s apart and a 10 s timeout per request (MLflow's defaults, 7 retries with
# a backoff factor of 2 and 120 s, kept a job ~8 minutes on a dead server).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class TrackingLost(InputError):
    """The tracking store stopped answering during a run (one line: the URI and what was not logged)."""


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
def _lost(what: str) -> Iterator[None]:
    """Turn the store's failures during ``what`` into one :class:`TrackingLost` line."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - MlflowException, requests' and SQLAlchemy's errors alike
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise TrackingLost(f"MLflow tracking store {tracking_uri()} failed while logging {what} ({reason}); "
                           f"the job stopped, its outputs were not written") from None


def experiment_id(name: str) -> str:
    """The id of experiment ``name``, created if missing; safe when several jobs create it at once (the loser of
    the race finds the winner's)."""
    import mlflow

    client = mlflow.tracking.MlflowClient()
    for attempt in range(8):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another job created it first (or the store was busy): look again
            time.sleep(0.1 * (attempt + 1))
    raise TrackingLost(f"MLflow tracking store {tracking_uri()}: could not create or find experiment {name!r}")


def _supersede(client, exp_id: str, key: dict, new_id: str) -> None:
    """Mark earlier RUNNING attempts of the same job (same ``key`` tags) KILLED, linked to the new run."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in key.items())
    for old in client.search_runs([exp_id], filter_string=query, max_results=100):
        if old.info.run_id != new_id and old.info.status == "RUNNING":
            client.set_tag(old.info.run_id, "superseded_by", new_id)
            client.set_terminated(old.info.run_id, status="KILLED")


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, an exclusive lock (``<db>.lock``) around a run's start: MLflow creates the database's
    tables on first use, and several jobs doing that at once fail ("duplicate column name")."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(uri[len("sqlite:///"):] + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def run(stage: str, params: dict, tags: dict | None = None, experiment_prefix: str = "text4point",
        run_name: str | None = None, enabled: bool = True, run_id: str | None = None,
        key: dict | None = None) -> Iterator["object"]:
    """One MLflow run for one job of ``stage``; params are logged once, flattened (``a.b.c``).

    ``run_id``: continue that run (a resumed job) when the store has it. ``key``: the tags that identify the job;
    earlier RUNNING runs with the same ones (killed attempts) are marked KILLED. Yields the active run, or None
    when not ``enabled`` (an untracked job: the log functions do nothing)."""
    if not enabled:
        yield None
        return
    import logging

    import mlflow  # imported lazily: it is slow and only tracked stages need it

    for name in ("mlflow", "alembic"):  # the store's INFO lines ("Creating initial MLflow database tables...")
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = check_reachable()
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    all_tags = {"stage": stage, "git_commit": git_commit(), **(key or {}), **(tags or {})}
    all_tags = {k: str(v) for k, v in all_tags.items()}
    with _lost("the start of the run"), _store_lock(uri):
        mlflow.set_tracking_uri(uri)
        exp_id = experiment_id(f"{experiment_prefix}/{stage}")
        client = mlflow.tracking.MlflowClient()
        resume = None
        if run_id:
            with contextlib.suppress(Exception):
                resume = client.get_run(run_id)
        if resume is not None and resume.info.experiment_id == exp_id:
            active = mlflow.start_run(run_id=run_id, tags={**all_tags, "resumed": "true"})
        else:
            active = mlflow.start_run(experiment_id=exp_id, run_name=run_name or stage, tags=all_tags)
            mlflow.log_params(_flatten(params))
        if key:
            _supersede(client, exp_id, {k: str(v) for k, v in key.items()}, active.info.run_id)
    try:
        yield active
    except BaseException as e:
        with contextlib.suppress(Exception):  # best effort: the store may be the reason
            mlflow.end_run(status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    with _lost("the end of the run"):
        mlflow.end_run()


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

    with _lost(f"metrics {sorted(metrics)[:3]}"):
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()
                            if isinstance(v, (int, float)) and not isinstance(v, bool)}, step=step)


def log_batch(rows: list[tuple[str, float, int]]) -> None:
    """Log ``(key, value, step)`` rows to the active run in batches of at most 900 (MLflow's limit is 1000)."""
    run_ = _active()
    if run_ is None or not rows:
        return
    import mlflow
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client = mlflow.tracking.MlflowClient()
    metrics = [Metric(k, float(v), now, int(s)) for k, v, s in rows]
    with _lost(f"{rows[0][0]!r} at steps {rows[0][2]}..{rows[-1][2]}"):
        for i in range(0, len(metrics), 900):
            client.log_batch(run_.info.run_id, metrics=metrics[i:i + 900])


def log_dict(obj: dict, artifact_file: str) -> None:
    """Write ``obj`` as a JSON artifact of the active run."""
    if _active() is None:
        return
    import mlflow

    with _lost(f"artifact {artifact_file}"):
        mlflow.log_dict(obj, artifact_file)


def log_artifacts(local_dir: str | Path, artifact_path: str) -> None:
    """Copy a directory's files into the active run's artifacts."""
    if _active() is None:
        return
    import mlflow

    with _lost(f"artifacts {artifact_path}/"):
        mlflow.log_artifacts(str(local_dir), artifact_path)
