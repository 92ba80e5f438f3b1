"""Tasks: pretraining objectives and adaptations, each ``task(batch) -> {"loss", "outputs"}``."""

from detfm.tasks.base import Task, TaskOutput
from detfm.tasks.event import EventClassification, EventConfig
from detfm.tasks.heads import AdaptationTask, SegmentationHead, interpolate, knn_interpolation
from detfm.tasks.losses import chamfer_distance, masked_mean, pairwise_sq_dist
from detfm.tasks.mpm import MaskedPointModeling, MPMConfig
from detfm.tasks.pid import ParticleID, PIDConfig
from detfm.tasks.segmentation import SegmentationConfig, SemanticSegmentation

__all__ = ["AdaptationTask", "EventClassification", "EventConfig", "MPMConfig", "MaskedPointModeling", "PIDConfig", "ParticleID",
           "SegmentationConfig", "SegmentationHead", "SemanticSegmentation", "Task", "TaskOutput",
           "chamfer_distance", "interpolate", "knn_interpolation", "masked_mean", "pairwise_sq_dist"]
