"""Lazy datasets over event files, per-event transforms, and packed batches."""

from detfm.data.batch import PackedBatch
from detfm.data.collate import (
    LOG_ENERGY_EPS_MEV,
    LOG_ENERGY_MAX_MEV,
    EpochSampler,
    collate,
    log_energy_feature,
    make_loader,
)
from detfm.data.datasets import DEFAULT_DATASET, DatasetSpec, get_dataset, list_datasets, register_dataset
from detfm.data.dataset import EventDataset, Sample, Transform, split_indices
from detfm.data.summary import FileSummary, format_summary, summarize
from detfm.data.transforms import (
    Compose,
    Crop,
    EnergyThreshold,
    LogEnergyNormalize,
    RandomRotation,
    Subsample,
)

__all__ = [
    "DEFAULT_DATASET", "DatasetSpec", "get_dataset", "list_datasets", "register_dataset",
    "LOG_ENERGY_EPS_MEV", "LOG_ENERGY_MAX_MEV", "Compose", "Crop", "EnergyThreshold",
    "EpochSampler", "EventDataset", "FileSummary", "LogEnergyNormalize", "PackedBatch",
    "RandomRotation", "Sample", "Subsample", "Transform", "collate", "format_summary",
    "log_energy_feature", "make_loader", "split_indices", "summarize",
]
