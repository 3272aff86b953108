"""Fine-tuning on semantic segmentation, instance segmentation and 3D detection (the ``finetune`` stage).

- :mod:`.data`: voxelized labelled scenes, box-preserving augmentation, the data-efficient scene subsets.
- :mod:`.model`: backbone + task head, and the text4point fine-tuning (learnable prompt, score map, TQM).
- :mod:`.engine`: :func:`run_stage` (training, evaluation with the official metrics, MLflow).
"""

from .engine import FinetuneJob, evaluate, run_stage

__all__ = ["FinetuneJob", "evaluate", "run_stage"]
