"""The inputs' normalization: OpenOOD hands images normalized with the ID dataset's mean and std."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np
import torch

#: Mean / std used by OpenOOD's preprocessors for each ID benchmark (``openood/evaluation_api/preprocessor.py``).
DATASET_STATS: Dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet200": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x01 - mean) / std`` and its inverse."""

    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in mean))
        object.__setattr__(self, "std", tuple(float(s) for s in std))

    @property
    def channels(self) -> int:
        return len(self.mean)

    def _stats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return (torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(shape),
                torch.tensor(self.std, device=x.device, dtype=x.dtype).view(shape))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (N, C, ...) -> classifier inputs."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier inputs -> images in [0, 1]."""
        mean, std = self._stats(x)
        return x * std + mean

    def from_uint8(self, images: np.ndarray) -> torch.Tensor:
        """uint8 images (N, H, W, C) -> normalized float32 (N, C, H, W)."""
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
        return self.normalize(x)
