"""Run the simulator end to end: generator -> transport -> detector response -> file.

Seeding: event ``i`` of a run with seed ``s`` draws its physics (generator and transport)
from ``SeedSequence([s, i, 0])`` and its detector response from ``SeedSequence([s, i, 1])``;
an injected anomaly (``SimConfig.anomaly``) from ``SeedSequence([s, i, 2])``.
The physics therefore never depends on the detector model (exact twins across detector
variations) nor on how events are spread over worker processes (same seed, same file).
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detfm import __version__
from detfm.errors import DetfmError
from detfm.io import Event, EventWriter, layout
from detfm.sim.detector import DetectorModel, get_detector
from detfm.sim.exotic import anomaly_rng, check_anomaly, inject
from detfm.sim.generator import MIXES, generate, parse_gun
from detfm.sim.response import render
from detfm.sim.transport import World, transport
from detfm.sim.truth import TruthEvent

# Redraw an event whose physics leaves less than MIN_VISIBLE_MEV in the box (a physics-only
# condition, so twins stay twins). Attempts are part of the seed sequence: deterministic.
MAX_ATTEMPTS = 20
MIN_VISIBLE_MEV = 1.0


@dataclass(frozen=True)
class SimConfig:
    """What to simulate. ``gun`` is ``"PARTICLE:KINETIC_MEV"`` and implies ``mix="gun"``.

    ``anomaly`` (``"hsip"``, ``"fractional"``, ``"displaced_vertex"``; see
    :mod:`detfm.sim.exotic`) adds one rare signature to every event. The rest of each event is
    the exact physics twin of the same event without it (the signature has its own stream).
    """

    events: int = 100
    seed: int = 0
    mix: str = "mpvmpr"
    gun: str | None = None
    detector: str = "nominal"
    anomaly: str | None = None

    def __post_init__(self) -> None:
        if self.events < 0:
            raise DetfmError(f"--events must be >= 0, got {self.events}")
        if self.seed < 0:
            raise DetfmError(f"--seed must be >= 0, got {self.seed}")
        if self.mix not in MIXES:
            raise DetfmError(f"unknown mix '{self.mix}'; choose one of {', '.join(MIXES)}")
        if self.gun is not None:
            parse_gun(self.gun)
        if self.mix == "gun" and self.gun is None:
            raise DetfmError("--mix gun needs --gun PARTICLE:KINETIC_MEV, e.g. --gun mu-:500")
        get_detector(self.detector)
        check_anomaly(self.anomaly)


def event_rngs(seed: int, index: int, attempt: int = 0) -> tuple[np.random.Generator, np.random.Generator]:
    """(physics, detector) generators for one event."""
    physics = np.random.default_rng(np.random.SeedSequence([seed, index, 0, attempt]))
    detector = np.random.default_rng(np.random.SeedSequence([seed, index, 1, attempt]))
    return physics, detector


def _inside_box(truth: TruthEvent) -> bool:
    pos = truth.deposits.pos_cm
    if len(pos) == 0:
        return False
    inside = ((pos >= 0) & (pos < layout.BOX_CM)).all(axis=1)
    return float(truth.deposits.de_mev[inside].sum()) >= MIN_VISIBLE_MEV


def simulate_truth(cfg: SimConfig, index: int) -> tuple[TruthEvent, np.random.Generator]:
    """The physics of event ``index`` and the generator its detector response must use."""
    gun = parse_gun(cfg.gun) if cfg.gun else None
    mix = "gun" if gun else cfg.mix
    for attempt in range(MAX_ATTEMPTS):
        physics_rng, detector_rng = event_rngs(cfg.seed, index, attempt)
        truth = transport(generate(mix, physics_rng, gun), physics_rng, World())
        if _inside_box(truth):
            break
    if cfg.anomaly is not None:
        truth = inject(truth, cfg.anomaly, anomaly_rng(cfg.seed, index, attempt))
    return truth, detector_rng


def simulate_event(cfg: SimConfig, index: int, detector: DetectorModel | None = None) -> Event:
    """Event ``index`` of the run described by ``cfg`` (optionally under another detector)."""
    truth, detector_rng = simulate_truth(cfg, index)
    return render(truth, detector or get_detector(cfg.detector), detector_rng)


def _worker(args: tuple[SimConfig, int, int]) -> list[Event]:
    cfg, start, stop = args
    detector = get_detector(cfg.detector)
    return [simulate_event(cfg, i, detector) for i in range(start, stop)]


def iter_events(cfg: SimConfig, workers: int = 1, chunk: int = 16) -> Iterator[Event]:
    """Yield the run's events in order, computed by ``workers`` processes."""
    chunks = [(cfg, a, min(a + chunk, cfg.events)) for a in range(0, cfg.events, chunk)]
    if workers <= 1 or len(chunks) <= 1:
        for c in chunks:
            yield from _worker(c)
        return
    ctx = mp.get_context("spawn" if os.name == "nt" else "forkserver")
    with ctx.Pool(workers) as pool:
        for events in pool.imap(_worker, chunks):
            yield from events


def file_attributes(cfg: SimConfig) -> dict[str, object]:
    """HDF5 attributes recording how a file was made."""
    det = get_detector(cfg.detector)
    sim_config = dataclasses.asdict(cfg)
    if cfg.anomaly is None:  # files of the standard mixes keep their attributes
        del sim_config["anomaly"]
    return {
        "generator": "detfm.sim",
        "detfm_version": __version__,
        "seed": cfg.seed,
        "sim_config": sim_config,
        "detector": cfg.detector,
        "detector_config": dataclasses.asdict(det),
    }


@dataclass(frozen=True)
class SimReport:
    path: Path
    events: int
    seconds: float
    points: int
    content_sha256: str

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def simulate_to_file(cfg: SimConfig, out: str | os.PathLike[str], workers: int = 1,
                     progress: bool = True) -> SimReport:
    """Simulate ``cfg.events`` events into ``out`` (written atomically)."""
    from tqdm import tqdm

    if workers < 1:
        raise DetfmError(f"--workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    points = 0
    with EventWriter(out, file_attributes(cfg)) as writer:
        bar = tqdm(total=cfg.events, unit="ev", disable=not progress, desc="simulate")
        with bar:
            for event in iter_events(cfg, workers):
                writer.write(event)
                points += event.n_points
                bar.update(1)
    return SimReport(Path(out), cfg.events, time.perf_counter() - t0, points, writer.content_sha256)
