"""Tasks: pretraining objectives and adaptations, each ``task(batch) -> {"loss", "outputs"}``."""

from detfm.tasks.base import Task, TaskOutput
from detfm.tasks.losses import chamfer_distance, masked_mean, pairwise_sq_dist
from detfm.tasks.mpm import MaskedPointModeling, MPMConfig

__all__ = ["MPMConfig", "MaskedPointModeling", "Task", "TaskOutput", "chamfer_distance",
           "masked_mean", "pairwise_sq_dist"]
