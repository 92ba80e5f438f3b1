"""Feature pictures: PCA colours separate what the features separate; PNGs are written
atomically; bad requests get clear errors."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from detfm_testing import TINY_NARROW
from torch import nn

from detfm.data import EventDataset, PackedBatch
from detfm.errors import DetfmError
from detfm.evaluate.feature_viz import MAX_EVENTS, feature_pca_figure, pca_colors
from detfm.models import BackboneOutput, create_model
from detfm.sim.simulate import SimConfig, simulate_to_file


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("viz") / "sim.h5"
    simulate_to_file(SimConfig(events=4, seed=1), path, progress=False)
    return path


class OneHotBackbone(nn.Module):
    """Features = one-hot of the true semantic class (+ optional NaN), one feature vector per point."""

    def __init__(self, nan: bool = False) -> None:
        super().__init__()
        self.nan = nan

    def forward_features(self, batch: PackedBatch) -> BackboneOutput:
        assert batch.semantic is not None
        p = batch.num_points
        f = nn.functional.one_hot(batch.semantic, 5).float()
        if self.nan:
            f[0, 0] = float("nan")
        return BackboneOutput(point=f, local=f[:, :0])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # IHDR chunk
    return width, height


# ----------------------------------------------------------------------------- PCA colours
def test_pca_recovers_known_variances_and_axes() -> None:
    rng = np.random.default_rng(0)
    sd = np.array([3.0, 2.0, 1.0, 0.1])
    x = rng.normal(size=(20_000, 4)) * sd
    colors = pca_colors(x)
    # Expected explained-variance shares 9/14.01, 4/14.01, 1/14.01; 2 % tolerance for
    # the sampling error of 20k points.
    np.testing.assert_allclose(colors.explained, sd[:3] ** 2 / (sd**2).sum(), rtol=0.02)
    np.testing.assert_allclose(np.abs(colors.components[:, :3]), np.eye(3), atol=0.02)
    assert (colors.components[np.arange(3), np.arange(3)] > 0).all()  # sign convention
    assert colors.rgb.shape == (20_000, 3) and colors.rgb.dtype == np.float32
    assert colors.rgb.min() >= 0.0 and colors.rgb.max() <= 1.0
    # Red follows the first axis.
    assert np.corrcoef(colors.rgb[:, 0], x[:, 0])[0, 1] > 0.95


def test_pca_colours_separate_classes_and_ignore_row_order() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 4, 4000)
    x = np.eye(4)[y] + 0.02 * rng.normal(size=(4000, 4))
    colors = pca_colors(x)
    means = np.array([colors.rgb[y == k].mean(axis=0) for k in range(4)])
    spread = max(float(colors.rgb[y == k].std(axis=0).max()) for k in range(4))
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(4) for j in range(i + 1, 4)]
    assert min(gaps) > 0.5 and spread < 0.05
    assert colors.explained.sum() > 0.95  # 4 centred one-hot classes span 3 dimensions
    perm = rng.permutation(4000)
    np.testing.assert_allclose(pca_colors(x[perm]).rgb, colors.rgb[perm], atol=1e-5)


def test_pca_degenerate_inputs_give_grey_channels() -> None:
    rng = np.random.default_rng(2)
    two = pca_colors(rng.normal(size=(100, 2)))
    assert np.all(two.rgb[:, 2] == 0.5) and two.explained[2] == 0.0
    assert np.ptp(two.rgb[:, 0]) > 0.5
    flat = pca_colors(np.ones((50, 6)))
    assert np.all(flat.rgb == 0.5) and np.all(flat.explained == 0.0)


def test_pca_fit_subset_is_seeded() -> None:
    x = np.random.default_rng(3).normal(size=(3000, 5))
    a = pca_colors(x, max_fit_points=500, seed=0)
    b = pca_colors(x, max_fit_points=500, seed=0)
    c = pca_colors(x, max_fit_points=500, seed=1)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    assert not np.array_equal(a.rgb, c.rgb)


@pytest.mark.parametrize(("x", "match"), [
    (np.zeros((0, 3)), "non-empty"),
    (np.zeros(5), "non-empty"),
    (np.array([[1.0, np.nan]]), "non-finite"),
])
def test_pca_rejects_bad_features(x: np.ndarray, match: str) -> None:
    with pytest.raises(DetfmError, match=match):
        pca_colors(x)


# ----------------------------------------------------------------------------- figures
def test_figure_with_random_init_backbone(events: Path, tmp_path: Path) -> None:
    ds = EventDataset(events)
    model = create_model("pointmae_micro", **TINY_NARROW)
    model.train()
    one, three = tmp_path / "one.png", tmp_path / "three.png"
    c1 = feature_pca_figure(model, ds, [0], one)
    c3 = feature_pca_figure(model, ds, [0, 2, -1], three, projection="yz")
    counts = ds.point_counts
    assert counts is not None
    assert c1.rgb.shape == (counts[0], 3)
    assert c3.rgb.shape == (counts[0] + counts[2] + counts[3], 3)
    (w1, h1), (w3, h3) = png_size(one), png_size(three)
    assert w1 == w3 and h3 > 2.5 * h1  # one row of two panels per event
    assert model.training  # eval mode is only held during the call
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind


def test_pipeline_colours_follow_label_carrying_features(events: Path, tmp_path: Path) -> None:
    ds = EventDataset(events)
    colors = feature_pca_figure(OneHotBackbone(), ds, [1, 3], tmp_path / "labels.png")
    y = np.concatenate([ds[1].semantic, ds[3].semantic])
    present = np.unique(y)
    assert len(present) >= 3
    for k in present:  # every class gets one colour ...
        assert colors.rgb[y == k].std(axis=0).max() < 1e-4
    means = [colors.rgb[y == k].mean(axis=0) for k in present]
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(len(means)) for j in range(i + 1, len(means))]
    assert min(gaps) > 0.3  # ... and different classes different colours


def test_unlabeled_dataset_draws_energy(events: Path, tmp_path: Path) -> None:
    ds = EventDataset(events, labels=False)
    out = tmp_path / "unlabeled.png"
    feature_pca_figure(create_model("pointmae_micro", **TINY_NARROW), ds, [2], out, projection="xz")
    assert png_size(out)[0] > 0


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"event_indices": []}, "empty"),
    ({"event_indices": [4]}, "out of range"),
    ({"event_indices": [-5]}, "out of range"),
    ({"event_indices": [0] * (MAX_EVENTS + 1)}, f"at most {MAX_EVENTS}"),
    ({"out_png": "x.jpg"}, r"\.png"),
    ({"projection": "xw"}, "unknown projection"),
])
def test_bad_requests(events: Path, tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"event_indices": [0], "out_png": tmp_path / "x.png", "projection": "xy"} | kwargs
    if isinstance(args["out_png"], str):
        args["out_png"] = tmp_path / args["out_png"]
    with pytest.raises(DetfmError, match=match):
        feature_pca_figure(OneHotBackbone(), EventDataset(events), **args)
    assert not (tmp_path / "x.png").exists()


def test_failure_leaves_existing_file_untouched(events: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.png"
    out.write_bytes(b"old picture")
    with pytest.raises(DetfmError, match="non-finite"):
        feature_pca_figure(OneHotBackbone(nan=True), EventDataset(events), [0], out)
    assert out.read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]
