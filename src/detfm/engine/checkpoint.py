"""Checkpoints without pickle: safetensors for tensors, JSON for everything else.

A checkpoint is one folder::

    step_00000500/
      model.safetensors   the task's weights and buffers (state_dict)
      state.safetensors   optimiser tensors (AdamW moments and step counters)
      state.json          step, data position (next_epoch, next_batch_in_epoch), config
                          hash, optimiser scalars, metrics, and the SHA-256 of both
                          .safetensors files

The folder is written under a temporary name and renamed into place, so it is either
complete or absent. ``checkpoints/last`` is a relative symlink to the newest one, swapped
atomically. Reading verifies the hashes before anything is loaded; nothing is ever
unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from detfm.errors import DetfmError
from detfm.io import atomic_path, atomic_write_text, file_sha256, follow_umask
from detfm.io.outputs import remove_stale_temporaries, temp_prefix

FORMAT = "detfm-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
INFO_FILE = "state.json"
LAST = "last"


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint read from disk (weights stay on disk until applied)."""

    path: Path
    info: dict[str, Any]
    optimizer_tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        """Optimiser steps completed when the checkpoint was written."""
        return int(self.info["step"])


# ----------------------------------------------------------------------------- weights
def save_weights(module: nn.Module, path: str | os.PathLike[str],
                 metadata: dict[str, str] | None = None) -> None:
    """Write ``module``'s state_dict to a safetensors file atomically (tied weights stored once)."""
    with atomic_path(path) as tmp:
        save_model(module, str(tmp), metadata=metadata)


def load_weights(module: nn.Module, path: str | os.PathLike[str], *, strict: bool = True,
                 device: torch.device | str = "cpu") -> None:
    """Load a safetensors state_dict into ``module``; clear errors for missing/corrupt/mismatched files."""
    path = Path(path)
    if not path.is_file():
        raise DetfmError(f"{path}: weights file not found")
    device = _checked_device(device)
    shapes = _stored_shapes(path)
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    for name, shape in expected.items():
        if name in shapes and shapes[name] != shape:
            others = sum(1 for n, s in expected.items() if n in shapes and shapes[n] != s) - 1
            more = f" (and {others} more tensor(s))" if others else ""
            raise DetfmError(f"{path}: weights do not fit this model (another size?): tensor '{name}' is "
                             f"{list(shapes[name])} in the file, {list(shape)} in this model{more}")
    try:
        missing, unexpected = load_model(module, path, strict=False, device=str(device))
    except SafetensorError as exc:
        raise DetfmError(f"{path}: not a valid safetensors file ({exc})") from None
    except RuntimeError as exc:  # anything else the loader refuses: its first line only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DetfmError(f"{path}: cannot load the weights onto {device}: {first}") from None
    if strict and (missing or unexpected):
        raise DetfmError(f"{path}: weights do not fit this model: missing {_few(missing)}, "
                         f"unexpected {_few(unexpected)}")


def stored_tensor_names(path: str | os.PathLike[str]) -> set[str]:
    """The tensor names of a safetensors weights file, read from its header alone."""
    return set(_stored_shapes(Path(path)))


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return {name: tuple(fh.get_slice(name).get_shape()) for name in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as exc:
        raise DetfmError(f"{path}: not a valid safetensors file ({' '.join(str(exc).split())})") from None


def _checked_device(device: torch.device | str) -> torch.device:
    """``device`` as a torch device that exists here; :class:`DetfmError` naming it otherwise."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DetfmError(f"unknown device {str(device)!r}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DetfmError(f"device {str(device)!r} is not available: no CUDA GPU here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DetfmError(f"device {str(device)!r} does not exist ({torch.cuda.device_count()} GPU(s))")
    elif dev.type not in ("cpu", "meta"):
        raise DetfmError(f"device {str(device)!r} is not supported; use cpu, cuda or cuda:N")
    return dev


def _few(names: list[str] | set[str]) -> str:
    names = sorted(names)
    if not names:
        return "none"
    return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")


# ----------------------------------------------------------------------------- optimiser
def _optimizer_to_flat(optimizer: torch.optim.Optimizer
                       ) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[int]]:
    """Optimiser state as {"<param index>.<key>": tensor}, JSON scalars, and group sizes."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, state in state_dict["state"].items():
        for key, value in state.items():
            name = f"{index}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().cpu().contiguous()
            elif value is None or isinstance(value, (bool, int, float)):
                scalars[name] = value
            else:
                raise DetfmError(f"cannot checkpoint optimiser state '{key}' of type {type(value).__name__}")
    sizes = [len(group["params"]) for group in state_dict["param_groups"]]
    return tensors, scalars, sizes


def _optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                         scalars: dict[str, Any], sizes: list[int], where: Path) -> None:
    current = optimizer.state_dict()
    if [len(group["params"]) for group in current["param_groups"]] != sizes:
        raise DetfmError(f"{where}: the optimiser state is for other parameters "
                         f"(group sizes {sizes}); was the model changed?")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = defaultdict(dict)
    for name, value in [*tensors.items(), *scalars.items()]:
        index, key = name.split(".", 1)
        state[int(index)][key] = value
    for index, entries in state.items():
        if not 0 <= index < len(params):
            raise DetfmError(f"{where}: optimiser state for parameter {index}, which does not exist")
        for key, value in entries.items():
            if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape != params[index].shape:
                raise DetfmError(f"{where}: optimiser state '{key}' of parameter {index} has shape "
                                 f"{tuple(value.shape)}, the parameter {tuple(params[index].shape)}")
    optimizer.load_state_dict({"state": dict(state), "param_groups": current["param_groups"]})


# ----------------------------------------------------------------------------- save / read
def save_checkpoint(folder: str | os.PathLike[str], module: nn.Module, optimizer: torch.optim.Optimizer,
                    info: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically; ``info`` (JSON-able, with ``step``) goes into state.json."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder.parent)  # step folders a killed run left half-written
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(folder.name), suffix=".tmp", dir=folder.parent))
    try:
        follow_umask(tmp)  # mkdtemp makes it private
        save_weights(module, tmp / MODEL_FILE, metadata={"step": str(info["step"])})
        tensors, scalars, sizes = _optimizer_to_flat(optimizer)
        with atomic_path(tmp / STATE_FILE) as path:
            save_file(tensors, str(path))
        record = {"format": FORMAT, **info, "optimizer_scalars": scalars, "param_group_sizes": sizes,
                  "files": {name: file_sha256(tmp / name) for name in (MODEL_FILE, STATE_FILE)}}
        atomic_write_text(tmp / INFO_FILE, json.dumps(record, indent=1, allow_nan=False) + "\n")
        if folder.exists():  # a leftover of an abandoned timeline (a resume from an older step)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def point_last(folder: Path) -> None:
    """Make ``<folder's parent>/last`` point at ``folder``, atomically."""
    link = folder.parent / LAST
    tmp = folder.parent / f".{LAST}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(folder.name)
    if link.is_dir() and not link.is_symlink():  # a copied run where the link became a folder
        shutil.rmtree(link)
    os.replace(tmp, link)


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Delete all but the ``keep`` newest ``step_*`` folders (0 keeps all; ``last`` is always kept)."""
    if keep <= 0:
        return
    last = (checkpoints / LAST).resolve()
    folders = sorted(p for p in checkpoints.glob("step_*") if p.is_dir() and not p.is_symlink())
    for old in folders[:-keep]:
        if old.resolve() != last:
            shutil.rmtree(old, ignore_errors=True)


def read_checkpoint(folder: str | os.PathLike[str]) -> Checkpoint:
    """Read and verify a checkpoint folder; :class:`DetfmError` if it is missing or corrupt."""
    folder = Path(folder)
    if not folder.exists():
        raise DetfmError(f"no checkpoint at {folder}")
    folder = folder.resolve()  # name the real step_N folder in messages, not the 'last' link
    info_path = folder / INFO_FILE
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DetfmError(f"checkpoint {folder} is incomplete: {INFO_FILE} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DetfmError(f"checkpoint {folder} is corrupt: cannot read {INFO_FILE} ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DetfmError(f"checkpoint {folder}: {INFO_FILE} is not a {FORMAT} record")
    for key in ("step", "files", "optimizer_scalars", "param_group_sizes"):
        if key not in info:
            raise DetfmError(f"checkpoint {folder} is corrupt: {INFO_FILE} has no '{key}'")
    for name in (MODEL_FILE, STATE_FILE):
        path = folder / name
        if not path.is_file():
            raise DetfmError(f"checkpoint {folder} is incomplete: {name} is missing")
        if file_sha256(path) != info["files"].get(name):
            raise DetfmError(f"checkpoint {folder} is corrupt: {name} does not match the SHA-256 "
                             f"recorded in {INFO_FILE}")
    try:
        tensors = load_file(folder / STATE_FILE)
    except SafetensorError as exc:
        raise DetfmError(f"checkpoint {folder} is corrupt: {STATE_FILE}: {exc}") from None
    return Checkpoint(path=folder, info=info, optimizer_tensors=tensors)


def apply_checkpoint(checkpoint: Checkpoint, module: nn.Module, optimizer: torch.optim.Optimizer,
                     device: torch.device | str = "cpu") -> None:
    """Load the checkpoint's weights into ``module`` and its state into ``optimizer``."""
    load_weights(module, checkpoint.path / MODEL_FILE, strict=True, device=device)
    _optimizer_from_flat(optimizer, checkpoint.optimizer_tensors, checkpoint.info["optimizer_scalars"],
                         checkpoint.info["param_group_sizes"], checkpoint.path)
