"""Gradient-boosted decision trees: fitted with scikit-learn, kept and applied as plain tensors.

A table of per-item measurements (a particle's pooled features and its dE/dx, say) is where
boosted trees do better than a small MLP: on the particle table of
:mod:`detfm.evaluate.particle_trees` they reach electron efficiency / purity 0.763 / 0.847
on the test split where an MLP on the same columns reaches 0.765 / 0.810, each at its own
argmax (docs/results/point_backbones.md, "Boosted trees on the particle table").

:func:`fit_boosted_trees` fits scikit-learn's ``HistGradientBoostingClassifier`` (an optional
dependency: ``pip install 'detfm[trees]'``; imported only here) and copies every tree into a
:class:`BoostedTrees`: per node its feature, threshold, children and leaf value, padded to one
table per tree. :class:`BoostedTrees` needs no scikit-learn: it walks all trees at once, one
level per step, and gives the same probabilities as ``predict_proba`` (tested to 1e-6). It
saves and loads as safetensors (no pickles), so a fitted model can be audited and read by any
version of detfm that knows this layout.

Inputs must be finite: the fit and the walk treat every column as a number (callers replace
NaN before, as :func:`torch.nan_to_num` does).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from detfm.errors import ConfigError, DetfmError

__all__ = ["BoostedTrees", "TreeSettings", "fit_boosted_trees", "require_sklearn"]


@dataclass(frozen=True)
class TreeSettings:
    """How the trees are grown: ``iterations`` boosting rounds (one tree per class each),
    ``learning_rate``, at most ``leaves`` leaves per tree, ``l2`` regularisation of the leaf
    values, ``seed`` of the fit (scikit-learn's ``random_state``)."""

    iterations: int = 400
    learning_rate: float = 0.05
    leaves: int = 31
    l2: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.leaves < 2:
            raise ConfigError(f"trees: iterations must be >= 1 and leaves >= 2, got {self.iterations} and "
                              f"{self.leaves}")
        if not 0.0 < self.learning_rate <= 1.0 or self.l2 < 0:
            raise ConfigError(f"trees: learning_rate must be in (0, 1] and l2 >= 0, got {self.learning_rate} "
                              f"and {self.l2}")


def require_sklearn() -> None:
    """Raise a :class:`DetfmError` that says how to install scikit-learn when it is missing."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise DetfmError("fitting boosted trees needs scikit-learn: pip install 'detfm[trees]' "
                         "(or pip install scikit-learn)") from None


class BoostedTrees(nn.Module):
    """A fitted multi-class tree ensemble: ``forward(x)`` (N, D) -> (N, K) log class probabilities.

    Buffers: ``feature``, ``threshold``, ``left``, ``right``, ``value``, ``leaf`` (T, M), one
    row per tree (T = rounds x K, tree ``t`` adds to class ``t % K``), padded to the largest
    tree's M nodes with leaves; ``baseline`` (K,). A point goes left where ``x[feature] <=
    threshold``."""

    def __init__(self, num_trees: int, num_nodes: int, num_classes: int, num_features: int) -> None:
        super().__init__()
        if min(num_trees, num_nodes, num_classes, num_features) < 1 or num_trees % num_classes:
            raise ConfigError(f"BoostedTrees: {num_trees} trees, {num_nodes} nodes, {num_classes} classes, "
                              f"{num_features} features: all must be >= 1 and the trees a multiple of the classes")
        self.num_features = num_features
        self.register_buffer("feature", torch.zeros(num_trees, num_nodes, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(num_trees, num_nodes, dtype=torch.float64))
        self.register_buffer("left", torch.zeros(num_trees, num_nodes, dtype=torch.long))
        self.register_buffer("right", torch.zeros(num_trees, num_nodes, dtype=torch.long))
        self.register_buffer("value", torch.zeros(num_trees, num_nodes, dtype=torch.float64))
        self.register_buffer("leaf", torch.ones(num_trees, num_nodes, dtype=torch.bool))
        self.register_buffer("baseline", torch.zeros(num_classes, dtype=torch.float64))

    @property
    def num_classes(self) -> int:
        return int(self.baseline.numel())

    @classmethod
    def shapes_of(cls, state: dict[str, torch.Tensor]) -> tuple[int, int, int]:
        """(trees, nodes, classes) of a saved state dict."""
        try:
            trees, nodes = state["feature"].shape
            return int(trees), int(nodes), int(state["baseline"].numel())
        except (KeyError, ValueError) as exc:
            raise DetfmError(f"not a boosted-trees state (feature (T, M) and baseline (K,) expected): {exc}") from None

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K) summed leaf values plus the baseline (the logits)."""
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise DetfmError(f"boosted trees take (N, {self.num_features}) features, got {tuple(x.shape)}")
        x = x.detach().to(torch.float64)
        n, (trees, _) = x.shape[0], self.feature.shape
        node = torch.zeros(n, trees, dtype=torch.long, device=x.device)
        rows = torch.arange(trees, device=x.device).expand(n, trees)
        while True:
            inner = ~self.leaf[rows, node]
            if not bool(inner.any()):
                break
            column = self.feature[rows, node]
            go_left = x.gather(1, column) <= self.threshold[rows, node]
            step = torch.where(go_left, self.left[rows, node], self.right[rows, node])
            node = torch.where(inner, step, node)
        values = self.value[rows, node]  # (N, T)
        k = self.num_classes
        return self.baseline[None] + values.view(n, trees // k, k).sum(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.raw(x), dim=-1).to(torch.float32)

    @classmethod
    def from_sklearn(cls, model: object, num_features: int) -> BoostedTrees:
        """Copy a fitted ``HistGradientBoostingClassifier`` (numeric features, more than two
        classes) into tensors."""
        predictors = model._predictors  # type: ignore[attr-defined]  # rounds x classes
        k = len(predictors[0])
        if k < 3:
            raise DetfmError("BoostedTrees holds multi-class fits (three classes or more)")
        tables = [p.nodes for round_ in predictors for p in round_]
        if any(bool(t["is_categorical"].any()) for t in tables):
            raise DetfmError("BoostedTrees takes numeric features only")
        out = cls(len(tables), max(len(t) for t in tables), k, num_features)
        with torch.no_grad():
            for i, t in enumerate(tables):
                m = len(t)
                out.feature[i, :m] = torch.from_numpy(t["feature_idx"].astype(np.int64))
                out.threshold[i, :m] = torch.from_numpy(t["num_threshold"].astype(np.float64))
                out.left[i, :m] = torch.from_numpy(t["left"].astype(np.int64))
                out.right[i, :m] = torch.from_numpy(t["right"].astype(np.int64))
                out.value[i, :m] = torch.from_numpy(t["value"].astype(np.float64))
                out.leaf[i, :m] = torch.from_numpy(t["is_leaf"].astype(bool))
            baseline = np.asarray(model._baseline_prediction, np.float64).ravel()  # type: ignore[attr-defined]
            out.baseline.copy_(torch.from_numpy(baseline))
        return out


def fit_boosted_trees(x: torch.Tensor, target: torch.Tensor, num_classes: int, *,
                      sample_weight: torch.Tensor | None = None, settings: TreeSettings | None = None
                      ) -> BoostedTrees:
    """Fit boosted trees to ``target`` (N,) classes 0..num_classes-1 from ``x`` (N, D) finite
    features; ``sample_weight`` (N,) optional. Every class must occur in ``target``."""
    require_sklearn()
    from sklearn.ensemble import HistGradientBoostingClassifier

    s = settings or TreeSettings()
    xs = x.detach().cpu().to(torch.float64).numpy()
    y = target.detach().cpu().long().numpy()
    if xs.ndim != 2 or len(xs) != len(y) or len(y) == 0:
        raise DetfmError(f"trees: features (N, D) and targets (N,) of the same N > 0 expected, got "
                         f"{tuple(xs.shape)} and {tuple(y.shape)}")
    if not np.isfinite(xs).all():
        raise DetfmError("trees: the features hold NaN or infinite values; replace them first")
    missing = sorted(set(range(num_classes)) - set(np.unique(y).tolist()))
    if missing or y.min() < 0 or y.max() >= num_classes:
        raise DetfmError(f"trees: targets must cover every class 0..{num_classes - 1} (missing {missing})")
    weight = None if sample_weight is None else sample_weight.detach().cpu().to(torch.float64).numpy()
    model = HistGradientBoostingClassifier(max_iter=s.iterations, learning_rate=s.learning_rate,
                                           max_leaf_nodes=s.leaves, l2_regularization=s.l2,
                                           early_stopping=False, random_state=s.seed)
    model.fit(xs, y, sample_weight=weight)
    return BoostedTrees.from_sklearn(model, xs.shape[1]).eval()
