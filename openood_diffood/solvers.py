"""Noise-and-denoise: diffuse x0 to timestep t with the model's schedule, then solve back to t = 0.

Timesteps follow diffusers' conventions: ``alphas_cumprod[t]`` is the signal level at training timestep t
(``DDPMScheduler.add_noise``), and a solver with stride s visits t, t - s, ..., down to the last positive
timestep, landing on timestep 0 (15 network evaluations from t = 300 with stride 20, as in the paper).

Every solver here is deterministic and linear in the network's outputs, so it is written as a *plan*: a list of
:class:`Step` with the coefficients of each update precomputed once, in float64 on the CPU, from the model's
``alphas_cumprod``. :func:`run_plan` then only launches the network and a few tensor operations with Python-float
coefficients: nothing inside the denoising loop reads a value back from the device.

Solvers (``solver:`` in the config):

* ``ddim``: DDIM with eta = 0, as ``DDIMScheduler.step`` without clipping (one network evaluation per timestep).
* ``dpmpp2m``: DPM-Solver++(2M), as ``DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
  final_sigmas_type="sigma_min")`` with ``set_timesteps(timesteps=...)`` (one evaluation per timestep; the last
  step is first order when there are fewer than 15 steps, diffusers' ``lower_order_final``).
* ``plms``: pseudo linear multistep, as ``PNDMScheduler(skip_prk_steps=True).step_plms`` (one evaluation per
  timestep plus one: the first step is a two-evaluation pseudo improved Euler step).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .diffusion import DiffusionBackend

_SCHEDULES: "weakref.WeakKeyDictionary[DiffusionBackend, Tuple[float, ...]]" = weakref.WeakKeyDictionary()


def cpu_schedule(backend: DiffusionBackend) -> Tuple[float, ...]:
    """The backend's ``alphas_cumprod`` as Python floats, read from the device once per backend and cached."""
    schedule = _SCHEDULES.get(backend)
    if schedule is None:
        schedule = tuple(backend.alphas_cumprod.detach().double().cpu().tolist())
        _SCHEDULES[backend] = schedule
    return schedule


def add_noise(x0: torch.Tensor, eps: torch.Tensor, alphas_cumprod: Sequence[float], t: int) -> torch.Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (t = 0 returns x0 unchanged: no noise).

    ``alphas_cumprod`` may be a tensor or, to avoid a device read, :func:`cpu_schedule`'s floats.
    """
    if t == 0:
        return x0
    abar = float(alphas_cumprod[t])
    return abar ** 0.5 * x0 + (1.0 - abar) ** 0.5 * eps


def solver_timesteps(t: int, stride: int) -> List[int]:
    """The timesteps a fixed-stride solver evaluates the network at, from t down to the last one above 0."""
    return list(range(t, 0, -stride))


@dataclass(frozen=True)
class Step:
    """One network evaluation and the linear update after it.

    With eps = network(z, timestep), the solver's model output m = out_z * z + out_eps * eps (the noise for
    DDIM and PLMS, the x0 prediction for DPM-Solver++) is kept as output number i (this step's index), and
    z <- next_z * z + sum(c * m_j for j, c in next_m).
    """

    timestep: int
    out_z: float
    out_eps: float
    next_z: float
    next_m: Tuple[Tuple[int, float], ...]


Plan = List[Step]


def _ddim_coeffs(a_t: float, a_prev: float) -> Tuple[float, float]:
    """(c_z, c_eps) of x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps, x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)."""
    c_z = math.sqrt(a_prev / a_t)
    return c_z, math.sqrt(1.0 - a_prev) - c_z * math.sqrt(1.0 - a_t)


def ddim_plan(abar: Sequence[float], t: int, stride: int) -> Plan:
    """DDIM (eta = 0) from t to timestep 0: one evaluation per timestep of :func:`solver_timesteps`."""
    steps = solver_timesteps(t, stride)
    plan = []
    for i, ti in enumerate(steps):
        c_z, c_eps = _ddim_coeffs(abar[ti], abar[steps[i + 1] if i + 1 < len(steps) else 0])
        plan.append(Step(ti, 0.0, 1.0, c_z, ((i, c_eps),)))
    return plan


def dpmpp2m_plan(abar: Sequence[float], t: int, stride: int) -> Plan:
    """DPM-Solver++(2M) from t to timestep 0 (data prediction, midpoint form, lower-order final step).

    With alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma), h = lambda_next - lambda_i and
    x0_i = (z - sigma_i eps) / alpha_i: z_next = (sigma_next / sigma_i) z - A x0_i (first order, A =
    alpha_next (exp(-h) - 1)) or - A (x0_i + (x0_i - x0_{i-1}) / (2 r)) with r = h_{i-1} / h (second order).
    """
    steps = solver_timesteps(t, stride)
    levels = [abar[s] for s in steps] + [abar[0]]
    alpha = [math.sqrt(a) for a in levels]
    sigma = [math.sqrt(1.0 - a) for a in levels]
    lam = [math.log(a / s) for a, s in zip(alpha, sigma)]
    plan = []
    for i, ti in enumerate(steps):
        h = lam[i + 1] - lam[i]
        big_a = alpha[i + 1] * math.expm1(-h)
        lower_order_final = i == len(steps) - 1 and len(steps) < 15
        if i == 0 or lower_order_final:
            next_m = ((i, -big_a),)
        else:
            r = (lam[i] - lam[i - 1]) / h
            next_m = ((i, -big_a * (1.0 + 0.5 / r)), (i - 1, 0.5 * big_a / r))
        plan.append(Step(ti, 1.0 / alpha[i], -sigma[i] / alpha[i], sigma[i + 1] / sigma[i], next_m))
    return plan


#: Adams-Bashforth weights of PLMS for 1 to 4 stored noise predictions, newest first.
_PLMS_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def plms_plan(abar: Sequence[float], t: int, stride: int) -> Plan:
    """PLMS (PNDM with ``skip_prk_steps``) from t to timestep 0: len(timesteps) + 1 evaluations.

    Evaluation 0 at z_0 takes a DDIM step to the next timestep (z'); evaluation 1 at z' redoes that step from
    z_0 with the mean of both noises, which is z' + c_eps (eps_1 - eps_0) / 2. Evaluation k >= 2 at timestep
    k - 1 combines the newest stored noises (evaluation 1's is not stored) with Adams-Bashforth weights.
    PNDM's transfer (its formula 9) is algebraically DDIM's step, so the DDIM coefficients serve both.
    """
    steps = solver_timesteps(t, stride)
    after = steps[1:] + [0]
    c_z, c_eps = _ddim_coeffs(abar[steps[0]], abar[after[0]])
    plan = [Step(steps[0], 0.0, 1.0, c_z, ((0, c_eps),)),
            Step(after[0], 0.0, 1.0, 1.0, ((1, 0.5 * c_eps), (0, -0.5 * c_eps)))]
    stored = [0]  # evaluations whose noise PLMS keeps
    for k in range(2, len(steps) + 1):
        stored = (stored + [k])[-4:]
        c_z, c_eps = _ddim_coeffs(abar[steps[k - 1]], abar[after[k - 1]])
        weights = _PLMS_WEIGHTS[len(stored) - 1]
        plan.append(Step(steps[k - 1], 0.0, 1.0, c_z, tuple((j, c_eps * w) for j, w in zip(reversed(stored), weights))))
    return plan


def run_plan(backend: DiffusionBackend, z: torch.Tensor, plan: Plan, labels: Optional[torch.Tensor],
             guidance: float) -> torch.Tensor:
    """Execute a solver plan: one guided network evaluation per step, then its linear update.

    Model outputs are kept only until the last step that uses them.
    """
    last_use = {j: i for i, step in enumerate(plan) for j, _ in step.next_m}
    outputs: Dict[int, torch.Tensor] = {}
    for i, step in enumerate(plan):
        eps = backend.predict_noise(z, step.timestep, labels, guidance)
        outputs[i] = eps * step.out_eps if step.out_z == 0.0 else torch.add(z * step.out_z, eps, alpha=step.out_eps)
        new = z * step.next_z
        for j, c in step.next_m:
            new.add_(outputs[j], alpha=c)
        z = new
        for j in [j for j in outputs if last_use.get(j, -1) <= i]:
            del outputs[j]
    return z


PlanBuilder = Callable[[Sequence[float], int, int], Plan]

#: Solvers (their plan builders) by the name used in configs (``solver:``).
SOLVERS: Dict[str, PlanBuilder] = {"ddim": ddim_plan, "dpmpp2m": dpmpp2m_plan, "plms": plms_plan}


def get_solver(name: str) -> PlanBuilder:
    """Look a solver's plan builder up by name, with the known names in the error."""
    try:
        return SOLVERS[name]
    except KeyError:
        raise ValueError(f"unknown solver {name!r}; choose one of {sorted(SOLVERS)}") from None


def network_evaluations(name: str, t: int, stride: int) -> int:
    """Network evaluations per sample (with guidance each is one call on the conditional + null pair)."""
    if t == 0:
        return 0
    dummy = tuple(1.0 - (i + 1) / (t + 2) for i in range(t + 1))  # any valid schedule: only the length counts
    return len(get_solver(name)(dummy, t, stride))


def denoise(name: str, backend: DiffusionBackend, z: torch.Tensor, t: int, stride: int,
            labels: Optional[torch.Tensor], guidance: float) -> torch.Tensor:
    """Solve from timestep t (sample z) back to 0 with the named solver."""
    return run_plan(backend, z, get_solver(name)(cpu_schedule(backend), t, stride), labels, guidance)


def ddim_denoise(backend: DiffusionBackend, z: torch.Tensor, t: int, stride: int,
                 labels: Optional[torch.Tensor], guidance: float) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from timestep t to 0, as diffusers' ``DDIMScheduler.step`` without clipping."""
    return denoise("ddim", backend, z, t, stride, labels, guidance)
