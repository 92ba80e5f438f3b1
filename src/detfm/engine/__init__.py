"""One training loop for every task: devices, DDP, checkpoints, logging, progress.

``train(task, dataset, collate, cfg, out_dir)`` runs any task (a module whose forward
returns ``{"loss", "outputs"}``) with AdamW, warm-up + cosine schedule, accumulation,
clipping, bf16 autocast on GPU, DDP under ``torchrun``, and pickle-free checkpoints that
resume bit for bit. See :mod:`detfm.engine.loop` for the run directory layout.
"""

from detfm.engine.checkpoint import Checkpoint, load_weights, read_checkpoint, save_weights, stored_tensor_names
from detfm.engine.config import (RESUME_FREE_FIELDS, TrainConfig, config_hash, config_to_dict, load_config,
                                 save_config)
from detfm.engine.distributed import DistInfo, init_distributed, pick_device, shutdown_distributed
from detfm.engine.loop import Callback, TrainResult, train
from detfm.engine.optim import build_optimizer
from detfm.engine.progress import read_metrics
from detfm.engine.sampler import BatchPlan, epoch_permutation
from detfm.engine.schedule import lr_at

__all__ = [
    "RESUME_FREE_FIELDS", "BatchPlan", "Callback", "Checkpoint", "DistInfo", "TrainConfig", "TrainResult",
    "build_optimizer", "config_hash", "config_to_dict", "epoch_permutation", "init_distributed",
    "load_config", "load_weights", "lr_at", "pick_device", "read_checkpoint", "read_metrics", "save_config",
    "save_weights", "shutdown_distributed", "stored_tensor_names", "train",
]
