"""The training configuration, and YAML helpers for any frozen-dataclass config.

``load_config(cls, path_or_dict)`` builds a (possibly nested) dataclass from YAML or a
dict and checks every key and type on the way, so a typo such as ``lrr: 1e-3`` fails with
``unknown key 'lrr' in TrainConfig; did you mean 'lr'?`` instead of being silently
ignored. ``save_config`` writes the same YAML back atomically; ``config_hash`` is what a
resumed run compares against its checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from detfm.errors import ConfigError
from detfm.io import atomic_write_text

T = TypeVar("T")

Precision = Literal["auto", "fp32", "bf16"]

# Fields that do not change the trained weights: a run may be resumed with other values.
RESUME_FREE_FIELDS: frozenset[str] = frozenset(
    {"checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "progress", "device",
     "time_limit_s"})

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class TrainConfig:
    """How to train: optimisation, schedule, data order, checkpoints and logging.

    ``batch_size`` is the *global* number of events per optimiser step: it is split over
    ``accum_steps`` micro-batches and over the DDP ranks, so the same config gives the
    same optimisation on 1 or N processes. ``steps`` counts optimiser steps.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 3e-4
    # AdamW betas and weight decay of MAE pre-training (He et al. 2021, "Masked
    # Autoencoders Are Scalable Vision Learners", Table 8: beta=(0.9, 0.95), wd 0.05).
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    warmup_steps: int = 100
    min_lr: float = 1e-6
    grad_clip: float = 1.0          # max global gradient norm; 0 disables clipping
    accum_steps: int = 1            # micro-batches per optimiser step
    seed: int = 0
    checkpoint_every: int = 500     # optimiser steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2       # most recent checkpoints/step_N kept; 0 keeps all
    log_every: int = 10             # optimiser steps between metrics.jsonl lines
    num_workers: int = 0            # DataLoader worker processes
    precision: Precision = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    find_unused_parameters: bool = False  # DDP: set when some parameters get no gradient
    progress: bool = True           # tqdm bar on rank 0
    # Wall-clock budget of one call in seconds (0: none). When it is spent the run stops after
    # the current step, saves a checkpoint and the weights reached, and can be resumed later
    # with --resume (and a new budget); the schedules keep counting in steps.
    time_limit_s: float = 0.0

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "accum_steps", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = ("weight_decay", "warmup_steps", "min_lr", "grad_clip", "seed",
                        "checkpoint_every", "keep_checkpoints", "num_workers", "eps", "time_limit_s")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.min_lr > self.lr:
            raise ConfigError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size ({self.batch_size}) must be divisible by "
                              f"accum_steps ({self.accum_steps})")
        if self.precision not in get_args(Precision):
            raise ConfigError(f"precision must be one of {', '.join(get_args(Precision))}, "
                              f"got {self.precision!r}")
        if not _DEVICE_RE.match(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


# ----------------------------------------------------------------------------- to plain data
def config_to_dict(cfg: Any) -> dict[str, Any]:
    """The dataclass ``cfg`` as plain YAML/JSON data (tuples become lists, paths strings)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise ConfigError(f"expected a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg, drop_free=False)


def config_hash(cfg: Any) -> str:
    """SHA-256 of the settings that determine the trained weights.

    ``cfg`` is a dataclass (or a dict of them). Fields in :data:`RESUME_FREE_FIELDS` of any
    nested :class:`TrainConfig` are left out, so changing e.g. ``num_workers`` or
    ``log_every`` does not block a resume.
    """
    text = json.dumps(hashed_config(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hashed_config(cfg: Any) -> dict[str, Any]:
    """The part of ``cfg`` that :func:`config_hash` covers, as plain data."""
    return _plain(cfg, drop_free=True)


def _plain(value: Any, drop_free: bool) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        hints = get_type_hints(type(value))
        out = {}
        for f in dataclasses.fields(value):
            if drop_free and isinstance(value, TrainConfig) and f.name in RESUME_FREE_FIELDS:
                continue
            v = getattr(value, f.name)
            # 1 and 1.0 must hash the same for a float field
            if hints.get(f.name) is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            out[f.name] = _plain(v, drop_free)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, drop_free) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, drop_free) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


# ----------------------------------------------------------------------------- YAML
def save_config(cfg: Any, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` (a dataclass) as YAML to ``path`` atomically."""
    text = f"# {type(cfg).__name__}\n" + yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    atomic_write_text(path, text)


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """The contents of a YAML file; a file that cannot be read or parsed is one
    :class:`ConfigError` line: ``FILE, line L, column C: not valid YAML (problem)``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{path}{where}: not valid YAML ({problem})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None


def load_config(cls: type[T], source: str | os.PathLike[str] | Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from a YAML file or a mapping, checking keys and types.

    Missing keys take the dataclass defaults; unknown keys, wrong types and invalid values
    raise :class:`ConfigError` naming the key (and the closest valid one for typos).
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"load_config needs a dataclass type, got {cls!r}")
    if isinstance(source, Mapping):
        return _build(cls, source, where="")
    path = Path(source)
    data = read_yaml(path)
    try:
        return _build(cls, {} if data is None else data, where="")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _build(cls: type[T], data: Any, where: str) -> T:
    """Check ``data`` against the fields of ``cls`` and construct it."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: expected a mapping of "
                          f"{cls.__name__} keys, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(fields)}"
            raise ConfigError(f"unknown key '{where}{key}' in {cls.__name__}{hint}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{where}{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing key '{where}{name}' in {cls.__name__}")
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to type ``tp``, or a ConfigError naming ``where``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {value!r} matches none of {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}{hint}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, where=f"{where}.")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")


__all__ = ["RESUME_FREE_FIELDS", "TrainConfig", "config_hash", "config_to_dict", "hashed_config",
           "load_config", "save_config"]
