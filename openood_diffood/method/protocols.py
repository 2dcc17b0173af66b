"""What :func:`~openood_diffood.method.diffood.diffood` needs of a diffusion model. The pixel and latent backends
(:mod:`openood_diffood.models`) and the engine's execution wrapper (:class:`~openood_diffood.runtime.execution.
Execution`) provide it."""
from __future__ import annotations

from typing import Optional, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class Denoiser(Protocol):
    """A noise-prediction model with its training schedule, seen from images in [-1, 1].

    ``schedule``: abar_t for t = 0 .. T - 1; ``sample_size``: the image side the model takes; ``conditional``:
    whether ``network`` uses labels; ``null_class``: the label of guidance's unconditional branch (None for an
    unconditional model). ``encode`` / ``decode`` map images to the space ``network`` denoises and back (identity
    for pixel models); ``network(z, t, labels)`` predicts epsilon at timesteps ``t`` (labels None: unconditional).
    """

    schedule: Sequence[float]
    sample_size: int
    conditional: bool
    null_class: Optional[int]

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor: ...
