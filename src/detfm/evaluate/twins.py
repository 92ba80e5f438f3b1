"""Twin files: the same simulated events rendered through other detector models.

The simulator seeds the physics of event ``i`` apart from its detector response (see
:mod:`detfm.sim.simulate`), so re-simulating a file's seed and event numbers with another
:class:`~detfm.sim.detector.DetectorModel` gives an exact twin: the same particles, only
the recorded voxels differ. :func:`make_twins` does that from the attributes a
simulator-made file carries (``sim_config``, ``seed``, ``detector``). Files from elsewhere
lack them; their twins must be supplied and are checked by :func:`load_twin_files`.

Twin files are cached: ``out_dir/<stem>.<variation>.h5`` is reused when its attributes show
the same seed, event mix, detector model and at least the events asked for (the first
``n`` events of a longer twin are the same events).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detfm.errors import DetfmError
from detfm.io import EventFile

__all__ = ["is_simulated_as", "load_twin_files", "make_twins", "sim_config_of", "twin_path"]

SIM_KEYS = ("events", "seed", "mix", "gun", "detector")  # required; newer fields are optional


def sim_config_of(path: str | os.PathLike[str]) -> Any | None:
    """The :class:`~detfm.sim.simulate.SimConfig` a simulator-made file was written with,
    or None when the file does not record it."""
    from detfm.sim.simulate import SimConfig

    with EventFile(path) as f:
        attrs = f.attrs
    raw = attrs.get("sim_config")
    if attrs.get("generator") != "detfm.sim" or not isinstance(raw, dict) or set(SIM_KEYS) - set(raw):
        return None
    known = {f.name for f in dataclasses.fields(SimConfig)}
    try:
        return SimConfig(**{k: v for k, v in raw.items() if k in known})
    except (DetfmError, TypeError):
        return None


def twin_path(nominal_file: str | os.PathLike[str], variation: str, out_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`make_twins` keeps the ``variation`` twin of ``nominal_file``."""
    return Path(out_dir) / f"{Path(nominal_file).stem}.{variation}.h5"


def is_simulated_as(path: str | os.PathLike[str], cfg: Any) -> bool:
    """True if ``path`` holds at least ``cfg.events`` events simulated as ``cfg`` (same seed,
    mix, gun and detector model), i.e. its first ``cfg.events`` events are those of ``cfg``."""
    from detfm.sim.detector import get_detector

    path = Path(path)
    if not path.is_file():
        return False
    try:
        with EventFile(path) as f:
            attrs, n = f.attrs, len(f)
    except DetfmError:
        return False
    raw = attrs.get("sim_config")
    if not isinstance(raw, dict) or n < cfg.events:
        return False
    same = all(raw.get(f.name) == getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name != "events")
    return same and attrs.get("detector_config") == _jsonable(dataclasses.asdict(get_detector(cfg.detector)))


def _jsonable(value: Any) -> Any:
    """``value`` as it reads back from an HDF5 attribute (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def _check_reproducible(path: Path, cfg: Any) -> None:
    """Re-simulate the file's first event and compare: a changed simulator cannot make twins."""
    from detfm.sim.simulate import simulate_event

    if cfg.events == 0:
        return
    with EventFile(path) as f:
        stored = f[0]
    again = simulate_event(cfg, 0)
    if not (stored.points.shape == again.points.shape and np.array_equal(stored.points, again.points)):
        raise DetfmError(f"{path}: re-simulating event 0 from the file's attributes does not reproduce it "
                         f"(made by another simulator version?); pass its twins with --twins NAME=FILE")


def make_twins(nominal_file: str | os.PathLike[str], variations: Sequence[str], out_dir: str | os.PathLike[str],
               workers: int = 1, progress: bool = False, *, max_events: int | None = None) -> dict[str, Path]:
    """Re-simulate the events of a simulator-made file under each detector in ``variations``.

    Returns ``{variation: twin file}``. A variation equal to the file's own detector maps to
    the file itself. ``max_events`` simulates only the first that many events. Raises
    :class:`DetfmError` for an unknown detector name, a file without simulation attributes,
    or a file the current simulator does not reproduce.
    """
    from detfm.sim.detector import get_detector
    from detfm.sim.simulate import simulate_to_file

    for name in variations:
        get_detector(name)  # unknown names: one error listing the valid ones
    src = Path(nominal_file)
    cfg = sim_config_of(src)
    if cfg is None:
        raise DetfmError(f"{src}: no simulation attributes (sim_config, seed, detector), so its twins "
                         f"cannot be re-simulated; pass them with --twins NAME=FILE")
    with EventFile(src) as f:
        n_file = len(f)
    n = n_file if max_events is None else min(max_events, n_file)
    cfg = dataclasses.replace(cfg, events=n)
    if any(name != cfg.detector for name in variations):
        _check_reproducible(src, cfg)
    out: dict[str, Path] = {}
    for name in variations:
        if name == cfg.detector:
            out[name] = src
            continue
        twin_cfg = dataclasses.replace(cfg, detector=name)
        path = twin_path(src, name, out_dir)
        if not is_simulated_as(path, twin_cfg):
            simulate_to_file(twin_cfg, path, workers=workers, progress=progress)
        out[name] = path
    return out


def load_twin_files(mapping: Mapping[str, str | os.PathLike[str]],
                    nominal_file: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """Check user-supplied twin files and return ``{name: path}``.

    Every file (and ``nominal_file`` when given) must be readable and hold the same number
    of events; where files record a simulation seed (and event mix), those must agree too.
    """
    files = {name: Path(p) for name, p in mapping.items()}
    reference = ("nominal", Path(nominal_file)) if nominal_file is not None else None
    seen: list[tuple[str, Path, int, dict[str, Any]]] = []
    for name, path in ([reference] if reference else []) + list(files.items()):
        if not path.is_file():
            raise DetfmError(f"twin '{name}': {path}: no such file")
        with EventFile(path) as f:
            seen.append((name, path, len(f), f.attrs))
    if not seen:
        return files
    name0, path0, n0, attrs0 = seen[0]
    for name, path, n, attrs in seen[1:]:
        if n != n0:
            raise DetfmError(f"twin '{name}': {path} has {n} events but '{name0}' ({path0}) has {n0}; "
                             f"twins must hold the same events")
        for key in ("seed", "mix", "gun", "anomaly"):
            a, b = _sim_value(attrs0, key), _sim_value(attrs, key)
            if a is not None and b is not None and a != b:
                raise DetfmError(f"twin '{name}': {path} was simulated with {key} {b!r} but '{name0}' "
                                 f"({path0}) with {a!r}; these are not twins")
    return files


def _sim_value(attrs: Mapping[str, Any], key: str) -> Any | None:
    raw = attrs.get("sim_config")
    if isinstance(raw, dict):  # a simulator-made file: a setting it does not record is unset
        return "none" if raw.get(key) is None else raw[key]
    return attrs.get(key)
