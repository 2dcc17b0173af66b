"""Noise-and-denoise: diffuse x0 to timestep t with the model's schedule, then solve back to t = 0.

Timesteps follow diffusers' conventions: ``alphas_cumprod[t]`` is the signal level at training timestep t
(``DDPMScheduler.add_noise``), and a solver with stride s visits t, t - s, ..., down to the last positive
timestep, landing on timestep 0 (15 network evaluations from t = 300 with stride 20, as in the paper).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

import torch

from .diffusion import DiffusionBackend


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor, t: int) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (t = 0 returns x0 unchanged: no noise)."""
    if t == 0:
        return x0
    abar = float(alphas_cumprod[t])
    return abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps


def solver_timesteps(t: int, stride: int) -> List[int]:
    """The timesteps a fixed-stride solver evaluates the network at, from t down to the last one above 0."""
    return list(range(t, 0, -stride))


def ddim_denoise(backend: DiffusionBackend, z: torch.Tensor, t: int, stride: int,
                 labels: Optional[torch.Tensor], guidance: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from timestep t to 0, as diffusers' ``DDIMScheduler.step`` without clipping."""
    abar = backend.alphas_cumprod
    steps = solver_timesteps(t, stride)
    for i, ti in enumerate(steps):
        t_prev = steps[i + 1] if i + 1 < len(steps) else 0
        a_t, a_prev = float(abar[ti]), float(abar[t_prev])
        eps = backend.predict_noise(z, ti, labels, guidance)
        x0 = (z - (1.0 - a_t) ** 0.5 * eps) / a_t ** 0.5
        z = a_prev ** 0.5 * x0 + (1.0 - a_prev) ** 0.5 * eps
    return z


Solver = Callable[[DiffusionBackend, torch.Tensor, int, int, Optional[torch.Tensor], float], torch.Tensor]

#: Solvers by the name used in configs (``solver:``).
SOLVERS: Dict[str, Solver] = {"ddim": ddim_denoise}


def get_solver(name: str) -> Solver:
    """Look a solver up by name, with the known names in the error."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None
