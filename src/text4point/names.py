"""The names every layer shares, defined once: the downstream tasks, the pre-training variants and the
fine-tuning initialisations.

Every other place reads them from here: the params schema's enums (:mod:`text4point.params`), the Snakemake
wildcard constraints (``workflow/rules/common.smk``), the task registry (:mod:`text4point.tasks`), the
pre-training and fine-tuning stages and the tables.

A task is a module of the ``text4point.tasks`` package (``<name>.py``, not starting with ``_``): adding a task
means adding one file there. Its name is found here without importing it (this module imports nothing).

- ``text4point``: the paper (L_e + L_d with the Text Querying Module and the α·h3D + β·ĥ3D_text aggregation);
- ``image_contrast``: the same pixel↔point losses without the TQM (what the text adds is the difference);
- ``pointcontrast``: PointContrast's point↔point InfoNCE between overlapping frames (no images, no text).

A fine-tuning initialisation is ``scratch`` or a variant's checkpoint.
"""

from __future__ import annotations

import pkgutil
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


def task_names() -> tuple[str, ...]:
    """The registered downstream tasks: the public modules of ``text4point.tasks``, sorted."""
    return tuple(sorted(m.name for m in pkgutil.iter_modules([str(TASKS_DIR)]) if not m.name.startswith("_")))


IMAGE_VARIANTS = ("text4point", "image_contrast")  # trained against CLIP's dense image features
PAIR_VARIANTS = ("pointcontrast",)                 # trained on pairs of overlapping frames
VARIANTS = IMAGE_VARIANTS + PAIR_VARIANTS
SCRATCH = "scratch"
FRAME_SOURCES = ("world", "scannet", "sunrgbd")  # datasets with RGB-D frames (S3DIS has none): pre-training's
INITS = (SCRATCH,) + VARIANTS
LANGUAGE_INITS = ("text4point",)  # fine-tuned with the learnable prompt, the score map and the TQM

__all__ = ["IMAGE_VARIANTS", "INITS", "LANGUAGE_INITS", "PAIR_VARIANTS", "SCRATCH", "VARIANTS", "task_names"]
