"""The optimiser: AdamW with weight decay on weight matrices only."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from detfm.engine.config import TrainConfig
from detfm.errors import DetfmError


def build_optimizer(task: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of ``task``.

    Weight decay applies to parameters with two or more dimensions (linear and
    convolution weights, embeddings); biases and normalisation scales (1-D) are not
    decayed, as is usual for transformers. A task may exclude more parameters by name
    through a ``no_weight_decay()`` method returning a set of parameter names (the timm
    convention, e.g. for positional embeddings). Frozen parameters
    (``requires_grad=False``, as in a linear probe) are left out entirely.
    """
    skip: set[str] = set()
    hook: Callable[[], set[str]] | None = getattr(task, "no_weight_decay", None)
    if callable(hook):
        skip = set(hook())
    decay, no_decay = [], []
    for name, param in task.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim >= 2 and name not in skip:
            decay.append(param)
        else:
            no_decay.append(param)
    if not decay and not no_decay:
        raise DetfmError("the task has no trainable parameters (all have requires_grad=False)")
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=cfg.betas,
                             eps=cfg.eps)
