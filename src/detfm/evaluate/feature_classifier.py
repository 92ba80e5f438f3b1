"""A small fitted classifier: the mean of a few MLPs, each fitted from its own seed.

The fitted test-time steps (the fragment classifier, the point refiner) map a table of
features to class probabilities with this network. One MLP's answers move by about 0.005
macro-F1 with its seed; the mean of a few moves less.
"""

from __future__ import annotations

import torch
from torch import nn

from detfm.errors import ConfigError

__all__ = ["ClassifierEnsemble", "seeded_start", "standardise_from"]


class ClassifierEnsemble(nn.Module):
    """Standardised features -> log class probabilities: the mean of the softmax of ``members``
    MLPs with two hidden layers of ``hidden`` units."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64, members: int = 4) -> None:
        super().__init__()
        if members < 1 or hidden < 1:
            raise ConfigError(f"classifier: members and hidden must be >= 1, got {members} and {hidden}")
        self.register_buffer("center", torch.zeros(num_features))
        self.register_buffer("scale", torch.ones(num_features))
        self.members = nn.ModuleList(
            nn.Sequential(nn.Linear(num_features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                          nn.Linear(hidden, num_classes)) for _ in range(members))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = (features - self.center) / self.scale
        probs = torch.stack([torch.softmax(m(x), dim=-1) for m in self.members]).mean(dim=0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


def standardise_from(clf: ClassifierEnsemble, x: torch.Tensor) -> torch.Tensor:
    """Set ``clf``'s standardisation to the mean and spread of ``x`` (N, D); returns ``x``
    standardised."""
    with torch.no_grad():
        clf.center.copy_(x.mean(dim=0))
        clf.scale.copy_(x.std(dim=0).clamp_min(1e-3) if len(x) > 1 else torch.ones(x.shape[1]))
    return (x - clf.center) / clf.scale


@torch.no_grad()
def seeded_start(mlp: nn.Module, gen: torch.Generator) -> None:
    """Draw ``mlp``'s weights uniformly in +-1/sqrt(fan-in) from ``gen`` and zero its biases,
    independently of the global random state."""
    for param in mlp.parameters():
        if param.dim() == 2:
            bound = 1.0 / param.shape[1] ** 0.5
            param.copy_(torch.rand(param.shape, generator=gen) * 2 * bound - bound)
        else:
            param.zero_()
