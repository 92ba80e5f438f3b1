"""Low-rank adaptation (LoRA) of a backbone's linear layers.

LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv
2106.09685) freezes a pretrained weight ``W`` and learns a low-rank update: the layer
computes ``x W^T + b + (alpha / r) x A^T B^T`` with ``A`` (r, in) and ``B`` (out, r).
``B`` starts at zero, so an adapted model starts exactly where the pretrained one was;
after training the update can be folded into ``W`` (:func:`merge_lora`) so inference
costs nothing extra.

:class:`LoRALinear` *is* an ``nn.Linear`` (same ``weight`` and ``bias`` names), so a
LoRA-wrapped backbone still loads plain backbone weights and its merged state dict, less
the ``lora_`` entries, loads into a plain backbone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from detfm.errors import ConfigError
from detfm.models.layers import seeded_init

__all__ = ["DEFAULT_TARGETS", "LoRALinear", "apply_lora", "lora_modules", "merge_lora", "unmerge_lora"]

# Linear layers adapted by default inside every transformer block: the attention's qkv and
# output projections and both MLP layers (``Mlp`` is Linear - GELU - Linear: ``mlp.0``, ``mlp.2``).
DEFAULT_TARGETS: tuple[str, ...] = ("attn.qkv", "attn.proj", "mlp.0", "mlp.2")
# Where they are looked for: the encoder's blocks (not, e.g., the position-embedding MLP).
DEFAULT_WITHIN = "encoder.blocks"


class LoRALinear(nn.Linear):
    """A frozen ``nn.Linear`` plus a trainable rank-``rank`` update scaled by ``alpha / rank``.

    Build it from an existing layer with :meth:`from_linear` (the layer's parameters are
    reused, not copied). ``A`` is drawn from ``generator`` (default: seeded with 0).
    """

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float,
                 bias: bool = True, generator: torch.Generator | None = None) -> None:
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        if not alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {alpha}")
        with seeded_init(0):  # the base weight is normally replaced (from_linear); leave the global RNG alone
            super().__init__(in_features, out_features, bias=bias)
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        self.merged = False
        self.lora_A = nn.Parameter(torch.empty(self.rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, self.rank))
        # A as nn.Linear initialises its weight (and as the LoRA reference code does); B = 0.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5),
                                 generator=generator or torch.Generator().manual_seed(0))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, rank: int, alpha: float,
                    generator: torch.Generator | None = None) -> LoRALinear:
        """Wrap ``linear``: its weight and bias become this layer's (frozen) base."""
        out = cls(linear.in_features, linear.out_features, rank, alpha,
                  bias=linear.bias is not None, generator=generator)
        out.weight = linear.weight
        out.bias = linear.bias
        out.weight.requires_grad_(False)
        if out.bias is not None:
            out.bias.requires_grad_(False)
        return out.to(device=linear.weight.device, dtype=linear.weight.dtype)

    def delta_weight(self) -> torch.Tensor:
        """(out, in) the update ``scaling * B @ A`` that merging adds to ``weight``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = super().forward(x)
        if self.merged:
            return base
        return base + self.scaling * ((x @ self.lora_A.t()) @ self.lora_B.t())

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight`` (idempotent)."""
        if not self.merged:
            self.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to rounding)."""
        if self.merged:
            self.weight -= self.delta_weight()
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0,
               targets: Sequence[str] | None = None, seed: int = 0,
               within: str = DEFAULT_WITHIN) -> list[str]:
    """Freeze every parameter of ``model`` and wrap the target linear layers with LoRA.

    By default the targets are the layers a backbone names in ``lora_targets()`` (the
    backbone contract). Given ``targets`` are module-name suffixes looked for under the
    module ``within`` (``"attn.qkv"`` matches ``encoder.blocks.3.attn.qkv``; ``within=""``
    searches the whole model). Every target must be an ``nn.Linear``. The ``A`` matrices
    are drawn from a generator seeded with ``seed``, in module order. Returns the names of
    the wrapped layers; afterwards only the ``lora_A`` / ``lora_B`` parameters require
    gradients.
    """
    named: set[str] | None = None
    if targets is None:
        if not hasattr(model, "lora_targets"):
            raise ConfigError(f"{type(model).__name__} names no LoRA targets (lora_targets()); pass targets=")
        named = set(model.lora_targets())
        targets = ()
    elif not targets:
        raise ConfigError("apply_lora needs at least one target layer name")
    if rank < 1 or not alpha > 0:
        raise ConfigError(f"LoRA needs rank >= 1 and alpha > 0, got rank={rank}, alpha={alpha}")
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ConfigError("the model already has LoRA layers")
    for param in model.parameters():
        param.requires_grad_(False)
    generator = torch.Generator().manual_seed(int(seed))
    prefix = within + "." if within else ""
    names = [name for name, _ in model.named_modules()
             if (name in named if named is not None else
                 name.startswith(prefix) and any(name.endswith("." + t) for t in targets))]
    if named is not None and (missing := sorted(named - set(names))):
        raise ConfigError(f"{type(model).__name__} names LoRA targets it does not have: {missing[:3]}")
    if not names:
        raise ConfigError(f"no layer under '{within}' matches the LoRA targets {list(targets)}")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"LoRA target '{name}' is a {type(layer).__name__}, not a Linear layer")
        setattr(parent, child, LoRALinear.from_linear(layer, rank, alpha, generator))
    return names


def lora_modules(model: nn.Module) -> list[LoRALinear]:
    """The LoRA layers of ``model``, in module order."""
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer of ``model`` into its base weight; returns how many."""
    layers = lora_modules(model)
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns how many layers were unmerged."""
    layers = lora_modules(model)
    for layer in layers:
        layer.unmerge()
    return len(layers)
