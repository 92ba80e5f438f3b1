"""Named PTv3 sizes (timm-style) and their registration.

==========  ===================  ======================  ==================================
name        encoder depths       encoder widths          note
==========  ===================  ======================  ==================================
ptv3_micro  1, 1, 1, 2           16, 32, 64, 128         2-core CPU training in minutes
ptv3_small  2, 2, 2, 4, 2        32, 64, 128, 256, 384   a CPU-affordable full hierarchy
ptv3_base   3, 3, 3, 9, 3        48, 96, 192, 384, 512   Panda-Base (encoder only), 90.8 M
==========  ===================  ======================  ==================================

micro and small are narrow at full resolution and put attention where channels are wide
(the sparse convolution moves memory; attention runs best with heads of 32-64 channels);
both have a decoder back to full resolution. micro's full-resolution decoder stage is the
unpooling alone (skip + upsampled coarse features, no block): a block there cost as much as
the rest of the decoder. ``ptv3_base`` is Panda-Base's configuration, so Panda's
checkpoints convert onto it; it also uses Panda's grid (cells of 0.001 in normalised
coordinates, ~2/3 of a voxel) and per-event serialization depth, so converted weights see
the neighbourhoods and windows they were trained with.
"""

from __future__ import annotations

from detfm.models.ptv3.config import PTv3Config
from detfm.models.ptv3.model import PTv3

__all__ = ["PTV3_SIZES", "ensure_registered", "register_all"]

PTV3_SIZES: dict[str, tuple[PTv3Config, str]] = {
    "ptv3_micro": (
        PTv3Config(name="ptv3_micro", enc_depths=(1, 1, 1, 2), enc_channels=(16, 32, 64, 128),
                   enc_num_head=(1, 1, 2, 4), enc_patch_size=(128, 128, 128, 128),
                   dec_depths=(0, 1, 1), dec_channels=(32, 32, 64), dec_num_head=(1, 1, 2),
                   dec_patch_size=(128, 128, 128), drop_path=0.1),
        "PTv3 micro (widths 16-128, 5 encoder + 2 decoder blocks): trains on a 2-core CPU"),
    "ptv3_small": (
        PTv3Config(name="ptv3_small", enc_depths=(2, 2, 2, 4, 2), enc_channels=(32, 64, 128, 256, 384),
                   enc_num_head=(2, 4, 8, 16, 24), enc_patch_size=(256,) * 5,
                   dec_depths=(1, 1, 1, 1), dec_channels=(64, 64, 128, 256),
                   dec_num_head=(4, 4, 8, 16), dec_patch_size=(256,) * 4, drop_path=0.2),
        "PTv3 small (widths 32-384, 12 encoder + 4 decoder blocks)"),
    "ptv3_base": (
        PTv3Config(name="ptv3_base", enc_depths=(3, 3, 3, 9, 3), enc_channels=(48, 96, 192, 384, 512),
                   enc_num_head=(3, 6, 12, 24, 32), enc_patch_size=(256,) * 5,
                   dec_depths=(), dec_channels=(), dec_num_head=(), dec_patch_size=(),
                   orders=("hilbert", "hilbert-trans", "z", "z-trans"), layer_scale=1e-5,
                   drop_path=0.3, mask_token=True, grid_size=0.001, serialization_depth=None),
        ("PTv3 base = Panda-Base encoder (widths 48-512, 21 blocks, 90.8 M); `detfm convert panda` "
         "loads Panda checkpoints into it")),
}


def register_all() -> None:
    """Register every PTv3 size with the model registry (call once)."""
    from detfm.models.registry import register_model

    for name, (cfg, description) in PTV3_SIZES.items():
        register_model(name, cfg, description, PTv3)


def ensure_registered() -> None:
    """Register the PTv3 sizes the registry does not have yet (safe to call repeatedly)."""
    from detfm.models.registry import list_models, register_model

    have = set(list_models("ptv3_*"))
    for name, (cfg, description) in PTV3_SIZES.items():
        if name not in have:
            register_model(name, cfg, description, PTv3)
