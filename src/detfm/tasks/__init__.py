"""Tasks: pretraining objectives and adaptations, each ``task(batch) -> {"loss", "outputs"}``,
registered in :mod:`detfm.tasks.registry`."""

from detfm.tasks.base import Task, TaskOutput
from detfm.tasks.event import EventClassification, EventConfig
from detfm.tasks.heads import AdaptationTask, HeadConfig, PointHead
from detfm.tasks.losses import chamfer_distance, masked_mean, pairwise_sq_dist
from detfm.tasks.mpm import MaskedPointModeling, MPMConfig
from detfm.tasks.particles import Particles, ParticlesConfig
from detfm.tasks.pid import ParticleID, PIDConfig
from detfm.tasks.registry import ObjectiveSpec, TaskSpec, get_objective, get_task, list_objectives, list_tasks
from detfm.tasks.segmentation import SegmentationConfig, SemanticSegmentation

__all__ = ["AdaptationTask", "EventClassification", "EventConfig", "HeadConfig", "MPMConfig", "MaskedPointModeling",
           "ObjectiveSpec", "PIDConfig", "ParticleID", "Particles", "ParticlesConfig", "PointHead",
           "SegmentationConfig", "SemanticSegmentation",
           "Task", "TaskOutput", "TaskSpec", "chamfer_distance", "get_objective", "get_task", "list_objectives",
           "list_tasks", "masked_mean", "pairwise_sq_dist"]
