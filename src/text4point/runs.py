"""Where the fine-tuning and pre-training jobs write their metrics, and reading them back (the tables, the
figures and the workflow's target lists share this one convention).

``<finetune root>/<task>/<init>/seed<s>-frac<f>/{metrics.json, predictions.npz}`` per fine-tuning job, and
``<pretrain metrics root>/<variant>.json`` per pre-training job.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError

FINETUNE_PATTERN = "{task}/{init}/seed{seed}-frac{frac}"


def run_path(root: Path, task: str, init: str, seed: int, frac: float) -> Path:
    """The ``metrics.json`` of one fine-tuning job under ``root``."""
    return Path(root) / FINETUNE_PATTERN.format(task=task, init=init, seed=seed, frac=frac) / "metrics.json"


def read_metrics(path: Path) -> dict:
    """A job's metrics JSON; a missing or damaged one is a one-line ``InputError``."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: file not found (run the finetune/pretrain job that writes it)") from None
    except json.JSONDecodeError:
        raise InputError(f"{path}: not valid JSON (rerun the job that writes it)") from None


def collect(ft_root: Path, ft: dict) -> dict:
    """``{(task, init, frac): [metrics of each seed]}`` for every job params name."""
    runs = {}
    for task in ft["tasks"]:
        for init in ft["inits"]:
            for frac in ft["label_fractions"]:
                runs[(task, init, float(frac))] = [read_metrics(run_path(ft_root, task, init, s, frac))
                                                   for s in ft["seeds"]]
    return runs


def collect_seeds(ft_root: Path, tasks, inits, fractions, seeds) -> dict:
    """``{(task, init, frac): {seed: metrics}}`` of the fine-tuning jobs under ``ft_root``."""
    return {(task, init, float(frac)): {int(s): read_metrics(run_path(ft_root, task, init, s, frac)) for s in seeds}
            for task in tasks for init in inits for frac in fractions}


__all__ = ["FINETUNE_PATTERN", "collect", "collect_seeds", "read_metrics", "run_path"]
