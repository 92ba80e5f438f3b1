"""Does pretraining learn? A linear probe of a pretrained backbone against the same
architecture randomly initialised, on per-point semantic segmentation.

:func:`probe_study` is what ``detfm probe`` runs: it extracts frozen features once per
backbone, fits the probe on all five classes and on the four without low-energy (the
reference work's headline metric), and draws PCA colours of the features.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detfm.data import EventDataset
from detfm.errors import DetfmError
from detfm.evaluate.feature_viz import feature_pca_figure
from detfm.evaluate.probe import ProbeResult, compare_probes, extract_point_features, fit_probe
from detfm.io import atomic_write_text, layout
from detfm.recipes.pretrain import load_backbone, load_run_config, random_backbone

FOUR_CLASSES = tuple(c for c in layout.SEMANTIC_CLASSES if c != "low_energy")


@dataclass(frozen=True)
class ProbeStudy:
    """Probe results per backbone ("pretrained", "random") and class set ("all", "no_lowe")."""

    results: dict[str, dict[str, ProbeResult]]
    out_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {name: {k: r.to_dict() for k, r in by_cls.items()} for name, by_cls in self.results.items()}

    def format(self) -> str:
        parts = []
        for cls in ("all", "no_lowe"):
            parts.append(f"== classes: {cls}")
            parts.append(compare_probes({name: by_cls[cls] for name, by_cls in self.results.items()}))
        return "\n".join(parts)


def probe_study(run_dir: str | os.PathLike[str], data: list[str], out_dir: str | os.PathLike[str], *,
                train_events: int = 200, test_events: int = 500, max_train_points: int = 2000,
                pictures: int = 3, seed: int = 0, progress: bool = True) -> ProbeStudy:
    """Linear probe of the run's backbone vs a random one; writes probe.json, probe.txt, PNGs."""
    cfg = load_run_config(run_dir)
    dataset = EventDataset(data, energy_threshold=cfg.data.energy_threshold, min_points=cfg.data.min_points,
                           labels=True, seed=seed)
    if len(dataset) < train_events + test_events:
        raise DetfmError(f"{len(dataset)} usable events in {data}, but {train_events} train + "
                         f"{test_events} test were asked for")
    train = dataset.subset(range(train_events))
    test = dataset.subset(range(train_events, train_events + test_events))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbones = {"pretrained": load_backbone(run_dir), "random": random_backbone(run_dir)}
    results: dict[str, dict[str, ProbeResult]] = {}
    for name, backbone in backbones.items():
        with torch.no_grad():
            f_train = extract_point_features(backbone, train, max_points_per_event=max_train_points,
                                             seed=seed, progress=progress)
            f_test = extract_point_features(backbone, test, seed=seed, progress=progress)
        results[name] = {
            "all": fit_probe(f_train, f_test, classes=layout.SEMANTIC_CLASSES),
            "no_lowe": fit_probe(f_train, f_test, classes=FOUR_CLASSES),
        }
        del f_train, f_test
        if pictures:
            feature_pca_figure(backbone, test, list(range(pictures)), out / f"pca_{name}.png",
                               title=f"{name} backbone: truth | PCA of point features")
    study = ProbeStudy(results, out)
    atomic_write_text(out / "probe.json", json.dumps(study.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "probe.txt", study.format() + "\n")
    return study
