"""Per-event transforms: ``transform(sample, rng) -> sample``, never modifying the input."""

from detfm.data.transforms.compose import Compose
from detfm.data.transforms.crop import Crop
from detfm.data.transforms.log_energy import LogEnergyNormalize
from detfm.data.transforms.rotation import RandomRotation, random_rotation_matrix, turn_points
from detfm.data.transforms.subsample import Subsample
from detfm.data.transforms.threshold import EnergyThreshold

__all__ = [
    "Compose", "Crop", "EnergyThreshold", "LogEnergyNormalize", "RandomRotation", "Subsample",
    "random_rotation_matrix", "turn_points",
]
