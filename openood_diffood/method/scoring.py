"""The DiffOOD score, how far the reconstructions' normalized features moved from the input's, and the energy."""
from __future__ import annotations

import torch


def repeat_changes(feat: torch.Tensor, rec_feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """|| n(g(x)) - n(g(x_r)) ||_1 for each repeat r, n = L2 normalization.

    feat: (N, D) features of the inputs, or (N, R, D) reference features per repeat; rec_feat: (N, R, D) features
    of their R reconstructions. Returns (N, R) changes.
    """
    f = feat.float()
    f = f.unsqueeze(1) if f.ndim == 2 else f
    f = f / (f.norm(dim=-1, keepdim=True) + eps)
    g = rec_feat.float()
    g = g / (g.norm(dim=-1, keepdim=True) + eps)
    return (f - g).abs().sum(-1)


def feature_change(feat: torch.Tensor, rec_feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """The DiffOOD score: the mean over repeats of :func:`repeat_changes`, shape (N,); higher = more OOD."""
    return repeat_changes(feat, rec_feat, eps).mean(1)


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    """Negative free energy, -logsumexp(logits) (higher = more OOD, as OpenOOD's EBO with temperature 1)."""
    return -torch.logsumexp(logits.float(), dim=1)
