"""``combine: energy``: the DiffOOD change plus the classifier's energy score, each z-normalised on ID validation.

The two scores see different things (how far a class-conditional round trip moves the classifier's view, and how
confident the classifier is in the first place), so their sum, each on its ID-validation scale, separates better
than either on the shared CIFAR-10 data (benchmarks/results/cifar10_cpu.md). Only ID images are used: the
statistics come from the ID validation set, never from OOD or test images.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict

import torch

from ..errors import ConfigError


@dataclass(frozen=True)
class Calibration:
    """Mean and standard deviation of the change and of the energy score on ID validation images."""

    change_mean: float
    change_std: float
    energy_mean: float
    energy_std: float
    count: int

    @classmethod
    def fit(cls, change: torch.Tensor, energy: torch.Tensor) -> "Calibration":
        """Statistics of ID validation scores (at least two images, not all equal)."""
        change, energy = change.double().flatten(), energy.double().flatten()
        if change.numel() < 2 or change.shape != energy.shape:
            raise ConfigError(f"calibration needs at least two ID validation images with one change and one energy "
                              f"each, got {change.numel()} changes and {energy.numel()} energies")
        stats = cls(change.mean().item(), change.std().item(), energy.mean().item(), energy.std().item(),
                    change.numel())
        if not stats.change_std > 0 or not stats.energy_std > 0:
            raise ConfigError("the ID validation scores are all equal (zero spread): calibrate on more, and varied, "
                              "ID images")
        return stats

    def combine(self, change: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        """z(change) + z(energy) on the ID validation scale (higher = more OOD)."""
        return ((change.double() - self.change_mean) / self.change_std
                + (energy.double() - self.energy_mean) / self.energy_std).float()

    def as_dict(self) -> Dict[str, float]:
        """Plain dict (for cache keys and result files)."""
        return asdict(self)
