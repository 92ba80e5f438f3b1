"""Event display: HTML content and point counts, PNG views and legends, subsampling, errors."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detfm.errors import DataFormatError, DetfmError
from detfm.evaluate import display
from detfm.evaluate.display import HTML_MAX_POINTS, render_event, show_file
from detfm.io import Event, layout, write_events

SEMANTIC_NAMES = ["shower", "track", "Michel", "delta", "low-energy"]
PID_NAMES = ["photon", "electron", "muon", "pion", "proton", "none"]

# (n_points, group, semantic, pid) of each cluster; row 0 is the low-energy bucket.
CLUSTERS = [
    (7, -1, layout.LOW_ENERGY, layout.PID_NONE),
    (40, 0, layout.SHOWER, layout.PID_PHOTON),
    (30, 1, layout.SHOWER, layout.PID_ELECTRON),
    (50, 2, layout.TRACK, layout.PID_MUON),
    (12, 3, layout.MICHEL, layout.PID_ELECTRON),
    (5, 2, layout.DELTA, layout.PID_ELECTRON),
    (25, 4, layout.TRACK, layout.PID_PION),
    (20, 5, layout.TRACK, layout.PID_PROTON),
]


def make_event(scale: int = 1, seed: int = 0) -> Event:
    """Straight segments with known labels; ``scale`` multiplies every cluster's size."""
    rng = np.random.default_rng(seed)
    points, rows = [], []
    for n, group, sem, pid in CLUSTERS:
        n *= scale
        start = rng.uniform(200, 500, 3)
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        t = rng.uniform(0, 100, n)[:, None]
        p = np.zeros((n, layout.N_POINT), np.float32)
        p[:, :3] = np.clip(np.rint(start + t * direction), 0, layout.BOX_VOXELS - 1)
        p[:, layout.VALUE] = rng.uniform(0.15, 30.0, n)
        points.append(p)
        rows.append([n, group, group, 0 if group >= 0 else -1, sem, pid])
    clusters = np.array(rows, np.float32)
    return Event(np.concatenate(points), clusters, np.zeros((len(rows), layout.N_CLUSTER_EXTRA), np.float32))


def plotly_data(html: str) -> tuple[list[dict], dict]:
    """The data traces and layout handed to Plotly.newPlot in a written HTML file."""
    start = html.index("Plotly.newPlot(")
    after_id = html.index(",", start) + 1  # skip the div id argument
    decoder = json.JSONDecoder()
    rest = html[after_id:].lstrip()
    data, end = decoder.raw_decode(rest)
    layout_json, _ = decoder.raw_decode(rest[end:].lstrip().removeprefix(",").lstrip())
    return data, layout_json


def values(arr: object) -> np.ndarray:
    """Decode a plotly array (plain list, or base64 typed array ``{"dtype", "bdata"}``)."""
    if isinstance(arr, dict):
        return np.frombuffer(base64.b64decode(arr["bdata"]), dtype=np.dtype(arr["dtype"]))
    return np.asarray(arr)


def png_size(path: Path) -> tuple[int, int]:
    raw = path.read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    assert raw[12:16] == b"IHDR"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def legend_labels(container: object) -> list[str]:
    return [t.get_text() for legend in container.legends for t in legend.get_texts()]


# ----------------------------------------------------------------------------- HTML
def test_html_semantic_has_every_class_with_its_points_and_no_network(tmp_path: Path) -> None:
    ev = make_event()
    out = render_event(ev, tmp_path / "ev.html", title="my event")
    html = out.read_text(encoding="utf-8")
    # self-contained: plotly.js is embedded inline, no script or stylesheet is fetched
    assert re.search(r"<script[^>]*\bsrc=", html) is None
    assert re.search(r"<link[^>]*\bhref=", html) is None
    assert 'src="http' not in html
    assert re.search(r"plotly\.js v\d", html), "plotly.js bundle should be embedded"
    data, lay = plotly_data(html)
    names = [trace["name"] for trace in data]
    assert sorted(names) == sorted(SEMANTIC_NAMES)
    counts = {trace["name"]: len(values(trace["x"])) for trace in data}
    expected = {name: int((ev.semantic == k).sum()) for k, name in enumerate(SEMANTIC_NAMES)}
    assert counts == expected
    assert sum(counts.values()) == ev.n_points
    assert lay["title"]["text"] == "my event"
    assert lay["scene"]["aspectmode"] == "data"
    # the drawn coordinates are the event's, class by class
    track = next(t for t in data if t["name"] == "track")
    np.testing.assert_array_equal(values(track["x"]), ev.coords[ev.semantic == layout.TRACK, 0])


def test_html_pid_names_and_counts(tmp_path: Path) -> None:
    ev = make_event()
    data, _ = plotly_data(render_event(ev, tmp_path / "pid.html", color="pid").read_text())
    counts = {t["name"]: len(values(t["x"])) for t in data}
    assert counts == {name: int((ev.pid == k).sum()) for k, name in enumerate(PID_NAMES)}


def test_html_energy_log_colour_scale_in_mev(tmp_path: Path) -> None:
    ev = make_event()
    data, _ = plotly_data(render_event(ev, tmp_path / "e.html", color="energy").read_text())
    assert len(data) == 1
    marker = data[0]["marker"]
    assert marker["colorbar"]["title"]["text"] == "energy [MeV]"
    np.testing.assert_allclose(values(marker["color"]), np.log10(ev.energy), rtol=1e-5)
    # ticks sit at round MeV values inside 0.15..30 MeV, labelled in MeV, placed at log10
    ticktext = marker["colorbar"]["ticktext"]
    assert "1" in ticktext and "10" in ticktext
    np.testing.assert_allclose(marker["colorbar"]["tickvals"], np.log10([float(t) for t in ticktext]))


def test_html_instance_one_distinct_colour_per_group(tmp_path: Path) -> None:
    ev = make_event()
    data, _ = plotly_data(render_event(ev, tmp_path / "i.html", color="instance").read_text())
    groups = sorted({row[1] for row in CLUSTERS})
    assert sorted(t["name"] for t in data) == sorted(
        ["no group" if g < 0 else f"group {g}" for g in groups])
    colors = [t["marker"]["color"] for t in data]
    assert len(set(colors)) == len(colors)
    # group 2 holds the muon track and its delta ray: one trace, both clusters
    g2 = next(t for t in data if t["name"] == "group 2")
    assert len(values(g2["x"])) == 50 + 5


def test_html_subsamples_above_cap_with_fixed_seed_and_says_so(tmp_path: Path) -> None:
    ev = make_event(scale=10)  # 1,890 points
    a = render_event(ev, tmp_path / "a.html", max_html_points=500).read_text()
    b = render_event(ev, tmp_path / "b.html", max_html_points=500).read_text()
    data, lay = plotly_data(a)
    assert sum(len(values(t["x"])) for t in data) == 500
    assert "random 500 of 1,890 points" in lay["title"]["text"]
    # same seed, same points: two renders give the same picture
    assert [values(t["x"]).tolist() for t in data] == [values(t["x"]).tolist() for t in plotly_data(b)[0]]


def test_large_event_renders_with_default_cap(tmp_path: Path) -> None:
    ev = make_event(scale=530)  # 100,170 points
    assert ev.n_points > 100_000
    html = render_event(ev, tmp_path / "big.html").read_text()
    png = render_event(ev, tmp_path / "big.png")
    data, lay = plotly_data(html)
    assert sum(len(values(t["x"])) for t in data) == HTML_MAX_POINTS
    assert f"{HTML_MAX_POINTS:,} of {ev.n_points:,}" in lay["title"]["text"]
    assert png_size(png) == (1050, 950)


def test_html_truth_and_prediction_side_by_side(tmp_path: Path) -> None:
    ev = make_event()
    pred = ev.semantic.copy()
    pred[ev.semantic == layout.MICHEL] = layout.TRACK  # 12 of 189 points wrong
    html = render_event(ev, tmp_path / "p.html", predicted=pred).read_text()
    data, lay = plotly_data(html)
    truth = [t for t in data if t.get("scene", "scene") == "scene"]
    prediction = [t for t in data if t.get("scene") == "scene2"]
    assert sum(len(values(t["x"])) for t in truth) == ev.n_points
    assert sum(len(values(t["x"])) for t in prediction) == ev.n_points
    pred_counts = {t["name"]: len(values(t["x"])) for t in prediction}
    assert "Michel" not in pred_counts and pred_counts["track"] == 50 + 25 + 20 + 12
    # each class is listed once in the shared legend
    listed = [t["name"] for t in data if t.get("showlegend", True)]
    assert sorted(listed) == sorted(SEMANTIC_NAMES)
    titles = [a["text"] for a in lay["annotations"]]
    assert any(t.startswith("truth") for t in titles)
    assert any("93.7% of points agree" in t for t in titles)  # 177 / 189
    assert "scene2.camera" in html  # rotating one panel rotates the other


# ----------------------------------------------------------------------------- PNG
def test_png_views_and_legend_names(tmp_path: Path) -> None:
    ev = make_event()
    fig = display._build_matplotlib(ev, display._panels(ev, "semantic", None), "t")
    assert sorted(legend_labels(fig)) == sorted(SEMANTIC_NAMES)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["3D", "xy projection", "xz projection", "yz projection"]
    assert fig.axes[0].name == "3d"
    # every point appears in every 2D projection
    for ax in fig.axes[1:]:
        assert sum(len(c.get_offsets()) for c in ax.collections) == ev.n_points
    out = render_event(ev, tmp_path / "ev.png", color="pid")
    assert png_size(out) == (1050, 950)
    assert out.stat().st_size > 20_000


def test_png_pid_and_instance_legends(tmp_path: Path) -> None:
    ev = make_event()
    fig = display._build_matplotlib(ev, display._panels(ev, "pid", None), "t")
    assert sorted(legend_labels(fig)) == sorted(PID_NAMES)
    fig = display._build_matplotlib(ev, display._panels(ev, "instance", None), "t")
    assert legend_labels(fig)[0] == "no group"
    assert "group 5" in legend_labels(fig)


def test_png_energy_has_log_colour_bar_in_mev() -> None:
    from matplotlib.colors import LogNorm

    ev = make_event()
    fig = display._build_matplotlib(ev, display._panels(ev, "energy", None), "t")
    colorbars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(colorbars) == 1
    assert colorbars[0].get_xlabel() == "voxel energy [MeV]"
    mappable = fig.axes[1].collections[0]
    assert isinstance(mappable.norm, LogNorm)
    assert mappable.norm.vmin == pytest.approx(float(ev.energy.min()))
    assert mappable.norm.vmax == pytest.approx(float(ev.energy.max()))


def test_png_truth_and_prediction_side_by_side(tmp_path: Path) -> None:
    ev = make_event()
    pred = np.full(ev.n_points, layout.SHOWER)
    fig = display._build_matplotlib(ev, display._panels(ev, "energy", pred), "t")
    truth, prediction = fig.subfigs
    assert truth.get_suptitle() == "truth (energy)"
    assert prediction.get_suptitle().startswith("prediction (semantic, 37.0% of points agree")  # 70/189
    assert legend_labels(prediction) == ["shower"]
    assert png_size(render_event(ev, tmp_path / "p.png", predicted=pred)) == (2100, 950)


# ----------------------------------------------------------------------------- files and errors
def test_show_file_negative_index_and_title(tmp_path: Path) -> None:
    path = tmp_path / "events.h5"
    write_events(path, [make_event(seed=s) for s in range(3)])
    out = show_file(path, -1, tmp_path / "last.html", color="pid")
    _, lay = plotly_data(out.read_text())
    assert lay["title"]["text"] == "events.h5 - event 2"


def test_show_file_out_of_range_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "events.h5"
    write_events(path, [make_event(seed=s) for s in range(3)])
    with pytest.raises(DetfmError, match=r"event 3 out of range; the file has 3 event\(s\) \(valid indices: 0..2\)"):
        show_file(path, 3, tmp_path / "x.png")
    with pytest.raises(DataFormatError, match="file not found"):
        show_file(tmp_path / "nope.h5", 0, tmp_path / "x.png")
    with pytest.raises(DetfmError, match="unknown extension"):  # checked before the file is read
        show_file(tmp_path / "nope.h5", 0, tmp_path / "x.pdf")
    assert not (tmp_path / "x.png").exists()


def test_show_file_errors_name_the_file_and_event(tmp_path: Path) -> None:
    path = tmp_path / "events.h5"
    write_events(path, [make_event(), Event.empty()])
    with pytest.raises(DetfmError, match=r"events\.h5: event 1 has no points; nothing to draw"):
        show_file(path, 1, tmp_path / "x.html")


@pytest.mark.parametrize("name", ["ev.jpg", "ev", "ev.svg"])
def test_unknown_extension(tmp_path: Path, name: str) -> None:
    with pytest.raises(DetfmError, match=r"unknown extension .*use \.html .* or \.png"):
        render_event(make_event(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_unknown_colour_scheme(tmp_path: Path) -> None:
    with pytest.raises(DetfmError, match="unknown colour scheme 'rainbow'; choose one of semantic, energy"):
        render_event(make_event(), tmp_path / "ev.png", color="rainbow")  # type: ignore[arg-type]


def test_bad_predicted_arrays(tmp_path: Path) -> None:
    ev = make_event()
    n = ev.n_points
    with pytest.raises(DetfmError, match=rf"shape \({n}, 5\).*take the argmax"):
        render_event(ev, tmp_path / "p.png", predicted=np.zeros((n, 5)))
    with pytest.raises(DetfmError, match=rf"shape \(10,\), expected \({n},\)"):
        render_event(ev, tmp_path / "p.png", predicted=np.zeros(10, np.int64))
    with pytest.raises(DetfmError, match=r"outside the semantic classes 0..4 \(e.g. 7\)"):
        render_event(ev, tmp_path / "p.png", predicted=np.full(n, 7))
    with pytest.raises(DetfmError, match="integer class ids"):
        render_event(ev, tmp_path / "p.png", predicted=np.full(n, 0.5))
    assert list(tmp_path.iterdir()) == []


def test_bad_events(tmp_path: Path) -> None:
    with pytest.raises(DetfmError, match="no points"):
        render_event(Event.empty(), tmp_path / "e.html")
    ev = make_event()
    nan_points = ev.points.copy()
    nan_points[3, layout.VALUE] = np.nan
    with pytest.raises(DataFormatError, match="1 non-finite voxel energies"):
        render_event(Event(nan_points, ev.clusters, ev.cluster_extra), tmp_path / "e.png", color="energy")
    short = ev.clusters.copy()
    short[1, layout.C_NPOINTS] -= 1
    with pytest.raises(DataFormatError, match=f"add up to {ev.n_points - 1} points but the event has {ev.n_points}"):
        render_event(Event(ev.points, short, ev.cluster_extra), tmp_path / "e.png")


def test_failed_render_keeps_existing_output_and_inputs_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "ev.png"
    out.write_bytes(b"previous picture")
    ev = make_event()
    before = (ev.points.copy(), ev.clusters.copy())
    pred = ev.semantic.copy()
    pred_before = pred.copy()
    with pytest.raises(DetfmError):
        render_event(ev, out, predicted=pred[:-1])
    assert out.read_bytes() == b"previous picture"
    render_event(ev, out, color="energy", predicted=pred)
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ev.png"]  # no temporary left behind
    np.testing.assert_array_equal(ev.points, before[0])
    np.testing.assert_array_equal(ev.clusters, before[1])
    np.testing.assert_array_equal(pred, pred_before)


def test_importing_display_does_not_import_plotting_libraries() -> None:
    code = ("import sys, detfm.evaluate.display; "
            "print(sorted(m for m in ('plotly', 'matplotlib') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
