"""Pre-training of Text4Point and its baselines (the ``pretrain`` stage).

- :mod:`.data`: :class:`FrameDataset` (pixel <-> point matches with CLIP's dense features, for ``text4point``
  and ``image_contrast``) and its collate function; :mod:`.pairs`: :class:`PairDataset` (point <-> point
  matches of overlapping frames, for ``pointcontrast``).
- :mod:`.model`: :class:`Text4PointModel` (backbone, ``FC``, TQM, ``α/β`` aggregation, ``g2D``, losses).
- :mod:`.engine`: :func:`run_stage` of a :class:`PretrainJob` (training with :mod:`text4point.training`, epoch
  checkpoints and resume, DDP, MLflow, final checkpoint).
- :mod:`.zeroshot`: zero-shot segmentation mIoU of the val scenes against the class-name text embeddings.
"""

from .data import FrameBatch, FrameDataset
from .engine import PretrainJob, run_stage
from .model import Text4PointModel
from .pairs import PairBatch, PairDataset
from .zeroshot import evaluate as zeroshot_evaluate

__all__ = ["FrameBatch", "FrameDataset", "PairBatch", "PairDataset", "PretrainJob", "Text4PointModel", "run_stage",
           "zeroshot_evaluate"]
