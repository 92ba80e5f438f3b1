"""Particle-level scores on hand-made predictions: finding, panoptic quality, PID on found
particles, end-to-end efficiency / purity, muon/pion separation, energy against truth and
the calorimetric baseline, the scoring loop's scorer, and the comparison with truth-instance PID."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from detfm_testing import register_test_models

from detfm.data import EventDataset
from detfm.data.transforms.subsample import Subsample
from detfm.errors import DetfmError
from detfm.evaluate.particle_display import display_particles, render_particles
from detfm.evaluate.particles import (
    ParticleRecords,
    compare_with_truth_pid,
    parameter_counts,
    particle_scores,
)
from detfm.evaluate.scoring import _SCORERS
from detfm.models import create_model
from detfm.tasks.particles import Particles, ParticlesConfig
from detfm.tasks.registry import get_task

CLASSES = get_task("particles").class_names  # photon, electron, muon, pion, proton


def probs(label: int, p: float = 0.9, no_object: float = 0.0) -> list[float]:
    row = [(1.0 - p - no_object) / 4] * 5 + [no_object]
    row[label] = p
    return row


def one_event() -> ParticleRecords:
    """Truth: muon (pts 0-3), electron (4-7), proton (8-9). Predictions: the muon exactly, called
    a muon; the electron's points 4-5 plus 10-11 (IoU 2/6: missed), called an electron; the
    proton's points plus one more (IoU 2/3), called a pion; stuff points 12-13 in none."""
    records = ParticleRecords()
    truth_point = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1, -1, -1])
    pred_point = np.array([0, 0, 0, 0, 1, 1, -1, -1, 2, 2, 1, 1, 2, -1])
    point_energy = np.full(14, 2.0)
    records.add_event(truth_point=truth_point, truth_label=np.array([2, 1, 4]),
                      truth_energy=np.array([100.0, 50.0, np.nan]), point_energy=point_energy,
                      pred_point=pred_point, pred_probs=np.array([probs(2), probs(1), probs(3)]),
                      pred_energy=np.array([110.0, 20.0, 30.0]))
    return records


def test_finding_pq_and_pid_on_found_particles() -> None:
    s = particle_scores(one_event(), CLASSES)
    f = s["finding"]
    assert f["truth_particles"] == 3 and f["predicted_particles"] == 3 and f["matched"] == 2
    assert f["efficiency"]["muon"] == 1.0 and f["efficiency"]["electron"] == 0.0 and f["efficiency"]["proton"] == 1.0
    assert f["efficiency"]["photon"] is None and f["efficiency_all"] == pytest.approx(2 / 3)
    assert f["purity"]["muon"] == 1.0 and f["purity"]["electron"] == 0.0 and f["purity"]["pion"] == 1.0
    # PQ = (1 + 2/3) / (2 + 1/2 + 1/2); SQ = mean IoU of the pairs; RQ = 2 / 3
    assert s["pq"] == pytest.approx((1 + 2 / 3) / 3)
    assert s["panoptic"]["sq"] == pytest.approx(5 / 6) and s["panoptic"]["rq"] == pytest.approx(2 / 3)
    assert s["panoptic"]["pq_per_class"]["muon"] == 1.0 and s["panoptic"]["pq_per_class"]["proton"] == 0.0
    cm = np.array(s["confusion"])
    assert cm.sum() == 2 and cm[2, 2] == 1 and cm[4, 3] == 1  # PID on found: muon right, proton as pion
    assert s["efficiency"]["muon"] == 1.0 and s["efficiency"]["proton"] == 0.0 and s["accuracy"] == 0.5
    e2e = s["end_to_end"]
    assert e2e["efficiency"]["muon"] == 1.0 and e2e["efficiency"]["proton"] == 0.0
    assert e2e["purity"]["pion"] == 0.0 and e2e["purity"]["electron"] == 0.0
    assert s["electron_photon"]["electron"] == {"efficiency": 0.0, "purity": 0.0}
    assert s["electron_photon"]["target_met"] is False


def test_energy_against_truth_and_the_calorimetric_baseline() -> None:
    s = particle_scores(one_event(), CLASSES)
    mu = s["energy"]["muon"]
    assert mu["n"] == 1 and mu["regressed"]["bias"] == pytest.approx(0.1)
    # calorimetric: 4 points x 2 MeV = 8 MeV, scale fitted to 100 / 8 -> no bias
    assert mu["calorimetric_scale"] == pytest.approx(12.5) and mu["calorimetric"]["bias"] == pytest.approx(0.0)
    assert s["energy"]["proton"]["n"] == 0 and s["energy"]["proton"]["unknown_truth"] == 1
    assert s["energy"]["electron"]["n"] == 0  # missed: no energy score
    # resolution: half the 16-84 % width of the relative residuals
    records = ParticleRecords()
    n = 5
    records.add_event(truth_point=np.arange(n), truth_label=np.full(n, 2), truth_energy=np.full(n, 100.0),
                      point_energy=np.ones(n), pred_point=np.arange(n), pred_probs=np.array([probs(2)] * n),
                      pred_energy=np.array([80.0, 90.0, 100.0, 110.0, 120.0]))
    r = particle_scores(records, CLASSES)["energy"]["muon"]["regressed"]
    lo, hi = np.percentile([-0.2, -0.1, 0.0, 0.1, 0.2], [15.865, 84.135])
    assert r["bias"] == pytest.approx(0.0) and r["resolution"] == pytest.approx((hi - lo) / 2)


def test_excess_particles_are_missed_and_events_without_particles_count_false_ones() -> None:
    records = ParticleRecords()
    # 4 truth particles, a model with 2 queries found 2 of them
    records.add_event(truth_point=np.array([0, 0, 1, 1, 2, 2, 3, 3]), truth_label=np.array([2, 4, 2, 4]),
                      truth_energy=np.full(4, 10.0), point_energy=np.ones(8),
                      pred_point=np.array([0, 0, 1, 1, -1, -1, -1, -1]),
                      pred_probs=np.array([probs(2), probs(4)]), pred_energy=np.full(2, 10.0))
    # an event without particles, one false prediction
    records.add_event(truth_point=np.array([-1, -1]), truth_label=np.zeros(0, np.int64), truth_energy=np.zeros(0),
                      point_energy=np.ones(2), pred_point=np.array([0, 0]), pred_probs=np.array([probs(0)]),
                      pred_energy=np.ones(1))
    # an event with neither
    records.add_event(truth_point=np.array([-1]), truth_label=np.zeros(0, np.int64), truth_energy=np.zeros(0),
                      point_energy=np.ones(1), pred_point=np.array([-1]), pred_probs=np.zeros((0, 6)),
                      pred_energy=np.zeros(0))
    s = particle_scores(records, CLASSES)
    assert s["finding"]["efficiency"]["muon"] == 0.5 and s["finding"]["efficiency"]["proton"] == 0.5
    assert s["finding"]["purity"]["photon"] == 0.0 and s["finding"]["purity_all"] == pytest.approx(2 / 3)
    assert s["pq"] == pytest.approx(2 / (2 + 0.5 + 1.0))
    empty = particle_scores(ParticleRecords(), CLASSES)
    assert empty["particles"] == 0 and empty["pq"] is None and empty["finding"]["efficiency_all"] is None


def test_muon_pion_separation() -> None:
    records = ParticleRecords()
    # muons with p(mu) 0.9, 0.6; pions with p(mu) 0.7 and 0.1 (the rest on pion)
    rows = [[0, 0, 0.9, 0.1, 0, 0], [0, 0, 0.6, 0.4, 0, 0], [0, 0, 0.7, 0.3, 0, 0], [0, 0, 0.1, 0.9, 0, 0]]
    records.add_event(truth_point=np.arange(4), truth_label=np.array([2, 2, 3, 3]), truth_energy=np.ones(4),
                      point_energy=np.ones(4), pred_point=np.arange(4), pred_probs=np.array(rows),
                      pred_energy=np.ones(4))
    mp = particle_scores(records, CLASSES)["muon_pion"]
    assert mp["muons"] == 2 and mp["pions"] == 2
    assert mp["auc"] == pytest.approx(3 / 4)  # pairs (mu, pi): 0.9>0.7, 0.9>0.1, 0.6<0.7, 0.6>0.1
    assert mp["muon_as_pion"] == 0.0 and mp["pion_as_muon"] == 0.5


def test_scorer_is_registered_and_comparison_with_truth_instance_pid() -> None:
    assert "particles" in _SCORERS
    s = particle_scores(one_event(), CLASSES)
    pid = {"efficiency": {c: 0.9 for c in CLASSES}, "purity": {c: 0.8 for c in CLASSES}, "macro_f1": 0.85}
    cmp = compare_with_truth_pid(s, pid)
    assert cmp["per_class"]["muon"]["set_prediction_efficiency"] == 1.0
    assert cmp["per_class"]["muon"]["truth_instance_efficiency"] == 0.9
    assert cmp["truth_instance_macro_f1"] == 0.85 and cmp["macro_f1_on_found"] == s["macro_f1"]


def test_particle_display_draws_truth_and_prediction(tmp_path: Path, tiny_events: Path) -> None:
    coord = np.array([[0, 0, 0], [3, 1, 0], [6, 2, 1], [50, 50, 50], [53, 52, 50], [80, 10, 5]], np.float64)
    out = render_particles(coord, np.array([0, 0, 0, 1, 1, -1]), np.array([2, 1]),
                           np.array([0, 0, 0, -1, -1, 1]), np.array([2, 0]), tmp_path / "p.png",
                           class_names=CLASSES, truth_energy=np.array([100.0, np.nan]),
                           pred_energy=np.array([90.0, 5.0]), truth_start=np.zeros((2, 3)))
    assert out.stat().st_size > 10_000 and out.read_bytes()[:4] == b"\x89PNG"
    html = render_particles(coord, np.array([0, 0, 0, 1, 1, -1]), np.array([2, 1]), np.array([0, 0, 0, -1, -1, 1]),
                            np.array([2, 0]), tmp_path / "p.html", class_names=CLASSES,
                            pred_energy=np.array([90.0, 5.0]), pred_start=np.zeros((2, 3))).read_text()
    assert '"scene2"' in html and "prediction: muon 90 MeV" in html and "truth: electron" in html
    with pytest.raises(DetfmError, match=".png or .html"):
        render_particles(coord, np.zeros(6, np.int64), np.array([2]), np.zeros(6, np.int64), np.array([2]),
                         tmp_path / "p.svg", class_names=CLASSES)
    with pytest.raises(DetfmError, match="particle ids"):
        render_particles(coord, np.full(6, 3), np.array([2]), np.zeros(6, np.int64), np.array([2]),
                         tmp_path / "q.png", class_names=CLASSES)
    register_test_models()
    task = Particles(create_model("pointwise_test"), ParticlesConfig(hidden=16, num_heads=2, num_queries=4))
    sample = EventDataset([tiny_events], transform=Subsample(200))[0]
    assert display_particles(task, sample, tmp_path / "e.png").is_file()
    assert task.training  # the task's mode is restored


def test_parameter_counts_split_the_decoder_from_the_backbone() -> None:
    register_test_models()
    backbone = create_model("pointwise_test")
    task = Particles(backbone, ParticlesConfig(hidden=16, num_heads=2, num_queries=4, decoder_blocks=1))
    wider = Particles(create_model("pointwise_test"), ParticlesConfig(hidden=32, num_heads=2, num_queries=4,
                                                                      decoder_blocks=1))
    counts = parameter_counts(task)
    assert counts["backbone"] == sum(p.numel() for p in backbone.parameters())
    assert counts["backbone"] + counts["decoder"] == sum(p.numel() for p in task.parameters())
    assert counts["decoder_to_backbone"] == pytest.approx(counts["decoder"] / counts["backbone"])
    assert counts["target_ratio"] == pytest.approx(1 / 20)
    assert parameter_counts(wider)["decoder"] > counts["decoder"]  # the decoder grows with its width
