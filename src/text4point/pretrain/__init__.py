"""Pre-training of Text4Point and its baselines (the ``pretrain`` stage).

- :mod:`.data`: :class:`FrameDataset` (pixel <-> point matches with CLIP's dense features, for ``text4point``
  and ``image_contrast``), :class:`PairDataset` (point <-> point matches of overlapping frames, for
  ``pointcontrast``), their collate functions and :func:`make_loader`.
- :mod:`.model`: :class:`Text4PointModel` (backbone, ``FC``, TQM, ``α/β`` aggregation, ``g2D``, losses).
- :mod:`.engine`: :func:`run_stage` (training, epoch checkpoints and resume, DDP, MLflow, final checkpoint).
- :mod:`.zeroshot`: zero-shot segmentation mIoU of the val scenes against the class-name text embeddings.
"""

from .data import FrameBatch, FrameDataset, PairBatch, PairDataset, make_loader
from .engine import TrainingDiverged, run_stage
from .model import Text4PointModel
from .zeroshot import evaluate as zeroshot_evaluate

__all__ = ["FrameBatch", "FrameDataset", "PairBatch", "PairDataset", "Text4PointModel", "TrainingDiverged",
           "make_loader", "run_stage", "zeroshot_evaluate"]
