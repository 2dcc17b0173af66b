"""The one z-normalisation of DiffOOD's sums: several scores, each on its ID-validation scale, added.

Used for ``combine`` (the DiffOOD change plus the classifier's energy or another postprocessor's score) and for a
list of timesteps (the change at each noise level). The scores see different things, so their sum, each on its
ID-validation scale, can separate better than either (benchmarks/results/cifar10_cpu.md). Only ID images are used:
the statistics come from ID validation images, never from OOD or test images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Calibration:
    """Mean and standard deviation of each score (a column: the change at each timestep, then the combined score)
    on ID validation images."""

    means: Tuple[float, ...]
    stds: Tuple[float, ...]
    count: int

    @classmethod
    def fit(cls, *columns: torch.Tensor) -> "Calibration":
        """Statistics of ID validation scores, one tensor (N,) per score (at least two images, not all equal)."""
        cols = [c.double().flatten() for c in columns]
        if cols[0].numel() < 2 or any(c.shape != cols[0].shape for c in cols):
            raise ConfigError(f"calibration needs at least two ID validation images with one value of every score "
                              f"each, got {[c.numel() for c in cols]} values")
        stats = cls(tuple(c.mean().item() for c in cols), tuple(c.std().item() for c in cols), cols[0].numel())
        if not all(s > 0 for s in stats.stds):
            raise ConfigError("the ID validation scores are all equal (zero spread): calibrate on more, and varied, "
                              "ID images")
        return stats

    def combine(self, *columns: torch.Tensor, weights: Optional[Sequence[float]] = None) -> torch.Tensor:
        """sum_k weight_k z_k(column_k) on the ID validation scale (higher = more OOD; weights default 1)."""
        if len(columns) != len(self.means):
            raise ValueError(f"{len(columns)} scores for a calibration of {len(self.means)}")
        weights = weights or (1.0,) * len(columns)
        total = sum(w * (c.double() - m) / s for c, m, s, w in zip(columns, self.means, self.stds, weights))
        return total.float()

    def as_dict(self) -> Dict[str, object]:
        """Plain dict (for cache keys and result files)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
