"""Learning-rate schedule: linear warm-up then cosine decay to min_lr."""

from __future__ import annotations

import math

import pytest

from detfm.engine import lr_at

KW = {"lr": 1.0, "min_lr": 0.1, "warmup_steps": 10, "steps": 110}


def test_warmup_is_linear_and_reaches_the_peak() -> None:
    assert lr_at(0, **KW) == pytest.approx(0.1)
    assert lr_at(4, **KW) == pytest.approx(0.5)
    assert lr_at(9, **KW) == pytest.approx(1.0)


def test_cosine_after_warmup() -> None:
    assert lr_at(10, **KW) == pytest.approx(1.0)                   # peak at the end of warm-up
    assert lr_at(60, **KW) == pytest.approx(0.55)                  # half-way: mean of lr and min_lr
    assert lr_at(35, **KW) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, **KW) == pytest.approx(0.1)                  # floor at the end ...
    assert lr_at(500, **KW) == pytest.approx(0.1)                  # ... and after it
    decay = [lr_at(s, **KW) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_no_warmup_starts_at_the_peak() -> None:
    assert lr_at(0, lr=3e-4, min_lr=0.0, warmup_steps=0, steps=100) == pytest.approx(3e-4)
    assert lr_at(50, lr=3e-4, min_lr=0.0, warmup_steps=0, steps=100) == pytest.approx(1.5e-4)


def test_negative_step_is_rejected() -> None:
    with pytest.raises(ValueError, match="step must be >= 0"):
        lr_at(-1, **KW)
