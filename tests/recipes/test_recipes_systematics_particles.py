"""Systematics of a particle-finding run: the per-event particle metrics, their paired
bootstrap, the report of `detfm evaluate` (JSON, table, pictures) and its errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from detfm_testing import one_torch_thread, register_test_models

from detfm.cli import main
from detfm.data import PackedBatch
from detfm.engine import TrainConfig, save_config
from detfm.errors import DetfmError
from detfm.evaluate.particles import (
    ParticleRecords,
    particle_event_stats,
    particle_scores,
    weighted_particle_metrics,
)
from detfm.io import EventFile, write_events
from detfm.models import create_model
from detfm.recipes import systematics
from detfm.recipes.adapt import FinetuneConfig, run_finetune
from detfm.recipes.pretrain import DataConfig
from detfm.recipes.systematics import (
    PARTICLE_HEADLINE,
    REPORT_KIND,
    bootstrap_particle_metrics,
    evaluate_systematics,
    format_systematics,
    heldout_event_ids,
)
from detfm.sim.simulate import SimConfig, simulate_to_file
from detfm.tasks.particles import NO_OBJECT, ParticlePredictions, Particles, ParticlesConfig, particle_targets
from detfm.tasks.registry import get_task

CLASSES = get_task("particles").class_names  # photon, electron, muon, pion, proton
MIN_POINTS = 30  # the stand-in model below finds the particles of at least this many points
ENERGY_SCALE = 1.1  # ... and gives each 1.1 times its true kinetic energy


class SizeCutModel(Particles):
    """A stand-in for a trained model: it finds every truth particle of at least
    :data:`MIN_POINTS` points, with its true class and ``ENERGY_SCALE`` times its true energy.
    Losing voxels pushes particles below the cut, as a real model loses faint particles."""

    @torch.no_grad()
    def predict(self, batch: PackedBatch) -> ParticlePredictions:
        truth = particle_targets(batch, self.config.dataset)
        keep = truth.size >= MIN_POINTS
        renumber = torch.cumsum(keep.long(), 0) - 1
        owner = truth.point_particle
        safe = owner.clamp(min=0)
        kept_owner = (torch.where((owner >= 0) & keep[safe], renumber[safe], -1) if len(truth)
                      else torch.full_like(owner, -1))
        labels = truth.label[keep]
        logits = torch.full((len(labels), NO_OBJECT + 1), -10.0)
        logits[torch.arange(len(labels)), labels] = 10.0
        return ParticlePredictions(
            point_particle=kept_owner, event=truth.event[keep], query=torch.arange(len(labels)), logits=logits,
            label=labels, energy=ENERGY_SCALE * truth.energy[keep].nan_to_num(0.0), start=truth.start[keep],
            size=truth.size[keep], semantic_logits=torch.zeros(batch.num_points, 5))


def halve(src: Path, dst: Path) -> Path:
    """A twin of ``src`` that keeps every other voxel of every event."""
    with EventFile(src) as f:
        events = [e.select(np.arange(e.n_points) % 2 == 0) for e in f]
    write_events(dst, events)
    return dst


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A nominal file of 8 events, its half-voxel twin and an empty run directory."""
    root = tmp_path_factory.mktemp("syst_particles")
    nominal = root / "nominal.h5"
    simulate_to_file(SimConfig(events=8, seed=31), nominal, progress=False)
    run = root / "stand_in_run"
    run.mkdir()
    return {"root": root, "nominal": nominal, "halved": halve(nominal, root / "halved.h5"), "run": run}


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `evaluate_systematics` score :class:`SizeCutModel` as a particles run."""
    register_test_models()
    task = SizeCutModel(create_model("pointwise_test"), ParticlesConfig(hidden=16, num_heads=2, num_queries=4))
    cfg = dataclasses.replace(FinetuneConfig(), task="particles")
    monkeypatch.setattr(systematics, "_load_model", lambda run_dir, device: (cfg, task))


# ----------------------------------------------------------------------------- per-event metrics
def probs(label: int) -> list[float]:
    row = [0.025] * 6
    row[label] = 0.9
    return row


def two_events() -> ParticleRecords:
    """Event 0: muon and electron found, the electron called a photon; a false proton.
    Event 1: a photon found (IoU 3/4), a pion missed."""
    records = ParticleRecords()
    records.add_event(truth_point=np.array([0, 0, 0, 1, 1, 1, -1, -1]), truth_label=np.array([2, 1]),
                      truth_energy=np.array([100.0, 50.0]), point_energy=np.ones(8),
                      pred_point=np.array([0, 0, 0, 1, 1, 1, 2, 2]), pred_probs=np.array([probs(2), probs(0), probs(4)]),
                      pred_energy=np.array([120.0, 40.0, 7.0]))
    records.add_event(truth_point=np.array([0, 0, 0, 0, 1, 1, -1]), truth_label=np.array([0, 3]),
                      truth_energy=np.array([200.0, np.nan]), point_energy=np.ones(7),
                      pred_point=np.array([0, 0, 0, -1, -1, -1, -1]), pred_probs=np.array([probs(0)]),
                      pred_energy=np.array([180.0]))
    return records


def test_event_stats_give_the_scores_of_particle_scores() -> None:
    records = two_events()
    stats = particle_event_stats(records, CLASSES)
    assert stats.events == 2
    got = {k: float(v[0]) for k, v in weighted_particle_metrics(stats, np.ones((1, 2))).items()}
    scores = particle_scores(records, CLASSES)
    assert got["efficiency_all"] == pytest.approx(scores["finding"]["efficiency_all"]) == pytest.approx(3 / 4)
    assert got["purity_all"] == pytest.approx(scores["finding"]["purity_all"]) == pytest.approx(3 / 4)
    assert got["pq"] == pytest.approx(scores["pq"]) == pytest.approx((1 + 1 + 0.75) / (3 + 0.5 + 0.5))
    assert got["pid_accuracy_on_found"] == pytest.approx(2 / 3)
    assert got["finding_efficiency_pion"] == 0.0 and got["finding_purity_proton"] == 0.0
    assert got["electron_efficiency"] == 0.0 and np.isnan(got["electron_purity"])  # no particle called electron
    assert got["photon_efficiency"] == 1.0 and got["photon_purity"] == pytest.approx(1 / 2)
    assert got["photon_efficiency"] == scores["electron_photon"]["photon"]["efficiency"]
    for name in ("muon", "electron", "photon"):
        assert got[f"energy_bias_{name}"] == pytest.approx(scores["energy"][name]["regressed"]["bias"])
        assert got[f"energy_resolution_{name}"] == pytest.approx(scores["energy"][name]["regressed"]["resolution"])
    assert got["energy_bias_muon"] == pytest.approx(0.2) and np.isnan(got["energy_bias_pion"])  # truth E unknown
    # counting event 1 twice is scoring it twice
    twice = weighted_particle_metrics(stats, np.array([[1.0, 2.0]]))
    assert twice["efficiency_all"][0] == pytest.approx(4 / 6)
    assert twice["energy_bias_photon"][0] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="counts"):
        weighted_particle_metrics(stats, np.array([[0.5, 1.0]]))


def test_particle_bootstrap_gives_intervals_and_paired_shifts() -> None:
    def records(lose_photon: bool) -> ParticleRecords:
        rec = ParticleRecords()
        for e in range(10):
            missed = lose_photon and e % 2 == 0
            pred = np.array([0, 0, -1, -1]) if missed else np.array([0, 0, 1, 1])
            k = 1 if missed else 2
            rec.add_event(truth_point=np.array([0, 0, 1, 1]), truth_label=np.array([1, 0]),
                          truth_energy=np.array([10.0, 20.0]), point_energy=np.ones(4), pred_point=pred,
                          pred_probs=np.array([probs(1), probs(0)])[:k], pred_energy=np.array([11.0, 20.0])[:k])
        return rec

    stats = {name: particle_event_stats(records(lose), CLASSES)
             for name, lose in (("nominal", False), ("same", False), ("lossy", True))}
    metrics, diffs = bootstrap_particle_metrics(stats, n_boot=50, seed=1)
    assert metrics["nominal"]["efficiency_all"] == {"value": 1.0, "lo": 1.0, "hi": 1.0}
    assert all(d["value"] in (0.0, None) for d in diffs["same"].values())
    assert metrics["lossy"]["photon_efficiency"]["value"] == pytest.approx(0.5)
    d = diffs["lossy"]["photon_efficiency"]
    assert d["value"] == pytest.approx(-0.5) and d["lo"] is not None and d["lo"] <= -0.5 <= d["hi"] < 0
    assert metrics["lossy"]["electron_efficiency"]["value"] == 1.0
    assert metrics["nominal"]["energy_bias_electron"]["value"] == pytest.approx(0.1)
    assert metrics["lossy"]["energy_resolution_electron"]["value"] == pytest.approx(0.0)
    assert metrics == bootstrap_particle_metrics(stats, n_boot=50, seed=1)[0]  # seeded
    with pytest.raises(DetfmError, match="same, non-zero number of events"):
        bootstrap_particle_metrics({"nominal": stats["nominal"], "x": particle_event_stats(ParticleRecords(), CLASSES)})


# ----------------------------------------------------------------------------- the report
def test_report_of_a_particles_run(files: dict[str, Path], tmp_path: Path, stand_in: None) -> None:
    out = tmp_path / "syst"
    with one_torch_thread():
        report = evaluate_systematics(files["run"], files["nominal"], [], out, n_boot=20, seed=2,
                                      twin_files={"same": files["nominal"], "halved": files["halved"]})
    assert json.loads((out / "report.json").read_text()) == report
    assert set(report) == {"kind", "model", "task", "events", "variations", "metrics", "differences",
                           "flip_fraction", "scores"}
    assert report["kind"] == REPORT_KIND and report["task"] == "particles" and report["events"] == 8
    assert report["variations"] == ["nominal", "same", "halved"]
    keys = {*PARTICLE_HEADLINE, "pid_accuracy_on_found", "finding_efficiency_muon", "finding_purity_photon",
            "energy_bias_muon", "energy_resolution_proton"}
    for v in report["variations"]:
        assert keys <= set(report["metrics"][v]) and keys <= set(report["differences"][v])
        assert all(set(m) == {"value", "lo", "hi"} for m in report["metrics"][v].values())
    nominal, same, halved = (report["metrics"][v] for v in report["variations"])
    # the stand-in finds every particle it keeps, with its class: purity and PID are perfect
    assert nominal["purity_all"]["value"] == 1.0 and nominal["pid_accuracy_on_found"]["value"] == 1.0
    assert 0.5 < nominal["efficiency_all"]["value"] < 1.0  # some particles are below the size cut
    assert nominal["energy_bias_muon"]["value"] == pytest.approx(ENERGY_SCALE - 1, abs=1e-5)
    assert nominal["energy_resolution_muon"]["value"] == pytest.approx(0.0, abs=1e-5)
    # the nominal file as its own twin: no shift at all, no voxel changes class
    assert all(d["value"] in (0.0, None) for d in report["differences"]["same"].values())
    assert report["differences"]["same"]["efficiency_all"] == {"value": 0.0, "lo": 0.0, "hi": 0.0}
    assert same["efficiency_all"] == nominal["efficiency_all"]
    assert report["flip_fraction"]["same"]["mean"] == 0.0
    # half the voxels: particles fall below the cut, so fewer are found, and found ones change
    shift = report["differences"]["halved"]["efficiency_all"]
    assert halved["efficiency_all"]["value"] < nominal["efficiency_all"]["value"]
    assert shift["value"] < 0 and shift["lo"] <= shift["value"] <= shift["hi"]
    assert report["flip_fraction"]["halved"]["mean"] > 0
    assert len(report["flip_fraction"]["halved"]["per_event"]) == 8
    # every score of particle_scores per variation
    assert report["scores"]["halved"]["finding"]["truth_particles"] == report["scores"]["nominal"]["particles"]
    assert report["scores"]["nominal"]["finding"]["efficiency_all"] == pytest.approx(nominal["efficiency_all"]["value"])
    for picture in ("metrics.png", "shifts.png", "flips.png"):
        assert (out / picture).stat().st_size > 1000
    assert not (out / "reliability.png").exists()  # no per-point calibration for particles
    table = format_systematics(report)
    assert (out / "report.txt").read_text() == table + "\n"
    halved_row = next(line for line in table.splitlines() if line.startswith("halved"))
    assert f"{shift['value']:+.3f}" in halved_row
    assert "gamma eff" in table and "PQ" in table and "regressed kinetic energy" in table


# ----------------------------------------------------------------------------- command line
def test_cli_evaluates_a_finetuned_particles_run(files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    register_test_models()
    cfg = FinetuneConfig(model="pointwise_test", model_overrides={}, task="particles", labels=4, max_eval_events=2,
                         data=DataConfig(paths=(str(files["nominal"]),), rotate=False, max_points=400),
                         train=TrainConfig(steps=2, batch_size=2, warmup_steps=1, progress=False))
    run = tmp_path / "run"
    with one_torch_thread():
        run_finetune(cfg, run, progress=False)
        out = tmp_path / "cli"
        assert main(["evaluate", "--model", str(run), "--data", str(files["nominal"]), "--twins",
                     f"same={files['nominal']}", "--bootstrap", "10", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "efficiency" in printed and "same" in printed and "report.json" in printed
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert report["task"] == "particles" and report["variations"] == ["nominal", "same"]
    held = heldout_event_ids(run, files["nominal"])
    assert held is not None and 0 < len(held) < 8 and report["events"] == len(held)  # training events left out
    assert report["metrics"]["nominal"]["efficiency_all"]["value"] is not None
    assert all(d["value"] in (0.0, None) for d in report["differences"]["same"].values())
    assert report["scores"]["nominal"]["finding"]["truth_particles"] > 0
    # the run's eval.json records the decoder's size against the backbone's
    params = json.loads((run / "eval.json").read_text())["parameters"]
    assert params["backbone"] > 0 and params["decoder"] > 0 and params["target_ratio"] == pytest.approx(0.05)
    assert params["decoder_to_backbone"] == pytest.approx(params["decoder"] / params["backbone"])


def test_unsupported_tasks_are_named(files: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "event_run"
    run.mkdir()
    save_config(dataclasses.replace(FinetuneConfig(), task="event"), run / "config.yaml")
    with pytest.raises(DetfmError, match="'event' runs are not supported yet; supported tasks: semseg, particles"):
        evaluate_systematics(run, files["nominal"], ["noisy"], tmp_path / "out")
