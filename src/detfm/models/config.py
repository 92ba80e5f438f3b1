"""Model configuration: the base every backbone family's config extends.

A config is a frozen dataclass with a ``name`` (the registry entry it was built from) and an
``arch`` (the family, which picks the class that builds it). Each family's config lives in
its own file and registers itself with :func:`register_arch`, so :func:`config_from_dict`
rebuilds any family from a saved run without knowing the families in advance.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import yaml

from detfm.data.datasets import DEFAULT_DATASET, get_dataset
from detfm.errors import ConfigError

__all__ = ["ModelConfig", "check_keys", "config_class", "config_from_dict", "config_from_yaml",
           "register_arch"]

C = TypeVar("C", bound="ModelConfig")


def check_keys(given: Iterable[str], valid: Iterable[str], what: str) -> None:
    """Raise :class:`ConfigError` naming every unknown key and its closest valid spelling."""
    valid = sorted(valid)
    unknown = [k for k in given if k not in valid]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, valid, n=1)
        parts.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigError(f"unknown option(s) for {what}: {', '.join(parts)}; "
                      f"valid options: {', '.join(valid)}")


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (YAML-safe)."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class ModelConfig:
    """Fields every backbone config has.

    Attributes:
        name: registry name it was built from (provenance only).
        arch: the backbone family (``pointmae``, ``ptv3``, ...); fixed per config class.
        in_channels: per-point input channels of ``PackedBatch.feat`` (1: log energy).
        seed: seed of the initial weights (same config, same weights).
        dataset: the kind of events (:func:`detfm.data.get_dataset`): it supplies the
            coordinate normalisation.
    """

    name: str = "model"
    arch: str = ""
    in_channels: int = 1
    seed: int = 0
    dataset: str = DEFAULT_DATASET

    def __post_init__(self) -> None:
        if self.in_channels < 1:
            raise ConfigError(f"in_channels must be >= 1, got {self.in_channels}")
        get_dataset(self.dataset)  # a clear error for an unknown kind

    @classmethod
    def _nested(cls) -> dict[str, type]:
        """Fields holding a nested config dataclass (their keys may be given flat)."""
        return {f.name: type(f.default_factory()) for f in fields(cls)  # type: ignore[misc]
                if f.default_factory is not dataclasses.MISSING
                and dataclasses.is_dataclass(f.default_factory())}  # type: ignore[misc]

    def replace(self: C, **overrides: Any) -> C:
        """A copy with ``overrides``; fields of nested configs may be given flat
        (``radius=4.0`` for ``grouping.radius``). Unknown keys name the closest valid one."""
        own = {f.name for f in fields(self)}
        nested = self._nested()
        flat = {k: n for n, sub in nested.items() for k in (f.name for f in fields(sub))}
        check_keys(overrides, own | set(flat), f"model '{self.name}' ({self.arch})")
        if "arch" in overrides and overrides["arch"] != self.arch:
            raise ConfigError(f"model '{self.name}' is a {self.arch} backbone; a config of arch "
                              f"'{overrides['arch']}' does not fit it (pick a {overrides['arch']} model)")
        top: dict[str, Any] = {}
        for key, value in overrides.items():
            if key in own:
                current = getattr(self, key)
                if key in nested and isinstance(value, Mapping):
                    check_keys(value, [f.name for f in fields(current)], key)
                    value = dataclasses.replace(current, **value)
                elif isinstance(current, tuple) and isinstance(value, list):
                    value = tuple(value)
                top[key] = value
        for key, value in overrides.items():
            if key not in own:
                holder = flat[key]
                top[holder] = dataclasses.replace(top.get(holder, getattr(self, holder)), **{key: value})
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (lists for tuples), ready for YAML/JSON."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`ConfigError`."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
        return cls().replace(**dict(data))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls: type[C], text: str) -> C:
        return cls.from_dict(yaml.safe_load(text) or {})


_ARCHS: dict[str, type[ModelConfig]] = {}

# Configs saved before the ``arch`` field existed are patch transformers.
LEGACY_ARCH = "pointmae"


def register_arch(cls: type[C]) -> type[C]:
    """Class decorator: make a config class findable by its ``arch`` default."""
    arch = cls().arch
    if not arch:
        raise ConfigError(f"{cls.__name__} must set a default arch")
    _ARCHS[arch] = cls
    return cls


def config_class(arch: str) -> type[ModelConfig]:
    if arch not in _ARCHS:
        raise ConfigError(f"unknown backbone family (arch) '{arch}'; known: {', '.join(sorted(_ARCHS))}")
    return _ARCHS[arch]


def config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """Any family's config from a saved mapping (its ``arch`` picks the class)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a model config must be a mapping, got {type(data).__name__}")
    return config_class(str(data.get("arch", LEGACY_ARCH))).from_dict(data)


def config_from_yaml(text: str) -> ModelConfig:
    return config_from_dict(yaml.safe_load(text) or {})
