"""`detfm show --predictions` with the per-particle rows of a particles run: the event coloured
by predicted particle next to the truth particles (PNG and HTML), and its errors."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import matplotlib.figure
import numpy as np
import pytest
from detfm_testing import register_test_models

from detfm.cli import main
from detfm.data import EventDataset, collate
from detfm.evaluate.particle_display import read_particle_predictions
from detfm.models import create_model
from detfm.recipes.particle_predict import write_particle_predictions
from detfm.tasks.particles import Particles, ParticlesConfig, particle_targets
from detfm.tasks.registry import get_task

CLASSES = get_task("particles").class_names  # photon, electron, muon, pion, proton
EVENT = 2


def write_rows(path: Path, dataset: EventDataset, rows: Callable[[int], dict[str, np.ndarray]],
               events: range) -> Path:
    """A particles prediction file in the layout of `detfm predict`, with hand-made rows."""
    ints, floats = h5py.vlen_dtype(np.int64), h5py.vlen_dtype(np.float32)
    with h5py.File(path, "w") as h5:
        dtypes = {"particle_probs": floats, "particle_score": floats, "particle_pred": h5py.vlen_dtype(np.uint8),
                  "particle_energy": floats, "particle_start": floats, "particle_sizes": ints,
                  "particle_points": ints, "particle_query": ints}
        sets = {name: h5.create_dataset(name, (len(events),), dtype=dt) for name, dt in dtypes.items()}
        index = h5.create_dataset("event_index", (len(events),), dtype=np.int64)
        count = h5.create_dataset("n_points", (len(events),), dtype=np.int64)
        h5.attrs.update({"task": "particles", "classes": json.dumps(list(CLASSES)),
                         "energy_threshold": dataset.energy_threshold})
        for r, e in enumerate(events):
            row = rows(e)
            k = len(row["pred"])
            values = {"particle_probs": np.full(5 * k, 0.2), "particle_score": np.ones(k),
                      "particle_pred": row["pred"], "particle_energy": row["energy"],
                      "particle_start": np.zeros(3 * k), "particle_sizes": row["sizes"],
                      "particle_points": row["points"], "particle_query": np.arange(k)}
            for name, value in values.items():
                sets[name][r] = np.asarray(value).astype(sets[name].dtype.metadata["vlen"])
            index[r], count[r] = e, dataset[e].n_points
    return path


@pytest.fixture(scope="module")
def predictions(tiny_events: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Hand-made rows: in every event, its first two truth particles found, called a proton of
    123 MeV and a photon of 45 MeV; one file for all events, one for events 0-2 only."""
    dataset = EventDataset([tiny_events], min_points=0, labels=True)

    def rows(e: int) -> dict[str, np.ndarray]:
        truth = particle_targets(collate([dataset[e]]))
        owner = truth.point_particle.numpy()
        members = [np.flatnonzero(owner == k) for k in range(min(2, len(truth)))]
        return {"pred": np.array([4, 0][:len(members)]), "energy": np.array([123.0, 45.0][:len(members)]),
                "sizes": np.array([len(m) for m in members], np.int64),
                "points": np.concatenate(members) if members else np.zeros(0, np.int64)}

    root = tmp_path_factory.mktemp("show_particles")
    truth = particle_targets(collate([dataset[EVENT]]))
    return {"all": write_rows(root / "all.h5", dataset, rows, range(len(dataset))),
            "first3": write_rows(root / "first3.h5", dataset, rows, range(3)),
            "truth_labels": truth.label.tolist(), "truth_energy": truth.energy.tolist()}


@pytest.fixture
def saved_figures(monkeypatch: pytest.MonkeyPatch) -> list[matplotlib.figure.Figure]:
    """Every matplotlib figure saved while the test runs."""
    figures: list[matplotlib.figure.Figure] = []
    original = matplotlib.figure.Figure.savefig

    def spy(self: matplotlib.figure.Figure, *args: Any, **kwargs: Any) -> Any:
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return figures


def test_png_draws_truth_and_predicted_particles(tiny_events: Path, predictions: dict[str, Any], tmp_path: Path,
                                                 saved_figures: list[matplotlib.figure.Figure],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "e.png"
    assert main(["show", str(tiny_events), "--event", str(EVENT), "--predictions", str(predictions["all"]),
                 "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert out.read_bytes()[:4] == b"\x89PNG" and out.stat().st_size > 10_000
    (fig,) = saved_figures
    axes = fig.axes
    assert len(axes) == 6  # two rows (truth, prediction) of three projections
    assert axes[0].get_title(loc="left").startswith("truth: ")
    assert axes[3].get_title(loc="left").startswith("prediction: 2 particles, 2 found")
    legends = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in (axes[2], axes[5])]
    assert legends[1] == ["stuff / none", "proton 123 MeV", "photon 45 MeV"]
    first = CLASSES[predictions["truth_labels"][0]]
    assert legends[0][0] == "stuff / none" and legends[0][1].startswith(first)
    assert len(legends[0]) == 1 + min(len(predictions["truth_labels"]), 12)


def test_html_has_two_scenes_and_a_legend_entry_per_particle(tiny_events: Path, predictions: dict[str, Any],
                                                              tmp_path: Path) -> None:
    out = tmp_path / "e.html"
    assert main(["show", str(tiny_events), "--event", str(EVENT), "--predictions", str(predictions["all"]),
                 "--out", str(out)]) == 0
    html = out.read_text().replace("\\u002f", "/")  # plotly escapes "/" in its JSON
    assert '"scene2"' in html and '"scene3"' not in html  # truth and prediction side by side
    names = set(re.findall(r'"name":"([^"]+)"', html))
    assert {"prediction: proton 123 MeV", "prediction: photon 45 MeV", "prediction: stuff / none",
            "truth: stuff / none"} <= names
    assert any(n.startswith(f"truth: {CLASSES[predictions['truth_labels'][0]]}") for n in names)
    assert "plotly_relayout" in html  # the two views rotate together


def test_rows_of_the_prediction_writer_are_drawn(tiny_events: Path, tmp_path: Path) -> None:
    register_test_models()
    task = Particles(create_model("pointwise_test"), ParticlesConfig(hidden=16, num_heads=2, num_queries=4)).eval()
    dataset = EventDataset([tiny_events], min_points=0, labels=False).subset(range(4))
    preds = tmp_path / "p.h5"
    write_particle_predictions(task, dataset, preds, {"energy_threshold": dataset.energy_threshold,
                                                      "classes": json.dumps(list(CLASSES))},
                               batch_size=2, dtype="float32", device="cpu", progress=False)
    rows = read_particle_predictions(preds, 3)
    assert rows.n_points == dataset[3].n_points and rows.point_particle.shape == (rows.n_points,)
    assert rows.start.shape == (len(rows.label), 3)
    assert main(["show", str(tiny_events), "--event", "3", "--predictions", str(preds),
                 "--out", str(tmp_path / "e.html")]) == 0
    assert '"scene2"' in (tmp_path / "e.html").read_text()


def test_errors_name_the_event_and_the_file(tiny_events: Path, predictions: dict[str, Any], tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    def error(*argv: str) -> str:
        assert main(["show", str(tiny_events), *argv]) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "e.png")
    assert "event 99 out of range; the file has 20 event(s) (valid indices: 0..19)" in error(
        "--event", "99", "--predictions", str(predictions["all"]), "--out", out)
    msg = error("--event", "5", "--predictions", str(predictions["first3"]), "--out", out)
    assert "first3.h5: no predictions for event 5 (the file holds events 0..2)" in msg
    assert "no such file" in error("--predictions", str(tmp_path / "missing.h5"), "--out", out)
    assert "use a .png or .html file" in error("--predictions", str(predictions["all"]), "--out",
                                               str(tmp_path / "e.svg"))
    # rows made for another file: the point counts disagree
    other = tmp_path / "other.h5"
    with h5py.File(predictions["all"]) as src, h5py.File(other, "w") as dst:
        for name in src:
            src.copy(name, dst)
        dst.attrs.update(src.attrs)
        dst["n_points"][EVENT] = dst["n_points"][EVENT] + 1
    assert "were the predictions made for this file?" in error("--event", str(EVENT), "--predictions", str(other),
                                                               "--out", out)
    assert not (tmp_path / "e.png").exists()
