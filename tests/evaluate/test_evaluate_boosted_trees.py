"""Boosted trees (`detfm.evaluate.boosted_trees`): the tensor copy answers as scikit-learn does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.boosted_trees import BoostedTrees, TreeSettings, fit_boosted_trees

pytest.importorskip("sklearn")


def three_classes(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Four features; the class is read off the first two (with 5 % of labels flipped)."""
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 4))
    y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5).astype(int)
    flip = g.random(n) < 0.05
    y[flip] = g.integers(0, 3, size=int(flip.sum()))
    return torch.from_numpy(x), torch.from_numpy(y)


def test_the_tensor_trees_give_scikit_learns_probabilities() -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = three_classes(600, 0)
    model = HistGradientBoostingClassifier(max_iter=25, max_leaf_nodes=15, early_stopping=False, random_state=0)
    model.fit(x.numpy(), y.numpy())
    trees = BoostedTrees.from_sklearn(model, 4)
    assert trees.feature.shape[0] == 25 * 3
    test, _ = three_classes(300, 1)
    ours = trees(test).exp().double().numpy()
    assert np.abs(ours - model.predict_proba(test.numpy())).max() < 1e-6
    # a value exactly on a threshold goes left, as scikit-learn sends it
    on = test.clone()
    on[:, int(trees.feature[0, 0])] = float(trees.threshold[0, 0])
    assert np.abs(trees(on).exp().double().numpy() - model.predict_proba(on.numpy())).max() < 1e-6


def test_fitted_trees_learn_the_classes_and_refit_the_same() -> None:
    x, y = three_classes(800, 2)
    settings = TreeSettings(iterations=30, leaves=7)
    trees = fit_boosted_trees(x, y, 3, settings=settings)
    test, truth = three_classes(400, 3)
    accuracy = float((trees(test).argmax(dim=1) == truth).float().mean())
    assert accuracy > 0.85  # 5 % of labels are random: ~0.97 reachable; a constant scores ~0.5
    again = fit_boosted_trees(x, y, 3, settings=settings)
    assert torch.equal(trees(test), again(test))


def test_sample_weights_move_the_calls_toward_the_weighted_class() -> None:
    x, y = three_classes(800, 4)
    test, _ = three_classes(400, 5)
    settings = TreeSettings(iterations=20, leaves=7)
    plain = fit_boosted_trees(x, y, 3, settings=settings)(test).argmax(dim=1)
    weighted = fit_boosted_trees(x, y, 3, sample_weight=torch.where(y == 2, 10.0, 1.0).double(),
                                 settings=settings)(test).argmax(dim=1)
    assert int((weighted == 2).sum()) > int((plain == 2).sum())


def test_bad_inputs_are_refused_with_what_to_do() -> None:
    x, y = three_classes(60, 6)
    with pytest.raises(DetfmError, match="NaN"):
        fit_boosted_trees(torch.where(x > 2, float("nan"), x), y, 3, settings=TreeSettings(iterations=2))
    with pytest.raises(DetfmError, match=r"missing \[2\]"):
        fit_boosted_trees(x, y.clamp(max=1), 3, settings=TreeSettings(iterations=2))
    with pytest.raises(DetfmError, match="same N"):
        fit_boosted_trees(x, y[:10], 3)
    with pytest.raises(ConfigError, match="leaves"):
        TreeSettings(leaves=1)
    with pytest.raises(ConfigError, match="learning_rate"):
        TreeSettings(learning_rate=0.0)
    trees = fit_boosted_trees(x, y, 3, settings=TreeSettings(iterations=2, leaves=3))
    with pytest.raises(DetfmError, match=r"\(N, 4\) features"):
        trees(x[:, :3])
    with pytest.raises(DetfmError, match="boosted-trees state"):
        BoostedTrees.shapes_of({"baseline": torch.zeros(3)})
