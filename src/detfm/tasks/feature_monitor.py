"""Health of a feature map: is it collapsed, or does it only encode position?

Self-supervised objectives can fail in two quiet ways. Features may collapse (every point
gets the same vector: low spread, effective rank near 1), or take the "geometric shortcut"
(features that only encode where a point is, which solves view matching without learning
anything about the event). :func:`feature_health` measures both on a sample of points and
the objectives log it, so ``metrics.jsonl`` shows a failing run while it trains.
"""

from __future__ import annotations

import math

import torch

__all__ = ["COLLAPSE_RANK", "SHORTCUT_R2", "feature_health", "is_unhealthy"]

# A feature map with effective rank below this, or whose variance is explained by position
# above this fraction, is flagged.
COLLAPSE_RANK = 2.0
SHORTCUT_R2 = 0.9


def _fourier(coord: torch.Tensor, generator: torch.Generator, width: int = 24, scale: float = 0.05
             ) -> torch.Tensor:
    """Random Fourier features of coordinates (position encoded richly enough to fit any
    smooth function of position)."""
    freq = torch.randn(coord.shape[1], width, generator=generator) * scale
    phase = coord.double().cpu() @ freq.double()
    return torch.cat([torch.sin(phase), torch.cos(phase), coord.double().cpu(), torch.ones(len(coord), 1,
                                                                                           dtype=torch.float64)], 1)


@torch.no_grad()
def feature_health(features: torch.Tensor, coord: torch.Tensor, max_points: int = 1024, seed: int = 0
                   ) -> dict[str, float]:
    """``feature_std`` (mean per-channel std), ``feature_rank`` (exp of the entropy of the
    normalised singular values: 1 for a collapsed map, up to D) and ``position_r2``
    (fraction of the feature variance a ridge fit on random Fourier features of the
    coordinates explains on held-out points, floored at 0: near 1 for a position-only map).
    Use a few hundred points or more: the fit has 52 coefficients per channel."""
    g = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    if n < 8:
        return {"feature_std": math.nan, "feature_rank": math.nan, "position_r2": math.nan}
    pick = torch.randperm(n, generator=g)[:max_points]
    f = features[pick.to(features.device)].double().cpu()
    c = coord[pick.to(coord.device)].double().cpu()
    centred = f - f.mean(dim=0)
    std = float(centred.std(dim=0).mean())
    s = torch.linalg.svdvals(centred)
    if float(s.sum()) <= 1e-12:
        return {"feature_std": std, "feature_rank": 1.0, "position_r2": 0.0}
    p = s / s.sum()
    rank = float(torch.exp(-(p * torch.log(p.clamp(min=1e-12))).sum()))
    x = _fourier(c, g)
    half = len(pick) // 2
    xa, xb, fa, fb = x[:half], x[half:], centred[:half], centred[half:]
    ridge = 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
    w = torch.linalg.solve(xa.T @ xa + ridge, xa.T @ fa)
    resid = ((fb - xb @ w) ** 2).sum()
    total = ((fb - fb.mean(dim=0)) ** 2).sum().clamp(min=1e-12)
    return {"feature_std": std, "feature_rank": rank, "position_r2": max(0.0, float(1.0 - resid / total))}


def is_unhealthy(health: dict[str, float]) -> str | None:
    """Why a feature map looks collapsed or position-only, or None."""
    if health["feature_rank"] < COLLAPSE_RANK:
        return f"collapsed (effective rank {health['feature_rank']:.2f} < {COLLAPSE_RANK})"
    if health["position_r2"] > SHORTCUT_R2:
        return f"position only ({100 * health['position_r2']:.0f} % of the variance explained by position)"
    return None
