"""Map a Panda / pimm PTv3 checkpoint (Panda-Base, "PT-v3m2") onto ``ptv3_base``.

``ptv3_base`` is built with the reference's parameter names and layouts (the fact sheet
``shared/reference/panda_base_params.tsv``: 441 tensors, 90 758 832 parameters), so the
mapping is one-to-one by name; what this module adds is reading the published formats
safely and refusing anything that does not fit, naming the tensor:

* a Hugging Face folder (``model.safetensors`` and optionally ``config.json``), a
  ``.safetensors`` file, or a pickled ``.pth`` read only through
  ``torch.load(weights_only=True)`` (no arbitrary code);
* the backbone's tensors are found under a prefix (``""``, ``backbone.``, ``module.``,
  ``student.backbone.``, ...); tensors outside it (heads, a teacher) are left out and listed;
* every expected tensor must be present with the expected shape and finite values; any
  other tensor under the prefix is an error.

Kernel layout: ``...cpe.0.weight`` is (out, k0, k1, k2, in) in both, and both read voxel
``p + (k0 - 1, k1 - 1, k2 - 1)`` along (x, y, z) (conv3d's cross-correlation convention),
so the sparse-convolution kernels are copied unchanged.

What is not reproduced: Panda's data pipeline (its grid sampling with grid size 0.001 in
normalised coordinates and per-event minimum shift, and its log-energy transform); features
match the reference only for inputs prepared the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detfm.errors import DataFormatError
from detfm.models.ptv3.config import PTv3Config
from detfm.models.ptv3.model import PTv3
from detfm.models.ptv3.sizes import PTV3_SIZES

__all__ = [
    "PANDA_PREFIXES",
    "ConversionReport",
    "check_panda_config",
    "convert_checkpoint",
    "convert_panda",
    "convert_panda_state",
    "expected_layout",
    "panda_base_config",
    "panda_to_detfm_name",
    "read_checkpoint",
]

# Prefixes the backbone sits under in the checkpoints pimm / Sonata / Panda write, tried in order.
PANDA_PREFIXES = ("", "backbone.", "module.", "module.backbone.", "model.", "model.backbone.",
                  "student.backbone.", "module.student.backbone.", "teacher.backbone.")
_ANCHOR = "embedding.stem.linear.weight"
# config.json keys of the reference and the PTv3Config field each must equal.
_CONFIG_KEYS = {"in_channels": None, "enc_depths": "enc_depths", "enc_channels": "enc_channels",
                "enc_num_head": "enc_num_head", "enc_patch_size": "enc_patch_size", "order": "orders",
                "mlp_ratio": "mlp_ratio", "qkv_bias": "qkv_bias", "enc_mode": None}


def panda_base_config() -> PTv3Config:
    """The ``ptv3_base`` config (Panda-Base's architecture)."""
    return PTV3_SIZES["ptv3_base"][0]


def panda_to_detfm_name(name: str) -> str:
    """detfm's name of a reference parameter (identical by construction; kept as the one
    place a future rename would go)."""
    return name


def expected_layout(cfg: PTv3Config | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of ``ptv3_base`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = PTv3(cfg or panda_base_config())
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


@dataclass
class ConversionReport:
    """What a conversion did, for the run's records."""

    source: str
    prefix: str
    tensors: int
    parameters: int
    ignored: list[str] = field(default_factory=list)
    cast_from: dict[str, str] = field(default_factory=dict)
    config_checked: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "prefix": self.prefix, "tensors": self.tensors,
                "parameters": self.parameters, "ignored": self.ignored, "cast_from": self.cast_from,
                "config_checked": self.config_checked}


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded ``.pth`` (a bare state dict or one under a key)."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        for key in ("state_dict", "model", "model_state_dict", "module", "net"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
    raise DataFormatError("no state dict found (expected a mapping of tensors, or one under "
                          "'state_dict' or 'model')", path=str(path))


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """Tensors and (for a Hugging Face folder) the ``config.json`` of a checkpoint."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    config: dict[str, Any] | None = None
    if p.is_dir():
        weights = p / "model.safetensors"
        if not weights.is_file():
            raise DataFormatError("a checkpoint folder must hold model.safetensors", path=str(p))
        if (p / "config.json").is_file():
            try:
                loaded = json.loads((p / "config.json").read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataFormatError(f"config.json is not valid JSON ({exc})", path=str(p)) from None
            if not isinstance(loaded, dict):
                raise DataFormatError("config.json must hold a JSON object", path=str(p))
            config = loaded
        p = weights
    elif not p.is_file():
        raise DataFormatError("no such checkpoint file or folder", path=str(p))
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p), device="cpu"), config
        except (SafetensorError, OSError) as exc:
            raise DataFormatError(f"not a valid safetensors file ({exc})", path=str(p)) from None
    if p.suffix in (".pth", ".pt", ".ckpt", ".bin"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling refusal is the user's file
            raise DataFormatError(f"cannot be read with torch.load(weights_only=True) "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  f"only plain tensor checkpoints are accepted", path=str(p)) from None
        return _unwrap(obj, p), config
    raise DataFormatError(f"unknown checkpoint format '{p.suffix}'; give a Hugging Face folder, a "
                          f".safetensors file or a .pth file", path=str(p))


def _find_prefix(state: Mapping[str, torch.Tensor], path: str) -> str:
    found = [pre for pre in PANDA_PREFIXES if pre + _ANCHOR in state]
    if found:
        return found[0]
    others = sorted(k[: -len(_ANCHOR)] for k in state if k.endswith(_ANCHOR))
    if len(others) == 1:
        return others[0]
    raise DataFormatError(f"no Panda/PTv3 backbone found: no tensor named '{_ANCHOR}' under any "
                          f"prefix ({len(state)} tensors, e.g. {sorted(state)[:3]})", path=path)


def check_panda_config(config: Mapping[str, Any], cfg: PTv3Config, path: str) -> list[str]:
    """Compare the architecture keys a ``config.json`` gives with ``cfg``; returns those checked."""
    sections = [config] + [config[k] for k in ("backbone", "model") if isinstance(config.get(k), Mapping)]
    checked = []
    for section in sections:
        for key, attr in _CONFIG_KEYS.items():
            if key not in section:
                continue
            value = section[key]
            if key == "in_channels":
                want: Any = cfg.stem_channels
            elif key == "enc_mode":
                want = not cfg.dec_depths
            else:
                want = getattr(cfg, attr or key)
            got = list(value) if isinstance(value, (list, tuple)) else value
            want = list(want) if isinstance(want, tuple) else want
            if got != want:
                raise DataFormatError(f"config.json sets {key}={value!r}, but ptv3_base (Panda-Base) has "
                                      f"{want!r}: this is not a Panda-Base checkpoint", path=path, field=key)
            checked.append(key)
    return sorted(set(checked))


def convert_panda_state(state: Mapping[str, torch.Tensor], *, source: str = "<state dict>",
                        prefix: str | None = None, cfg: PTv3Config | None = None
                        ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """detfm ``ptv3_base`` state dict from a reference state dict; every tensor checked.

    Raises :class:`DataFormatError` naming the first missing, extra, mis-shaped, non-float or
    non-finite tensor.
    """
    cfg = cfg or panda_base_config()
    expected = expected_layout(cfg)
    prefix = _find_prefix(state, source) if prefix is None else prefix
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    ignored = sorted(k for k in state if not k.startswith(prefix))
    by_detfm = {panda_to_detfm_name(k): (k, v) for k, v in own.items()}
    missing = [n for n in expected if n not in by_detfm]
    if missing:
        raise DataFormatError(f"tensor '{prefix}{missing[0]}' of Panda-Base is missing from the checkpoint"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                              path=source, field=prefix + missing[0])
    extra = sorted(k for n, (k, _) in by_detfm.items() if n not in expected)
    if extra:
        raise DataFormatError(f"tensor '{prefix}{extra[0]}' is not part of Panda-Base"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
                              + "; is this another model or size?", path=source, field=prefix + extra[0])
    out: dict[str, torch.Tensor] = {}
    cast: dict[str, str] = {}
    for name, shape in expected.items():
        ref_name, tensor = by_detfm[name]
        if tuple(tensor.shape) != shape:
            raise DataFormatError(f"tensor '{prefix}{ref_name}' has shape {tuple(tensor.shape)}, Panda-Base "
                                  f"expects {shape}", path=source, field=prefix + ref_name)
        if not tensor.is_floating_point():
            raise DataFormatError(f"tensor '{prefix}{ref_name}' has dtype {tensor.dtype}, expected floats",
                                  path=source, field=prefix + ref_name)
        if tensor.dtype != torch.float32:
            cast[name] = str(tensor.dtype).removeprefix("torch.")
        value = tensor.detach().to(torch.float32).contiguous()
        if not bool(torch.isfinite(value).all()):
            raise DataFormatError(f"tensor '{prefix}{ref_name}' holds NaN or infinite values",
                                  path=source, field=prefix + ref_name)
        out[name] = value
    report = ConversionReport(source=source, prefix=prefix, tensors=len(out),
                              parameters=sum(t.numel() for t in out.values()), ignored=ignored, cast_from=cast)
    return out, report


def convert_checkpoint(path: str | os.PathLike[str], *, prefix: str | None = None
                       ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """The checked ``ptv3_base`` state dict of the Panda checkpoint at ``path`` (its
    ``config.json``, when the folder has one, checked against Panda-Base too)."""
    cfg = panda_base_config()
    state, config = read_checkpoint(path)
    converted, report = convert_panda_state(state, source=str(path), prefix=prefix, cfg=cfg)
    if config is not None:
        report.config_checked = check_panda_config(config, cfg, str(path))
    return converted, report


def convert_panda(path: str | os.PathLike[str], *, prefix: str | None = None
                  ) -> tuple[PTv3, ConversionReport]:
    """``ptv3_base`` with the weights of the Panda checkpoint at ``path``, in eval mode."""
    converted, report = convert_checkpoint(path, prefix=prefix)
    model = PTv3(panda_base_config())
    model.load_state_dict(converted, strict=True)
    return model.eval(), report
