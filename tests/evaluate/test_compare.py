"""`detfm compare`: distributions, two-sample tests, unlabeled files, outputs and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from detfm.cli import main
from detfm.errors import DataFormatError, DetfmError
from detfm.evaluate.compare import (
    COMPARE_KIND,
    compare_section,
    run_compare,
    write_compare,
)
from detfm.evaluate.compare_stats import (
    shower_profile,
    track_residual_range,
    weighted_ks,
)
from detfm.io import Event, layout, read_events, write_events
from detfm.sim.simulate import SimConfig, simulate_to_file

KEYS = ["points_per_event", "energy_per_voxel", "energy_per_event", "class_shares", "cluster_sizes",
        "track_dedx", "shower_longitudinal", "shower_lateral"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compare")
    out = {}
    for name, seed, det in (("a", 1, "nominal"), ("b", 2, "nominal"), ("like", 3, "data_like")):
        out[name] = root / f"{name}.h5"
        simulate_to_file(SimConfig(events=40, seed=seed, detector=det), out[name], progress=False)
    events = read_events(out["a"])
    scaled = []
    unlabeled = []
    for ev in events:
        p = ev.points.copy()
        p[:, layout.VALUE] *= 2.0
        scaled.append(Event(p, ev.clusters, ev.cluster_extra))
        c = ev.clusters.copy()
        c[:, layout.C_SEMANTIC] = -1
        c[:, layout.C_PID] = -1
        unlabeled.append(Event(ev.points, c, ev.cluster_extra))
    out["scaled"] = root / "scaled.h5"
    write_events(out["scaled"], scaled)
    out["unlabeled"] = root / "unlabeled.h5"
    write_events(out["unlabeled"], unlabeled)
    return out


def by_key(c) -> dict:  # noqa: ANN001
    return {r.key: r for r in c.results}


def test_every_distribution_is_compared_with_a_test(files: dict[str, Path]) -> None:
    c = run_compare([files["a"], files["like"]])
    res = by_key(c)
    assert list(res) == KEYS
    for key in KEYS:
        assert res[key].skipped is None, key
        assert res[key].png and res[key].png[:8] == b"\x89PNG\r\n\x1a\n"
        (row,) = res[key].rows
        assert 0.0 <= row["p_value"] <= 1.0 and np.isfinite(row["statistic"]), key
    assert c.files[0].tracks > 10 and c.files[0].showers > 10
    assert res["class_shares"].test == "chi-square" and res["points_per_event"].test == "KS"


def test_a_file_against_itself_passes_and_a_scaled_one_fails(files: dict[str, Path]) -> None:
    same = by_key(run_compare([files["a"], files["a"]]))
    for key in KEYS:
        assert same[key].rows[0]["p_value"] == pytest.approx(1.0), key
        assert same[key].rows[0]["statistic"] == pytest.approx(0.0, abs=1e-12), key
    # twice the energy in every voxel: energy distributions differ, labels do not
    scaled = by_key(run_compare([files["a"], files["scaled"]]))
    assert scaled["energy_per_voxel"].rows[0]["p_value"] < 1e-10
    assert scaled["energy_per_event"].rows[0]["p_value"] < 1e-3
    assert scaled["energy_per_event"].rows[0]["statistic"] > 0.3
    # two independent nominal samples agree on what does not depend on event-to-event luck
    other = by_key(run_compare([files["a"], files["b"]]))
    assert other["energy_per_event"].rows[0]["p_value"] > 1e-3


def test_unlabeled_files_skip_what_needs_labels(files: dict[str, Path]) -> None:
    c = run_compare([files["a"], files["unlabeled"]])
    res = by_key(c)
    assert not c.files[1].labeled and c.files[0].labeled
    for key in KEYS[:3]:
        assert res[key].skipped is None and res[key].rows[0]["p_value"] == pytest.approx(1.0)
    for key in KEYS[3:]:
        assert res[key].skipped and "labels" in res[key].skipped and res[key].png is None
    # with two labeled files and one unlabeled, labeled distributions use the labeled two
    res = by_key(run_compare([files["a"], files["unlabeled"], files["like"]]))
    assert res["class_shares"].skipped is None
    assert [r["label"] for r in res["class_shares"].rows] == ["like.h5"]
    assert [r["label"] for r in res["points_per_event"].rows] == ["unlabeled.h5", "like.h5"]


def test_cli_writes_page_json_and_pictures(files: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    assert main(["compare", str(files["a"]), str(files["like"]), "--out", str(out)]) == 0
    assert "Energy per voxel" in capsys.readouterr().out
    report = json.loads((out / "compare.json").read_text())
    assert report["kind"] == COMPARE_KIND and len(report["distributions"]) == len(KEYS)
    for d in report["distributions"]:
        assert (out / d["png"]).is_file()
    page = (out / "compare.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(KEYS)
    # existing outputs need --overwrite; a single .html page works too
    assert main(["compare", str(files["a"]), str(files["like"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    single = tmp_path / "one.html"
    assert main(["compare", str(files["a"]), str(files["unlabeled"]), "--out", str(single)]) == 0
    assert single.is_file() and "skipped" in single.read_text()


def test_compare_section_is_a_self_contained_fragment(files: dict[str, Path]) -> None:
    frag = compare_section([str(files["a"]), str(files["like"])])
    assert frag.startswith('<div class="detfm-compare">') and frag.endswith("</div>")
    assert "<html" not in frag and "<script" not in frag
    assert frag.count('src="data:image/png;base64,') == len(KEYS)
    assert "http://" not in frag and "https://" not in frag


def test_bad_input(files: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(DetfmError, match="at least two files"):
        run_compare([files["a"]])
    empty = tmp_path / "empty.h5"
    write_events(empty, [])
    with pytest.raises(DetfmError, match="no events"):
        run_compare([files["a"], empty])
    ev = read_events(files["a"])[:3]
    p = ev[1].points.copy()
    p[5, layout.VALUE] = np.nan
    nan = tmp_path / "nan.h5"
    write_events(nan, [ev[0], Event(p, ev[1].clusters, ev[1].cluster_extra), ev[2]])
    with pytest.raises(DataFormatError, match="nan.h5") as info:
        run_compare([files["a"], nan])
    assert "event 1" in str(info.value)
    other = tmp_path / "v2.h5"
    write_events(other, ev)
    with h5py.File(other, "r+") as h5:
        h5.attrs["format_version"] = "2"
    with pytest.raises(DetfmError, match="different layout versions"):
        run_compare([files["a"], other])
    with pytest.raises(DataFormatError, match="file not found"):
        run_compare([files["a"], tmp_path / "missing.h5"])
    with pytest.raises(DetfmError, match="energy-threshold"):
        run_compare([files["a"], files["b"]], energy_threshold=-1)
    assert main(["compare", str(files["a"]), str(nan), "--out", str(tmp_path / "x.html")]) == 2
    assert not (tmp_path / "x.html").exists()


def test_stopping_track_and_shower_geometry() -> None:
    # a straight track along x, energy rising towards x = 40 (the stopping end)
    x = np.arange(10, 41, dtype=np.float64)
    xyz = np.stack([x, np.full_like(x, 100), np.full_like(x, 100)], axis=1)
    e = 1.0 + (x - 10) / 10
    rr = track_residual_range(xyz, e)
    assert rr is not None
    np.testing.assert_allclose(rr, (40 - x) * layout.VOXEL_SIZE_CM, atol=1e-9)
    assert track_residual_range(xyz[::-1], e[::-1]) is not None
    assert track_residual_range(xyz - [10, 0, 0], e) is None  # touches the wall: may leave
    assert track_residual_range(xyz[:5], e[:5]) is None       # too short
    # a shower: a cone opening along +z from the vertex at z = 100
    rng = np.random.default_rng(0)
    z = rng.uniform(100, 160, 400)
    r = rng.normal(0, 1, (400, 2)) * (z - 100)[:, None] * 0.05
    pts = np.column_stack([200 + r[:, 0], 200 + r[:, 1], z])
    t, lat = shower_profile(pts, np.full(400, 0.5), np.array([200.0, 200.0, 100.0]))
    assert t.min() == pytest.approx(0.0, abs=1e-9) and t.max() * 14.0 == pytest.approx(
        (z.max() - z.min()) * layout.VOXEL_SIZE_CM, rel=0.05)
    assert np.corrcoef(t, lat)[0, 1] > 0.3  # wider further down


def test_weighted_ks_matches_plain_ks_with_unit_weights() -> None:
    from scipy import stats

    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 400)
    d, p = weighted_ks(a, np.ones(300), b, np.ones(400))
    ref = stats.ks_2samp(a, b, method="asymp")
    assert d == pytest.approx(ref.statistic, rel=1e-9)
    assert p == pytest.approx(ref.pvalue, rel=0.3)  # both asymptotic; scipy adds a finite-size term
    # weights matter: doubling the weight of the largest values moves the CDF
    w = np.where(a > 1, 2.0, 1.0)
    assert weighted_ks(a, w, a, np.ones(300))[0] > 0.0


def test_write_compare_refuses_to_replace_without_overwrite(files: dict[str, Path], tmp_path: Path) -> None:
    c = run_compare([files["a"], files["b"]], max_events=5)
    assert [f.events for f in c.files] == [5, 5]
    page = write_compare(c, tmp_path / "page.html")
    with pytest.raises(DetfmError, match="exists"):
        write_compare(c, page)
    assert write_compare(c, page, overwrite=True) == page
