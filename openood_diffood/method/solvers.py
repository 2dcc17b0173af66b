"""Noising to timestep t and the deterministic solvers that denoise back to timestep 0.

Timesteps follow diffusers: ``abar[t]`` is the signal level of training timestep t (``DDPMScheduler.add_noise``),
and a solver with stride s visits t, t - s, ... down to the last positive timestep, landing on timestep 0 (15
network evaluations from t = 300 with stride 20, as in the paper). ``abar`` is a sequence of Python floats (see
:meth:`~openood_diffood.models.diffusion.DiffusionBackend.schedule`), so no step reads a value back from the device.
``eps(z, t)`` is the (guided) noise prediction at integer timestep t.

* ``ddim``: DDIM with eta = 0, ``DDIMScheduler.step`` without clipping: one evaluation per timestep.
* ``dpmpp2m``: DPM-Solver++(2M), ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
  final_sigmas_type="sigma_min")``: one evaluation per timestep; the last step is first order when there are
  fewer than 15 steps (diffusers' ``lower_order_final``).
* ``plms``: pseudo linear multistep, ``PNDMScheduler(skip_prk_steps=True)``: one evaluation per timestep plus one
  (the first step is a two-evaluation pseudo improved Euler step).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, Sequence

import torch

Noise = Callable[[torch.Tensor, int], torch.Tensor]
Solver = Callable[[Noise, torch.Tensor, List[int], Sequence[float]], torch.Tensor]


def add_noise(x0: torch.Tensor, eps: torch.Tensor, abar: Sequence[float], t: int) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (t = 0 returns x0 unchanged: no noise)."""
    if t == 0:
        return x0
    a = float(abar[t])
    return a ** 0.5 * x0 + (1.0 - a) ** 0.5 * eps


def solver_timesteps(t: int, stride: int) -> List[int]:
    """The timesteps a fixed-stride solver evaluates the network at, from t down to the last one above 0."""
    return list(range(t, 0, -stride))


def ddim_step(z: torch.Tensor, eps: torch.Tensor, a_t: float, a_prev: float) -> torch.Tensor:
    """One DDIM step (eta = 0): the predicted x0, then the sample at the previous signal level."""
    x0 = (z - math.sqrt(1.0 - a_t) * eps) / math.sqrt(a_t)
    return math.sqrt(a_prev) * x0 + math.sqrt(1.0 - a_prev) * eps


def ddim(eps: Noise, z: torch.Tensor, timesteps: List[int], abar: Sequence[float]) -> torch.Tensor:
    """DDIM (eta = 0) from ``timesteps[0]`` to timestep 0."""
    for t, prev in zip(timesteps, timesteps[1:] + [0]):
        z = ddim_step(z, eps(z, t), abar[t], abar[prev])
    return z


def dpmpp2m(eps: Noise, z: torch.Tensor, timesteps: List[int], abar: Sequence[float]) -> torch.Tensor:
    """DPM-Solver++(2M) from ``timesteps[0]`` to timestep 0 (data prediction, midpoint form).

    With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma), h = lambda_next - lambda_i and the
    data prediction x0_i = (z - sigma_i eps) / alpha_i: z_next = (sigma_next / sigma_i) z - alpha_next (exp(-h) - 1) D
    with D = x0_i (first order) or x0_i + (x0_i - x0_{i-1}) / (2 r), r = h_{i-1} / h (second order).
    """
    levels = [abar[t] for t in timesteps] + [abar[0]]
    alpha = [math.sqrt(a) for a in levels]
    sigma = [math.sqrt(1.0 - a) for a in levels]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    last = len(timesteps) - 1
    previous = None
    for i, t in enumerate(timesteps):
        x0 = (z - sigma[i] * eps(z, t)) / alpha[i]
        h = lam[i + 1] - lam[i]
        if previous is None or (i == last and len(timesteps) < 15):
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = x0 + (x0 - previous) / (2 * r)
        z = (sigma[i + 1] / sigma[i]) * z - alpha[i + 1] * math.expm1(-h) * d
        previous = x0
    return z


#: Adams-Bashforth weights of PLMS for 1 to 4 stored noise predictions, newest first.
_ADAMS_BASHFORTH = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def plms(eps: Noise, z: torch.Tensor, timesteps: List[int], abar: Sequence[float]) -> torch.Tensor:
    """PLMS (PNDM with ``skip_prk_steps``) from ``timesteps[0]`` to timestep 0: len(timesteps) + 1 evaluations.

    The first step evaluates at z, takes a DDIM step, evaluates there and redoes the step with the mean of both
    noises; every later step combines the newest stored noises (the second evaluation's is not stored) with
    Adams-Bashforth weights. PNDM's transfer (its formula 9) is algebraically the DDIM step.
    """
    after = timesteps[1:] + [0]
    first = eps(z, timesteps[0])
    second = eps(ddim_step(z, first, abar[timesteps[0]], abar[after[0]]), after[0])
    z = ddim_step(z, (first + second) / 2, abar[timesteps[0]], abar[after[0]])
    stored = [first]
    for t, prev in zip(timesteps[1:], after[1:]):
        stored = (stored + [eps(z, t)])[-4:]
        weights = _ADAMS_BASHFORTH[len(stored) - 1]
        z = ddim_step(z, sum(w * e for w, e in zip(weights, reversed(stored))), abar[t], abar[prev])
    return z


#: Solvers by the name used in configs (``solver:``).
SOLVERS: Dict[str, Solver] = {"ddim": ddim, "dpmpp2m": dpmpp2m, "plms": plms}


def network_evaluations(solver: str, t: int, stride: int) -> int:
    """Noise predictions per sample (with guidance each is one call on the conditional + null pair)."""
    steps = len(solver_timesteps(t, stride))
    return steps + 1 if solver == "plms" and steps else steps
