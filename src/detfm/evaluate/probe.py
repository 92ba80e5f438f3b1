"""Linear probe of a frozen backbone: how much per-point semantics its features hold.

The standard test of a self-supervised representation: freeze the backbone, fit only a
linear classifier on its per-point features, and score it on held-out events. A backbone
that learned something from pretraining beats the same architecture at random
initialisation; :func:`compare_probes` puts the two side by side.

Protocol (fixed, so numbers are comparable between runs):

1. Train features: every training event goes through the backbone whole (in eval mode,
   without gradients); at most ``max_points_per_event`` of its points, drawn with a
   generator seeded from ``(seed, event id)``, keep their features (this bounds memory,
   not context: the backbone always sees the full event).
2. Features are standardised with the training mean and standard deviation.
3. A linear layer is fitted by full-batch L-BFGS from zero weights on the class-balanced
   cross-entropy plus a small L2 penalty. The problem is convex and the optimiser has no
   randomness, so the result depends only on the data and ``seed``.
4. Every point of every test event is classified (no subsampling) and counted into one
   confusion matrix, batch by batch, so test sets of any size fit in memory.

Use datasets without random augmentation (no rotation): features should describe the
events as stored.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from detfm.data import PackedBatch, Sample, make_loader
from detfm.errors import ConfigError, DetfmError
from detfm.evaluate.metrics import (
    accuracy,
    confusion_matrix,
    macro_f1,
    per_class_f1,
    per_class_precision,
    per_class_recall,
)
from detfm.io.layout import SEMANTIC_CLASSES

__all__ = [
    "PointFeatures", "ProbeResult", "compare_probes", "extract_point_features", "fit_probe",
    "iter_point_features", "linear_probe",
]

LOW_ENERGY_NAME = "low_energy"

# Test points classified at once by fit_probe.
_PREDICT_CHUNK = 1 << 16

# Standard deviations below this count as a constant feature (scaled by 1, not by 1/0).
_MIN_STD = 1e-6


class PointFeatures(NamedTuple):
    """Per-point features of a dataset, with the semantic label and event of every point.

    Attributes:
        features: (P, D) float32.
        labels: (P,) int64 semantic class (0 shower ... 4 low-energy).
        event_id: (P,) int64 global event number of each point (``Sample.index``).
    """

    features: np.ndarray
    labels: np.ndarray
    event_id: np.ndarray

    @property
    def n_events(self) -> int:
        return int(np.unique(self.event_id).size)


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """Test-set scores of a linear probe and what it was trained on.

    Per-class and macro scores are derived from ``confusion`` (rows: true class, columns:
    predicted), see :mod:`detfm.evaluate.metrics` for how undefined values (NaN) arise.

    Attributes:
        classes: class names, in confusion-matrix order.
        confusion: (K, K) int64 counts over all test points of these classes.
        n_train_events, n_train_points: events and (subsampled) points the probe was fit on.
        n_test_events, n_test_points: events and points it was scored on.
        n_test_ignored: test points whose class is not in ``classes`` (not scored).
        feature_dim: width D of the backbone's point features.
        train_loss: final training objective (weighted cross-entropy + L2).
        settings: the probe's options (epochs, lr, seed, balanced, l2, max points).
    """

    classes: tuple[str, ...]
    confusion: np.ndarray
    n_train_events: int
    n_train_points: int
    n_test_events: int
    n_test_points: int
    n_test_ignored: int
    feature_dim: int
    train_loss: float
    settings: Mapping[str, Any]

    @property
    def f1(self) -> dict[str, float]:
        return dict(zip(self.classes, per_class_f1(self.confusion).tolist(), strict=True))

    @property
    def precision(self) -> dict[str, float]:
        return dict(zip(self.classes, per_class_precision(self.confusion).tolist(), strict=True))

    @property
    def recall(self) -> dict[str, float]:
        return dict(zip(self.classes, per_class_recall(self.confusion).tolist(), strict=True))

    @property
    def macro_f1(self) -> float:
        """Mean F1 over all probed classes."""
        return macro_f1(self.confusion)

    @property
    def macro_f1_no_lowe(self) -> float:
        """Mean F1 without the low-energy class (shower, track, Michel, delta).

        Low-energy deposits are isolated blips whose label depends on voxel-count cuts more
        than on what the event looks like, so the headline number leaves them out; the
        PoLAr-MAE segmentation results (Young et al., arXiv:2502.02558) are quoted for these
        four classes.
        """
        keep = [k for k, name in enumerate(self.classes) if name != LOW_ENERGY_NAME]
        return macro_f1(self.confusion, keep) if keep else float("nan")

    @property
    def accuracy(self) -> float:
        return accuracy(self.confusion)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types; undefined (NaN) scores become None."""
        return {
            "classes": list(self.classes),
            "macro_f1": _json_float(self.macro_f1),
            "macro_f1_no_lowe": _json_float(self.macro_f1_no_lowe),
            "accuracy": _json_float(self.accuracy),
            "f1": {k: _json_float(v) for k, v in self.f1.items()},
            "precision": {k: _json_float(v) for k, v in self.precision.items()},
            "recall": {k: _json_float(v) for k, v in self.recall.items()},
            "confusion": self.confusion.tolist(),
            "n_train_events": self.n_train_events,
            "n_train_points": self.n_train_points,
            "n_test_events": self.n_test_events,
            "n_test_points": self.n_test_points,
            "n_test_ignored": self.n_test_ignored,
            "feature_dim": self.feature_dim,
            "train_loss": _json_float(self.train_loss),
            "settings": dict(self.settings),
        }

    def format(self) -> str:
        """A readable table: per-class scores, macro-F1, and the train/test sizes."""
        true_counts = self.confusion.sum(axis=1)
        f1, prec, rec = self.f1, self.precision, self.recall
        width = max(12, *(len(c) + 2 for c in self.classes))
        lines = [
            f"linear probe on {self.feature_dim} features: trained on {self.n_train_points:,} points "
            f"of {self.n_train_events} events, tested on {self.n_test_points:,} points of "
            f"{self.n_test_events} events",
            f"{'class':<{width}}{'F1':>8}{'precision':>11}{'recall':>9}{'test points':>13}",
        ]
        for k, name in enumerate(self.classes):
            lines.append(f"{name:<{width}}{_fmt(f1[name]):>8}{_fmt(prec[name]):>11}"
                         f"{_fmt(rec[name]):>9}{int(true_counts[k]):>13,}")
        skipped = [c for c, v in f1.items() if math.isnan(v)]
        note = f"; n/a skipped: {', '.join(skipped)}" if skipped else ""
        lines.append(f"{'macro-F1':<{width}}{_fmt(self.macro_f1):>8}   (all classes{note})")
        if LOW_ENERGY_NAME in self.classes:
            lines.append(f"{'macro-F1':<{width}}{_fmt(self.macro_f1_no_lowe):>8}   (without low-energy)")
        lines.append(f"{'accuracy':<{width}}{_fmt(self.accuracy):>8}")
        if self.n_test_ignored:
            lines.append(f"({self.n_test_ignored:,} test points of other classes not scored)")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- features
def iter_point_features(backbone: nn.Module, dataset: Dataset[Sample], batch_size: int = 8,
                        progress: bool = True, desc: str = "features"
                        ) -> Iterator[tuple[PackedBatch, torch.Tensor]]:
    """``(batch, features)`` for every batch of ``dataset`` in order: the batch on the
    backbone's device and its (P, D) per-point features, computed without gradients.

    The backbone is in eval mode until the iteration ends (or the iterator is closed),
    then gets its training flags back.
    """
    _check_count(batch_size, "batch_size")
    if not hasattr(backbone, "forward_features"):
        raise DetfmError(f"{type(backbone).__name__} is not a detfm backbone: it has no "
                         "forward_features(batch) method")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise DetfmError("the dataset has no events")
    device = _device_of(backbone)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False)
    with _eval_mode(backbone), tqdm(total=n, desc=desc, unit="event", disable=not progress) as bar:
        for batch in loader:
            batch = batch.to(device)
            yield batch, _features(backbone, batch)
            bar.update(len(batch))


@torch.no_grad()
def _features(backbone: nn.Module, batch: PackedBatch) -> torch.Tensor:
    """Per-point features of a frozen backbone (the contract's ``forward_intermediates``).

    The (normalised) outputs of every block or stage, each carried to the points by the
    backbone and concatenated, so the probe sees what every depth of the encoder knows, at
    point resolution (the usual practice for probing point-cloud encoders; Panda's linear
    probe reads the multi-level concatenation). A backbone without intermediates gives its
    multi-level features.
    """
    if hasattr(backbone, "forward_intermediates"):
        out, blocks = backbone.forward_intermediates(batch, layers=None, norm=True)
        f = torch.cat(blocks, dim=1) if blocks else out.multilevel()
    else:
        f = backbone.forward_features(batch).multilevel()
    if f.ndim != 2 or f.shape[0] != batch.num_points:
        raise DetfmError(f"backbone gave point features of shape {tuple(f.shape)}, expected "
                         f"({batch.num_points}, D)")
    if not torch.isfinite(f).all():
        raise DetfmError("the backbone produced non-finite (NaN/inf) features for events "
                         f"{_event_numbers(batch)}")
    return f


def extract_point_features(backbone: nn.Module, dataset: Dataset[Sample], *, batch_size: int = 8,
                           max_points_per_event: int | None = None, seed: int = 0,
                           progress: bool = True) -> PointFeatures:
    """Per-point features of every event of ``dataset`` from a frozen ``backbone``.

    The backbone runs in eval mode without gradients (its training flag is restored
    afterwards) on whole events; with ``max_points_per_event`` only a random subset of each
    event's points (seeded by ``(seed, event id)``, so independent of batching) is kept.

    Args:
        backbone: a module with ``forward_features(batch) -> TokenOutput`` (any detfm
            backbone, e.g. :func:`detfm.models.create_model` or ``pretrain.load_backbone``).
        dataset: labeled events (e.g. :class:`detfm.data.EventDataset`).

    Raises:
        DetfmError: empty or unlabeled dataset, bad options, or non-finite features.
    """
    _check_count(batch_size, "batch_size")
    if max_points_per_event is not None:
        _check_count(max_points_per_event, "max_points_per_event")
    _check_seed(seed)
    feats: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    events: list[np.ndarray] = []
    for batch, f in iter_point_features(backbone, dataset, batch_size, progress, "probe features"):
        keep = _subsample(batch, max_points_per_event, seed)
        feats.append(f[keep.to(f.device)].float().cpu().numpy())
        labels.append(_labels(batch)[keep].numpy())
        events.append(_event_ids(batch)[keep].numpy())
    return PointFeatures(np.concatenate(feats), np.concatenate(labels), np.concatenate(events))


# ----------------------------------------------------------------------------- probes
def linear_probe(backbone: nn.Module, train_dataset: Dataset[Sample], test_dataset: Dataset[Sample], *,
                 classes: Sequence[str] = SEMANTIC_CLASSES, epochs: int = 100, lr: float = 1.0,
                 seed: int = 0, balanced: bool = True, max_points_per_event: int | None = 2000,
                 l2: float = 1e-4, batch_size: int = 8, progress: bool = True) -> ProbeResult:
    """Fit a linear classifier on frozen features of ``train_dataset``; score all test points.

    Args:
        classes: semantic classes to probe (names from ``layout.SEMANTIC_CLASSES``); points
            of other classes are left out of training and scoring. Pass the four classes
            without ``"low_energy"`` to drop low-energy points altogether.
        epochs: L-BFGS iterations (each a full pass over the training features).
        lr: L-BFGS step length (1 with the strong-Wolfe line search is the usual choice).
        seed: seeds the per-event point subsample; nothing else is random.
        balanced: weight the cross-entropy by inverse class frequency (rare Michel and
            delta points count as much as track points).
        max_points_per_event: training points kept per event (None: all).
        l2: L2 penalty on the weights (keeps the fit finite when classes separate).

    Returns:
        The :class:`ProbeResult` on the test set.
    """
    options = _check_options(classes, epochs, lr, seed, l2, batch_size, max_points_per_event)
    train = extract_point_features(backbone, train_dataset, batch_size=batch_size,
                                   max_points_per_event=max_points_per_event, seed=seed,
                                   progress=progress)
    device = _device_of(backbone)
    classifier = _fit(train, options, epochs=epochs, lr=lr, balanced=balanced, l2=l2,
                      device=device)
    k = len(options.names)
    cm = np.zeros((k, k), dtype=np.int64)
    ignored = 0
    test_events = 0
    for batch, f in iter_point_features(backbone, test_dataset, batch_size, progress, "probe test"):
        y = options.to_probe[_labels(batch).numpy()]
        pred = classifier.predict(f).cpu().numpy()
        scored = y >= 0
        cm += confusion_matrix(y[scored], pred[scored], k)
        ignored += int((~scored).sum())
        test_events += len(batch)
    settings = _settings(epochs, lr, seed, balanced, l2, max_points_per_event)
    return ProbeResult(classes=options.names, confusion=cm, n_train_events=train.n_events,
                       n_train_points=classifier.n_points, n_test_events=test_events,
                       n_test_points=int(cm.sum()), n_test_ignored=ignored,
                       feature_dim=classifier.dim, train_loss=classifier.loss, settings=settings)


def fit_probe(train: PointFeatures, test: PointFeatures, *, classes: Sequence[str] = SEMANTIC_CLASSES,
              epochs: int = 100, lr: float = 1.0, balanced: bool = True, l2: float = 1e-4,
              device: torch.device | str = "cpu") -> ProbeResult:
    """The probe of :func:`linear_probe` on features already extracted (e.g. cached once and
    reused for several label budgets). Every test point given is scored."""
    options = _check_options(classes, epochs, lr, 0, l2, 1, None)
    for name, part in (("train", train), ("test", test)):
        _check_features(part, name)
    if train.features.shape[1] != test.features.shape[1]:
        raise DetfmError(f"train features have {train.features.shape[1]} columns, test features "
                         f"{test.features.shape[1]}: they must come from the same backbone")
    classifier = _fit(train, options, epochs=epochs, lr=lr, balanced=balanced, l2=l2,
                      device=torch.device(device))
    y = options.to_probe[test.labels]
    scored = y >= 0
    x = test.features[scored]
    pred = np.zeros(len(x), dtype=np.int64)
    for start in range(0, len(x), _PREDICT_CHUNK):  # bounded temporaries for big test sets
        chunk = torch.from_numpy(np.ascontiguousarray(x[start:start + _PREDICT_CHUNK]))
        pred[start:start + _PREDICT_CHUNK] = classifier.predict(chunk).cpu().numpy()
    k = len(options.names)
    cm = confusion_matrix(y[scored], pred, k)
    settings = _settings(epochs, lr, None, balanced, l2, None)
    return ProbeResult(classes=options.names, confusion=cm, n_train_events=train.n_events,
                       n_train_points=classifier.n_points, n_test_events=test.n_events,
                       n_test_points=int(cm.sum()), n_test_ignored=int((~scored).sum()),
                       feature_dim=classifier.dim, train_loss=classifier.loss, settings=settings)


def compare_probes(results: Mapping[str, ProbeResult]) -> str:
    """Side-by-side table of several probes (e.g. pretrained vs random init) on one test set.

    Rows: per-class F1, macro-F1 (all, and without low-energy), accuracy, sizes. With
    exactly two results a last column gives the difference (first minus second).
    """
    if not results:
        raise DetfmError("compare_probes needs at least one result")
    names = list(results)
    first = results[names[0]]
    for name in names[1:]:
        if results[name].classes != first.classes:
            raise DetfmError(f"cannot compare probes over different classes: '{names[0]}' has "
                             f"{list(first.classes)}, '{name}' has {list(results[name].classes)}")
    rows: list[tuple[str, list[float], bool]] = [
        (f"F1 {c}", [results[n].f1[c] for n in names], True) for c in first.classes]
    rows.append(("macro-F1", [results[n].macro_f1 for n in names], True))
    if LOW_ENERGY_NAME in first.classes:
        rows.append(("macro-F1 no low-energy", [results[n].macro_f1_no_lowe for n in names], True))
    rows.append(("accuracy", [results[n].accuracy for n in names], True))
    rows.append(("train points", [float(results[n].n_train_points) for n in names], False))
    rows.append(("test points", [float(results[n].n_test_points) for n in names], False))

    diff = len(names) == 2
    label_width = max(len(r[0]) for r in rows) + 2
    col = max(10, *(len(n) + 2 for n in names))
    header = f"{'':<{label_width}}" + "".join(f"{n:>{col}}" for n in names)
    if diff:
        header += f"{'difference':>{col}}"
    lines = [header]
    for label, values, is_score in rows:
        cells = [(_fmt(v) if is_score else f"{int(v):,}") for v in values]
        line = f"{label:<{label_width}}" + "".join(f"{c:>{col}}" for c in cells)
        if diff:
            d = values[0] - values[1]
            line += f"{(_fmt(d, signed=True) if is_score else f'{int(d):+,}'):>{col}}"
        lines.append(line)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- fitting
@dataclass(frozen=True)
class _Options:
    names: tuple[str, ...]
    to_probe: np.ndarray         # semantic id -> probe class, -1 for classes left out


@dataclass(frozen=True, eq=False)
class _Classifier:
    """Standardisation + linear layer, fitted."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor    # (K,)
    loss: float
    n_points: int

    @property
    def dim(self) -> int:
        return int(self.weight.shape[1])

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        z = (features.to(self.mean.device, torch.float32) - self.mean) / self.scale
        return (z @ self.weight.T + self.bias).argmax(dim=1)


def _fit(train: PointFeatures, options: _Options, *, epochs: int, lr: float, balanced: bool,
         l2: float, device: torch.device) -> _Classifier:
    """Full-batch L-BFGS on standardised features, from zero weights (deterministic)."""
    _check_features(train, "train")
    y_np = options.to_probe[train.labels]
    use = y_np >= 0
    if not use.any():
        raise DetfmError(f"the training events hold no points of the probed classes {list(options.names)}")
    x = torch.from_numpy(np.ascontiguousarray(train.features[use], dtype=np.float32)).to(device)
    y = torch.from_numpy(y_np[use]).to(device)
    k = len(options.names)

    mean = x.mean(dim=0)
    std = x.std(dim=0, correction=0)
    scale = torch.where(std > _MIN_STD, std, torch.ones_like(std))
    z = (x - mean) / scale
    del x

    counts = torch.bincount(y, minlength=k).to(torch.float32)
    if balanced:  # inverse frequency over the classes present: each class weighs the same
        present = int((counts > 0).sum())
        class_weight = torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), 0.0)
    else:
        class_weight = torch.ones(k, device=device)

    weight = torch.zeros(k, z.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(k, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=lr, max_iter=epochs, history_size=20,
                                  line_search_fn="strong_wolfe")

    def loss_fn() -> torch.Tensor:
        return F.cross_entropy(z @ weight.T + bias, y, weight=class_weight) + 0.5 * l2 * (weight**2).sum()

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    with torch.enable_grad():  # the caller may be inside torch.no_grad()
        optimizer.step(objective)
    with torch.no_grad():
        final = float(loss_fn())
    return _Classifier(mean=mean, scale=scale, weight=weight.detach(), bias=bias.detach(),
                       loss=final, n_points=int(use.sum()))


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Put ``module`` in eval mode for the block and give it back its training flags."""
    flags = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _device_of(module: nn.Module) -> torch.device:
    param = next(module.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _labels(batch: PackedBatch) -> torch.Tensor:
    if batch.semantic is None:
        raise DetfmError("the dataset has no semantic labels; a probe needs labeled events "
                         "(open the EventDataset with labels=True)")
    return batch.semantic.cpu()


def _event_ids(batch: PackedBatch) -> torch.Tensor:
    index = batch.index if batch.index is not None else torch.arange(len(batch))
    return torch.repeat_interleave(index.cpu(), batch.counts.cpu())


def _event_numbers(batch: PackedBatch) -> list[int]:
    return [] if batch.index is None else batch.index.tolist()


def _subsample(batch: PackedBatch, max_points: int | None, seed: int) -> torch.Tensor:
    """(P,) bool: at most ``max_points`` points per event, drawn from ``(seed, event id)``."""
    counts = batch.counts.cpu().tolist()
    keep = np.ones(sum(counts), dtype=bool)
    if max_points is None:
        return torch.from_numpy(keep)
    ids = _event_numbers(batch) or list(range(len(counts)))
    start = 0
    for event_id, n in zip(ids, counts, strict=True):
        if n > max_points:
            rng = np.random.default_rng([seed, event_id])
            chosen = np.zeros(n, dtype=bool)
            chosen[rng.choice(n, size=max_points, replace=False)] = True
            keep[start:start + n] = chosen
        start += n
    return torch.from_numpy(keep)


def _check_features(part: PointFeatures, name: str) -> None:
    f, y, e = part
    if f.ndim != 2 or y.shape != (f.shape[0],) or e.shape != (f.shape[0],):
        raise DetfmError(f"{name} features must be (P, D) with (P,) labels and event ids, got "
                         f"{f.shape}, {y.shape}, {e.shape}")
    if f.shape[0] == 0:
        raise DetfmError(f"{name} features are empty")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(SEMANTIC_CLASSES):
        raise DetfmError(f"{name} labels must be semantic class ids 0..{len(SEMANTIC_CLASSES) - 1}")
    if not np.isfinite(f).all():
        raise DetfmError(f"{name} features hold non-finite (NaN/inf) values")


def _check_options(classes: Sequence[str], epochs: int, lr: float, seed: int, l2: float,
                   batch_size: int, max_points: int | None) -> _Options:
    if isinstance(classes, str):
        raise ConfigError(f"classes must be a list of class names, got the string '{classes}'")
    names = tuple(classes)
    unknown = [c for c in names if c not in SEMANTIC_CLASSES]
    if not names or unknown or len(set(names)) != len(names):
        raise ConfigError(f"classes must be distinct names from {list(SEMANTIC_CLASSES)}, got {list(names)}")
    _check_count(epochs, "epochs")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(l2, (int, float)) and math.isfinite(l2) and l2 >= 0):
        raise ConfigError(f"l2 must be a finite number >= 0, got {l2!r}")
    _check_seed(seed)
    _check_count(batch_size, "batch_size")
    if max_points is not None:
        _check_count(max_points, "max_points_per_event")
    ids = tuple(SEMANTIC_CLASSES.index(c) for c in names)
    to_probe = np.full(len(SEMANTIC_CLASSES), -1, dtype=np.int64)
    to_probe[list(ids)] = np.arange(len(ids))
    return _Options(names, to_probe)


def _check_count(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}")


def _settings(epochs: int, lr: float, seed: int | None, balanced: bool, l2: float,
              max_points: int | None) -> dict[str, Any]:
    return {"epochs": int(epochs), "lr": float(lr), "seed": seed, "balanced": bool(balanced),
            "l2": float(l2), "max_points_per_event": max_points, "optimizer": "lbfgs"}


def _json_float(v: float) -> float | None:
    return None if math.isnan(v) else float(v)


def _fmt(v: float, signed: bool = False) -> str:
    if math.isnan(v):
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"
