"""One training loop for every task: devices, DDP, accumulation, checkpoints, logging.

The task interface
    A ``torch.nn.Module`` whose ``forward(batch)`` returns ``{"loss": scalar tensor,
    "outputs": dict}``. If ``forward`` also takes a ``generator`` keyword, it receives a
    ``torch.Generator`` (on the training device) to draw its randomness from (masks,
    crops). Scalar tensors in ``outputs`` are logged as metrics. A task with an
    ``after_step(step)`` method has it called after every optimiser step (with the number of
    steps done), before logging and checkpoints: the hook of an EMA teacher. Batches come from
    ``collate(list of dataset items)``; anything with a ``.to(device)`` method (such as
    :class:`detfm.data.batch.PackedBatch` or a tensor), or a dict/list/tuple of them, works.

The run directory::

    out_dir/
      config.yaml                the run's config (rewritten by a resume, which may change
                                 only RESUME_FREE_FIELDS such as num_workers)
      metrics.jsonl              one JSON line per log_every steps and at each checkpoint: step,
                                 epoch, loss, lr, grad_norm, events_per_s, time_s, and the task's
                                 scalar outputs (each a mean over the steps since the previous line)
      checkpoints/
        step_00000500/           model.safetensors, state.safetensors, state.json
        last -> step_00000500    the newest checkpoint (relative symlink)
      model.safetensors          final weights, written when the run finishes (or stops at
                                 ``time_limit_s``: then the weights of the last step done)
      manifest.json              inputs by SHA-256, code version, environment, seeds, times
                                 (see :mod:`detfm.engine.manifest`; rewritten at the end)

Loss scaling (why DDP and accumulation give the single-process gradient)
    ``batch_size`` events per step are cut into ``world_size * accum_steps`` equal
    micro-batches. Each micro-batch loss is divided by ``accum_steps`` before backward and
    DDP averages gradients over ranks, so the step's gradient is the mean of the
    micro-batch gradients. When the task's loss is a mean over the *events* of its batch,
    that equals the gradient of the mean loss over the whole global batch. (A loss
    averaged over points instead weights events by size, and then differs slightly.)

Randomness (why a resume is exact)
    The data order is a function of ``(seed, step)`` (see :mod:`detfm.engine.sampler`).
    Before every micro-batch the engine reseeds torch's default generator (used by
    dropout) and builds the task's ``generator`` from ``(seed, step, micro-batch, rank)``.
    All random state is thus fixed by the step stored in the checkpoint: N steps, resume,
    N steps gives bitwise the weights of 2N steps on CPU. The caller's global RNG state is
    restored when ``train`` returns.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from detfm.engine.checkpoint import (LAST, MODEL_FILE, apply_checkpoint, point_last, prune_checkpoints,
                                     read_checkpoint, save_checkpoint, save_weights)
from detfm.engine.config import TrainConfig, config_hash, hashed_config, save_config
from detfm.engine.distributed import (DistInfo, all_reduce_mean, barrier, init_distributed, pick_device,
                                      shutdown_distributed)
from detfm.engine.optim import build_optimizer
from detfm.engine.progress import MetricsLog, ProgressBar, truncate_metrics
from detfm.engine.runs import CHECKPOINTS_DIR, CONFIG_FILE, METRICS_FILE
from detfm.engine.sampler import BatchPlan, derived_seed, micro_batches
from detfm.engine.schedule import lr_at
from detfm.errors import ConfigError, DetfmError
from detfm.io.outputs import remove_stale_temporaries

# Called on rank 0 after each metrics line, with the record and the (unwrapped) task.
Callback = Callable[[dict[str, Any], nn.Module], None]


class MapDataset(Protocol):
    """What the engine needs from a dataset: a length and indexing (torch map-style)."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


@dataclass(frozen=True)
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    model_path: Path            # out_dir/model.safetensors
    checkpoint: Path            # the final checkpoint folder
    start_step: int             # 0, or the step a resume started from
    steps: int                  # optimiser steps completed in total
    stopped_early: bool         # True if time_limit_s ended the call before cfg.steps
    final_loss: float | None    # loss of the last metrics line
    metrics: dict[str, Any]     # the last metrics line
    seconds: float              # wall time of this call
    events_per_second: float    # events trained on per second in this call (all ranks)


def train(task: nn.Module, dataset: MapDataset, collate: Callable[[list[Any]], Any], cfg: TrainConfig,
          out_dir: str | Path, resume: bool = False, callbacks: Sequence[Callback] | None = None,
          *, run_config: Any = None) -> TrainResult:
    """Train ``task`` on ``dataset`` for ``cfg.steps`` optimiser steps; write the run to ``out_dir``.

    ``resume=True`` continues from ``out_dir/checkpoints/last``; ``cfg`` and ``run_config``
    must hash like the checkpoint's, apart from ``RESUME_FREE_FIELDS``. ``run_config`` is
    an optional dataclass describing the whole run (model, task, data settings), written
    to config.yaml in place of ``cfg`` and checked on resume. Under ``torchrun`` every rank
    calls ``train`` with the same arguments; only rank 0 writes files. On a user error
    nothing in ``out_dir`` is changed. Datasets with ``set_epoch`` are told each epoch.
    """
    dist = init_distributed(cfg.device)
    finished = False
    try:
        device = pick_device(cfg.device, dist)
        rng_devices = [device.index] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=rng_devices):  # leave the caller's RNG as it was
            result = _train(task, dataset, collate, cfg, Path(out_dir), resume, list(callbacks or []),
                            run_config, dist, device)
        finished = True
        return result
    finally:
        # Only a clean finish waits for the other ranks (a failed rank must not hang).
        shutdown_distributed(dist, wait=finished)


def _train(task: nn.Module, dataset: MapDataset, collate: Callable[[list[Any]], Any], cfg: TrainConfig,
           out: Path, resume: bool, callbacks: list[Callback], run_config: Any, dist: DistInfo,
           device: torch.device) -> TrainResult:
    # --- set up: check everything before writing anything
    plan = BatchPlan(len(dataset), cfg.batch_size, cfg.accum_steps, dist.world_size, cfg.seed)
    identity = {"train": cfg} if run_config is None else {"train": cfg, "run": run_config}  # resume checks
    _check_out_dir(out, resume)
    task.to(device)
    optimizer = build_optimizer(task, cfg)
    start, record, checkpoint_path = 0, {}, out / CHECKPOINTS_DIR / LAST
    if dist.is_main:
        remove_stale_temporaries(out / CHECKPOINTS_DIR)  # half-written step folders of a killed run
    if resume:
        if not (out / CHECKPOINTS_DIR / LAST).exists():
            hint = ("; it holds no checkpoint: run the same command without --resume to start it again in "
                    "place" if not _holds_progress(out) else "")
            raise DetfmError(f"nothing to resume: no checkpoint at {out / 'checkpoints' / LAST}{hint}")
        checkpoint = read_checkpoint(out / CHECKPOINTS_DIR / LAST)
        _check_compatible(checkpoint.info, identity, plan, checkpoint.path)
        apply_checkpoint(checkpoint, task, optimizer, device)
        start, record = checkpoint.step, dict(checkpoint.info.get("metrics") or {})
        checkpoint_path = checkpoint.path
    started = time.time()
    manifest = _RunManifest(out, dataset, cfg, run_config, device, started, resume,
                            {"start_step": start, "steps": cfg.steps, "dataset_len": len(dataset),
                             "world_size": dist.world_size})
    if dist.is_main:
        save_config(cfg if run_config is None else run_config, out / CONFIG_FILE)
        truncate_metrics(out / METRICS_FILE, start)
        manifest.write(ended=None)
    barrier(dist)

    model = (DistributedDataParallel(task, device_ids=[device.index] if device.type == "cuda" else None,
                                     find_unused_parameters=cfg.find_unused_parameters)
             if dist.distributed else task)
    batches = micro_batches(dataset, collate, plan, dist.rank, start, cfg.steps, cfg.num_workers,
                            pin_memory=device.type == "cuda")
    takes_generator = "generator" in inspect.signature(task.forward).parameters
    after_step: Callable[[int], None] | None = getattr(task, "after_step", None)
    params = [p for p in task.parameters() if p.requires_grad]
    log = MetricsLog(out / METRICS_FILE) if dist.is_main else None
    bar = ProgressBar(total=cfg.steps, initial=start, enabled=cfg.progress and dist.is_main)
    sums: dict[str, torch.Tensor] = {}
    t_begin = t_log = time.perf_counter()
    steps_logged = 0
    task.train()

    # --- the loop: one optimiser step per iteration
    for step in range(start, cfg.steps):
        lr = lr_at(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, steps=cfg.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # per-group multiplier, see build_optimizer
        for micro in range(cfg.accum_steps):
            batch = _to_device(next(batches), device)
            seed = derived_seed(cfg.seed, step, micro, dist.rank)
            torch.manual_seed(seed)  # dropout and other default-generator draws
            kwargs = {"generator": torch.Generator(device).manual_seed(seed)} if takes_generator else {}
            sync_now = micro == cfg.accum_steps - 1  # DDP all-reduces gradients on the last micro-batch only
            with model.no_sync() if dist.distributed and not sync_now else contextlib.nullcontext():
                with _autocast(cfg.precision, device):
                    result = model(batch, **kwargs)
                loss = _check_result(result)
                (loss / cfg.accum_steps).backward()
            _accumulate(sums, {"loss": loss, **_scalars(result.get("outputs") or {})}, 1.0 / cfg.accum_steps)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        if not torch.isfinite(grad_norm):  # the same on every rank: gradients are already all-reduced
            raise DetfmError(f"the gradient became {grad_norm.item()} at step {step + 1}; "
                             f"lower lr (now {lr:.3g}) or check the data")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _accumulate(sums, {"grad_norm": grad_norm}, 1.0)
        done, steps_logged = step + 1, steps_logged + 1
        if after_step is not None:  # e.g. an EMA teacher following the student
            after_step(done)
        out_of_time = _out_of_time(cfg, started, device, dist) and done < cfg.steps
        save_now = ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or done == cfg.steps
                    or out_of_time)

        if done % cfg.log_every == 0 or save_now:  # log at checkpoints too: a resume starts a fresh line
            now = time.perf_counter()
            means = _reduce(sums, steps_logged, device, dist)
            record = {"step": done, "epoch": plan.position(step)[0], "loss": means.pop("loss"),
                      "lr": lr, "grad_norm": means.pop("grad_norm"),
                      "events_per_s": cfg.batch_size * steps_logged / max(now - t_log, 1e-9),
                      "time_s": now - t_begin, **means}
            sums, steps_logged, t_log = {}, 0, now
            if log is not None:
                log.append(record)
                for callback in callbacks:
                    callback(record, task)
            bar.update(record["loss"], record["events_per_s"])
        else:
            bar.update()

        if save_now:
            checkpoint_path = _save(out, done, task, optimizer, plan, cfg, identity, record, dist)
        if out_of_time:
            break

    # --- finish (at cfg.steps, or earlier when the time budget ran out)
    bar.close()
    final_step = done if cfg.steps > start else start
    stopped_early = final_step < cfg.steps
    if dist.is_main:
        save_weights(task, out / MODEL_FILE, metadata={"step": str(final_step)})
        extra = ({"stopped": f"time limit of {cfg.time_limit_s:g} s reached at step {final_step} of "
                             f"{cfg.steps}; continue with --resume"} if stopped_early else {})
        manifest.write(ended=time.time(), final_step=final_step, final_loss=record.get("loss"), **extra)
    barrier(dist)
    seconds = time.perf_counter() - t_begin
    rate = cfg.batch_size * (final_step - start) / max(seconds, 1e-9)
    return TrainResult(out_dir=out, model_path=out / MODEL_FILE, checkpoint=checkpoint_path,
                       start_step=start, steps=final_step, stopped_early=stopped_early,
                       final_loss=record.get("loss"), metrics=record, seconds=seconds,
                       events_per_second=rate)


# ----------------------------------------------------------------------------- helpers
@dataclass
class _RunManifest:
    """Writes the run's manifest.json (rank 0): at the start, and with the end time when done."""

    out: Path
    dataset: Any
    cfg: TrainConfig
    run_config: Any
    device: torch.device
    started: float
    resume: bool
    extra: dict[str, Any]

    def write(self, ended: float | None, **extra: Any) -> None:
        # The audit layer sits below the engine: imported where it is used.
        from detfm.engine.manifest import file_sha256, find_seeds, write_manifest

        seeds = {"train.seed": self.cfg.seed,
                 **(find_seeds(self.run_config) if self.run_config is not None else {})}
        if ended is not None and (self.out / MODEL_FILE).is_file():
            extra["outputs"] = {MODEL_FILE: file_sha256(self.out / MODEL_FILE)}
        write_manifest(self.out, inputs=_dataset_paths(self.dataset), seeds=seeds,
                       config=self.cfg if self.run_config is None else self.run_config,
                       device=str(self.device), started=self.started, ended=ended,
                       extra={**self.extra, **extra}, resume=self.resume)


def _dataset_paths(dataset: Any) -> list[Path]:
    """The files behind a dataset (its ``paths``, or those of a wrapped ``.dataset``); [] if unknown."""
    for obj in (dataset, getattr(dataset, "dataset", None)):
        paths = getattr(obj, "paths", None)
        if paths is None:
            continue
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        try:
            return [Path(p) for p in paths]
        except TypeError:
            return []
    return []


_RUN_FILES = (CONFIG_FILE, METRICS_FILE, CHECKPOINTS_DIR, MODEL_FILE)


def _holds_progress(out: Path) -> bool:
    """True if ``out`` holds training worth keeping: a checkpoint or final weights.

    A run killed before its first checkpoint leaves only config.yaml, metrics.jsonl and
    manifest.json (and perhaps a half-written step folder): it is restarted in place.
    """
    checkpoints = out / CHECKPOINTS_DIR
    has_step = checkpoints.is_dir() and any(p.name.startswith("step_") for p in checkpoints.iterdir())
    return has_step or (checkpoints / LAST).is_symlink() or (out / MODEL_FILE).exists()


def _check_out_dir(out: Path, resume: bool) -> None:
    """Refuse to overwrite a previous run unless resuming it (a run with no checkpoint yet is
    started again in place, resumed or not)."""
    if out.exists() and not out.is_dir():
        raise DetfmError(f"{out} exists and is not a folder")
    if not resume and out.is_dir() and _holds_progress(out):
        found = [name for name in _RUN_FILES if (out / name).exists()]
        raise DetfmError(f"{out} already holds a run ({', '.join(found)}); resume it or choose "
                         f"a new output folder")


def _check_compatible(info: Mapping[str, Any], identity: dict[str, Any], plan: BatchPlan,
                      where: Path) -> None:
    """The checkpoint must come from the same configuration and dataset size."""
    if info.get("config_hash") != config_hash(identity):
        saved, now = _flatten(info.get("config") or {}), _flatten(hashed_config(identity))
        diffs = [f"{key}: {saved.get(key)!r} in the checkpoint, {value!r} now"
                 for key, value in now.items() if saved.get(key) != value]
        diffs += [f"{key}: {value!r} in the checkpoint, absent now"
                  for key, value in saved.items() if key not in now]
        raise ConfigError(f"cannot resume from {where}: the config differs from the one it was "
                          f"trained with ({'; '.join(diffs) or 'different hash'})")
    if info.get("dataset_len") != plan.num_events:
        raise ConfigError(f"cannot resume from {where}: it was trained on {info.get('dataset_len')} "
                          f"events, the dataset now has {plan.num_events}")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _to_device(batch: Any, device: torch.device) -> Any:
    if hasattr(batch, "to") and callable(batch.to):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _out_of_time(cfg: TrainConfig, started: float, device: torch.device, dist: DistInfo) -> bool:
    """True once ``cfg.time_limit_s`` has passed since ``started``. One process reads its own
    clock (no device tensor, so no GPU sync per step); under DDP rank 0's clock decides for
    all ranks, through one small all-reduce per step, so that every rank stops after the same
    step."""
    if not cfg.time_limit_s:
        return False
    spent = time.time() - started >= cfg.time_limit_s
    if not dist.distributed:
        return spent
    flag = torch.tensor([float(spent and dist.is_main) * dist.world_size], device=device)
    return bool(all_reduce_mean(flag, dist).item() > 0.5)


def _autocast(precision: str, device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA ("auto") or when asked; plain fp32 otherwise."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda"
                                   and torch.cuda.is_bf16_supported())
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def _check_result(result: Any) -> torch.Tensor:
    """The loss of a task's forward, after checking the result has the agreed shape."""
    if not isinstance(result, Mapping) or "loss" not in result:
        got = f"a dict with keys {sorted(result)}" if isinstance(result, Mapping) else type(result).__name__
        raise DetfmError(f"the task's forward must return {{'loss': tensor, 'outputs': dict}}, got {got}")
    loss = result["loss"]
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise DetfmError(f"the task's loss must be a scalar tensor, got {loss!r:.80}")
    if not loss.requires_grad:
        raise DetfmError("the task's loss does not depend on any trainable parameter")
    if "outputs" in result and not isinstance(result["outputs"], Mapping):
        raise DetfmError(f"the task's 'outputs' must be a dict, got {type(result['outputs']).__name__}")
    return loss.reshape(())


_RECORD_KEYS = frozenset({"step", "epoch", "loss", "lr", "grad_norm", "events_per_s", "time_s"})


def _scalars(outputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The one-element tensors among a task's outputs (renamed if they clash with ours)."""
    return {(k if k not in _RECORD_KEYS else f"outputs.{k}"): v for k, v in outputs.items()
            if isinstance(v, torch.Tensor) and v.numel() == 1}


def _accumulate(sums: dict[str, torch.Tensor], values: Mapping[str, torch.Tensor], weight: float) -> None:
    """Add ``weight * value`` to running sums, staying on the device (no synchronisation)."""
    for key, value in values.items():
        value = value.detach().float().reshape(()) * weight
        sums[key] = sums[key] + value if key in sums else value


def _reduce(sums: dict[str, torch.Tensor], steps: int, device: torch.device,
            dist: DistInfo) -> dict[str, float]:
    """Means over steps (and ranks) of the accumulated sums, as Python floats."""
    keys = sorted(sums)
    stacked = torch.stack([sums[k].to(device) for k in keys]) / steps
    return dict(zip(keys, all_reduce_mean(stacked, dist).tolist()))


def _save(out: Path, done: int, task: nn.Module, optimizer: torch.optim.Optimizer, plan: BatchPlan,
          cfg: TrainConfig, identity: dict[str, Any], record: dict[str, Any], dist: DistInfo) -> Path:
    """Write checkpoints/step_N (rank 0), point ``last`` at it, prune old ones."""
    folder = out / CHECKPOINTS_DIR / f"step_{done:08d}"
    if dist.is_main:
        next_epoch, next_batch = plan.position(done)  # where the data order resumes
        info = {"step": done, "next_epoch": next_epoch, "next_batch_in_epoch": next_batch,
                "dataset_len": plan.num_events, "world_size": dist.world_size,
                "seed": cfg.seed, "rng": "reseeded from (seed, step, micro-batch, rank)",
                "config_hash": config_hash(identity), "config": hashed_config(identity),
                "metrics": {k: v for k, v in record.items()
                            if isinstance(v, (int, float)) and math.isfinite(v)}}
        save_checkpoint(folder, task, optimizer, info)
        point_last(folder)
        prune_checkpoints(folder.parent, cfg.keep_checkpoints)
    barrier(dist)
    return folder


__all__ = ["Callback", "MapDataset", "TrainResult", "train"]
