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

    Per-parameter learning rates (e.g. layer-wise decay when fine-tuning): a task may
    have a ``param_lr_scales()`` method returning ``{parameter name: multiplier}``
    (missing names: 1). Parameters are then grouped by (weight decay, multiplier); each
    group carries its multiplier as ``group["lr_scale"]`` and the training loop sets its
    rate to ``schedule lr * lr_scale`` at every step.
    """
    skip: set[str] = set()
    hook: Callable[[], set[str]] | None = getattr(task, "no_weight_decay", None)
    if callable(hook):
        skip = set(hook())
    scales: dict[str, float] = {}
    scale_hook: Callable[[], dict[str, float]] | None = getattr(task, "param_lr_scales", None)
    if callable(scale_hook):
        scales = {name: float(v) for name, v in scale_hook().items()}
        bad = {name: v for name, v in scales.items() if not (v > 0 and v == v)}
        if bad:
            raise DetfmError(f"learning-rate multipliers must be > 0, got {bad}")
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, param in task.named_parameters():
        if not param.requires_grad:
            continue
        decayed = param.ndim >= 2 and name not in skip
        groups.setdefault((decayed, scales.get(name, 1.0)), []).append(param)
    if not groups:
        raise DetfmError("the task has no trainable parameters (all have requires_grad=False)")
    # Decayed groups first, then by falling multiplier: a fixed order, so checkpoints line up
    # (without multipliers: the two groups [decayed, not decayed]).
    order = sorted(groups, key=lambda key: (not key[0], -key[1]))
    return torch.optim.AdamW([{"params": groups[key], "weight_decay": cfg.weight_decay if key[0] else 0.0,
                               "lr": cfg.lr * key[1], "lr_scale": key[1]} for key in order],
                             lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
