"""What a run reports while it goes: a tqdm bar and the ``metrics.jsonl`` log (rank 0 only)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from detfm.io import atomic_write_text


def _json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends one JSON object per line to a ``metrics.jsonl`` file.

    Lines are flushed as they are written; a crash can at worst leave one partial last
    line, which :func:`read_metrics` skips and a resume removes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps({k: _json_safe(v) for k, v in record.items()}, allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (unreadable lines skipped; [] if absent)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def truncate_metrics(path: str | os.PathLike[str], last_step: int) -> None:
    """Keep only records with ``step <= last_step`` (a resume replays the steps after it)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = [r for r in read_metrics(path) if isinstance(r.get("step"), int) and r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))


class ProgressBar:
    """A tqdm bar over optimiser steps showing loss and events/s (tqdm adds the ETA)."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True,
                         desc="train") if enabled else None

    def update(self, loss: float | None = None, events_per_s: float | None = None) -> None:
        """Advance one step; refresh the numbers when given."""
        if self._bar is None:
            return
        if loss is not None and events_per_s is not None:
            self._bar.set_postfix(loss=f"{loss:.4g}", ev_s=f"{events_per_s:.1f}", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
