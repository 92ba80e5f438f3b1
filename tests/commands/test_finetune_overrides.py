"""`detfm finetune --model NAME`: which of the config's architecture overrides reach the model."""

from __future__ import annotations

import pytest

from detfm.commands.finetune import _overrides_for
from detfm.errors import ConfigError
from detfm.models import model_config
from detfm.recipes.adapt import CPU_OVERRIDES

FIVE_STAGES = {"enc_depths": [1, 1, 2, 2, 2], "enc_channels": [16, 32, 64, 128, 256],
               "enc_num_head": [1, 1, 2, 4, 8], "enc_patch_size": [128] * 5, "dec_depths": [0, 1, 1, 1],
               "dec_channels": [32, 32, 64, 128], "dec_num_head": [1, 1, 2, 4], "dec_patch_size": [128] * 4}


def test_per_stage_lists_that_add_a_stage_are_kept_together() -> None:
    """Each list alone would not fit the 4-stage model; together they do, and they all reach it.
    The patch transformer's CPU defaults (no such fields here) are left out."""
    kept = _overrides_for("ptv3_micro", {**CPU_OVERRIDES, **FIVE_STAGES, "drop_path": 0.0})
    assert kept == {**FIVE_STAGES, "drop_path": 0.0}
    cfg = model_config("ptv3_micro", **kept)
    assert cfg.enc_depths == (1, 1, 2, 2, 2) and cfg.num_stages == 5


def test_overrides_that_do_not_fit_the_model_are_an_error_not_dropped() -> None:
    with pytest.raises(ConfigError, match="enc_channels has 4 entries, enc_depths 5"):
        _overrides_for("ptv3_micro", {"enc_depths": [1, 1, 2, 2, 2]})
    with pytest.raises(ConfigError, match="drop_path"):
        _overrides_for("ptv3_micro", {"drop_path": 1.5})
