"""Point Transformer V3 (the Panda / Sonata backbone) in plain PyTorch."""

from detfm.models.ptv3.config import PTv3Config
from detfm.models.ptv3.model import PTv3
from detfm.models.ptv3.sizes import PTV3_SIZES, register_all

__all__ = ["PTV3_SIZES", "PTv3", "PTv3Config", "register_all"]
