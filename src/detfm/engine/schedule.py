"""Learning-rate schedule: linear warm-up, then cosine decay to a floor.

The rate is a pure function of the step, so a resumed run needs no scheduler state
beyond the step number stored in its checkpoint.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, steps: int) -> float:
    """Learning rate for optimiser step ``step`` (0-based) of a ``steps``-step run.

    Warm-up rises linearly from ``lr / warmup_steps`` (step 0) to ``lr`` (step
    ``warmup_steps - 1``); the rate then follows half a cosine from ``lr`` at step
    ``warmup_steps`` towards ``min_lr``, reached at step ``steps`` (and held after it).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
