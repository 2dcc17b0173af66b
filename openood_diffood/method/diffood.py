"""DiffOOD (Liu et al., "Diffusion Denoising Process for Perceptron Bias in Out-of-distribution Detection",
arXiv 2211.11255, Algorithms 2-3) for one batch of images.

For an input x, normalized as the classifier f expects, with prediction y = argmax f(x):

    x0     = 2 u(x) - 1                                   u undoes the normalization: [0, 1] -> [-1, 1]
    x_t^r  = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps^r     eps^r ~ N(0, I), r = 1 .. R
    x0^r   = solve(x_t^r, t -> 0)                         DDIM (eta = 0) with the guided noise prediction
             eps(z, s) = eps_null(z, s) + w (eps_y(z, s) - eps_null(z, s))
    score  = 1/R sum_r || n(g(x)) - n(g(u^-1((x0^r + 1) / 2))) ||_1,    n(v) = v / ||v||_2

g is the feature space: the logits, the penultimate feature (optionally clipped as in ReAct), an intermediate
layer, or the image itself. An in-distribution image comes back as itself; the diffusion model pulls an OOD image
towards the class the classifier predicted, and the classifier's view of it moves: a large score means OOD.

Latent models (DiT, LDM) encode x0 first and decode the solution; ``settings.resize`` maps the inputs into the
model's size and back. ``protocol: official`` follows the released DiffOOD code instead in two details: the network
is evaluated at label s - 1 for noise level abar[s], and g(x) is replaced, per repeat, by the features of the t = 0
pass of the same loop, sqrt(abar_0) x0 + sqrt(1 - abar_0) eps^r.

The algorithm is two steps: :func:`reconstruct` (classify, noise, denoise: the expensive part) and :func:`changes`
(re-classify and score, in any feature space or several); :func:`diffood` is the two composed, and a stored
:class:`RoundTrip` scores exactly as a fresh one. Everything else about running this (micro-batches,
precision, compilation, batch sizes, caching) is :class:`openood_diffood.DiffOOD`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from .features import Classifier
from .noise import sample_noise
from .scoring import repeat_changes
from .solvers import SOLVERS, add_noise, solver_timesteps
from .solvers import network_evaluations as solver_evaluations

# ``settings`` is an openood_diffood.config.DiffOODSettings, named in annotations only (never evaluated): config
# imports this module's PROTOCOLS, so importing it here would be a cycle.

#: The ``protocol`` setting's choices: this package's, or the released DiffOOD code's (see the module docstring).
PROTOCOLS = ("package", "official")
#: Settings that change only how round trips are scored, never a reconstruction.
SCORING_ONLY = ("space", "threshold", "combine", "combine_weight")


@dataclass
class RoundTrip:
    """What :func:`reconstruct` finds for a batch of N images: the classifier's ``pred`` and ``logits`` on the
    inputs, their ``reconstructions`` (N, R, C, H, W) in [0, 1], under ``protocol: official`` the per-repeat
    ``reference`` (N, R, C, H, W) in [0, 1] they are compared with (None: the input itself), and after
    :func:`diffood` the score ``change`` (N,) (higher = more OOD)."""

    pred: torch.Tensor
    logits: torch.Tensor
    reconstructions: torch.Tensor
    reference: Optional[torch.Tensor] = None
    change: Optional[torch.Tensor] = None

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "RoundTrip":
        """The round trip with ``fn`` applied to each of its tensors (slicing, moving)."""
        return RoundTrip(**{k: None if v is None else fn(v) for k, v in vars(self).items()})

    @staticmethod
    def concatenate(trips: Sequence["RoundTrip"]) -> "RoundTrip":
        """The round trips of several batches as one."""
        return RoundTrip(**{k: None if v is None else torch.cat([getattr(t, k) for t in trips])
                            for k, v in vars(trips[0]).items()})


def classify(classifier: Classifier, x: torch.Tensor, settings: DiffOODSettings,
             space: Optional[str] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits, g(x) flattened) of normalized images in ``space``: default the settings' own, clipped at their
    threshold; any other space unclipped."""
    space = space or settings.space
    if space == "image":
        return classifier(x), settings.normalization.unnormalize(x).flatten(1)
    return classifier.features(x, space, settings.threshold if space == settings.space else None)


def round_trip_settings(settings: DiffOODSettings) -> Dict[str, Any]:
    """Every setting that changes a reconstruction (all but :data:`SCORING_ONLY`; the normalization resolved)."""
    return {k: v for k, v in settings.identity().items() if k not in SCORING_ONLY}


def network_samples(settings: DiffOODSettings, diffusion) -> int:
    """Samples per image in each network call: R repeats, times 2 for the conditional + null pair of guidance
    (one branch at w = 0, at w = 1 and with an unconditional model; see :func:`guided_noise`)."""
    pair = diffusion.conditional and settings.guidance not in (0.0, 1.0)
    return settings.repeats * (2 if pair else 1)


def network_evaluations(settings: DiffOODSettings, diffusion) -> int:
    """The cost of a score: network evaluations (one sample through the network each) per image, the solver's
    evaluations times :func:`network_samples` (0 at timestep 0), summed over a list of timesteps."""
    return sum(solver_evaluations(settings.solver, t, settings.stride) for t in settings.timesteps) \
        * network_samples(settings, diffusion)


def guided_noise(diffusion, labels: Optional[torch.Tensor], w: float,
                 shift: int = 0) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """eps(z, t) = eps_null + w (eps_y - eps_null), both branches in one network call.

    ``w == 1`` (conditional only), ``w == 0`` (the null class only), an unconditional model or no labels need one
    branch and make a single call. The network sees timestep t - ``shift`` (1: the official code's label).
    """
    def eps(z: torch.Tensor, t: int) -> torch.Tensor:
        n = z.shape[0]
        steps = torch.full((n,), t - shift, device=z.device, dtype=torch.long)
        if labels is None:
            return diffusion.network(z, steps, None)
        if w in (0.0, 1.0):
            return diffusion.network(z, steps, labels if w == 1.0 else torch.full_like(labels, diffusion.null_class))
        null = torch.full_like(labels, diffusion.null_class)
        eps_y, eps_null = diffusion.network(torch.cat([z, z]), steps.repeat(2), torch.cat([labels, null])).chunk(2)
        return eps_null + w * (eps_y - eps_null)
    return eps


def repeated_latents(diffusion, x0: torch.Tensor, keys: Sequence[Hashable],
                     settings: DiffOODSettings) -> Tuple[torch.Tensor, torch.Tensor]:
    """(the latents of images in [-1, 1], each repeated R times, and each repeat's noise): both (N * R, C, H, W)."""
    n, r = x0.shape[0], settings.repeats
    z0 = diffusion.encode(x0)
    eps = sample_noise(keys, settings.seed, r, tuple(z0.shape[1:]), z0.device)
    z0 = z0.unsqueeze(1).expand(n, r, *z0.shape[1:]).reshape(n * r, *z0.shape[1:])
    return z0, eps.reshape_as(z0)


def round_trip(diffusion, z0: torch.Tensor, eps: torch.Tensor, labels: Optional[torch.Tensor],
               settings: DiffOODSettings) -> torch.Tensor:
    """Noise the repeated latents to timestep t with their noise and denoise them back: (N * R, C, H, W) images in
    [-1, 1] (``labels``: one per image)."""
    t = settings.timestep
    zt = add_noise(z0, eps, diffusion.schedule, t)
    labels = None if labels is None else labels.repeat_interleave(settings.repeats)
    solve = SOLVERS[settings.solver]
    guided = guided_noise(diffusion, labels, settings.guidance, shift=int(settings.protocol == "official"))
    z = solve(guided, zt, solver_timesteps(t, settings.stride), diffusion.schedule)
    return diffusion.decode(z)


def official_reference(diffusion, z0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The official code's reference: the t = 0 pass of its loop, noised to abar_0 and not denoised (per repeat)."""
    a = float(diffusion.schedule[0])
    return diffusion.decode(a ** 0.5 * z0 + (1.0 - a) ** 0.5 * eps)


def reconstruct(classifier: Classifier, diffusion, x: torch.Tensor, keys: Sequence[Hashable],
                settings: DiffOODSettings, labels: Optional[torch.Tensor] = None) -> RoundTrip:
    """The reconstruct step: classify the normalized images ``x``, noise them, denoise them conditioned on the
    predictions (``labels`` replace them) and map the results back to [0, 1]; under ``protocol: official`` also
    the official reference. ``keys`` name the images for their noise."""
    if isinstance(settings.timestep, tuple):
        raise ConfigError(f"a round trip has one timestep, the settings have {list(settings.timestep)}: reconstruct "
                          "with settings.replace(timestep=t) for each t")
    norm, n, r = settings.normalization, x.shape[0], settings.repeats
    logits = classifier(x)                                                  # classify
    pred = logits.argmax(1)
    if settings.timestep == 0:                                              # no noise: the input comes back
        return RoundTrip(pred, logits, norm.unnormalize(x).unsqueeze(1).expand(n, r, *x.shape[1:]))
    y = pred if labels is None else labels
    if settings.class_map is not None:
        y = torch.as_tensor(settings.class_map, device=y.device)[y]
    size, hw = diffusion.sample_size, tuple(x.shape[-2:])
    x0 = _resized(norm.unnormalize(x) * 2 - 1, (size, size))               # map to [-1, 1]
    z0, eps = repeated_latents(diffusion, x0, keys, settings)
    rec = round_trip(diffusion, z0, eps, y if diffusion.conditional else None, settings)   # noise, denoise
    rec01 = (_resized(rec, hw).clamp(-1, 1) + 1) / 2
    ref01 = None
    if settings.protocol == "official":                                    # per-repeat noised reference
        ref01 = (_resized(official_reference(diffusion, z0, eps), hw).clamp(-1, 1) + 1) / 2
        ref01 = ref01.view(n, r, *ref01.shape[1:])
    return RoundTrip(pred, logits, rec01.view(n, r, *rec01.shape[1:]), ref01)


def changes(classifier: Classifier, x: torch.Tensor, trip: RoundTrip, settings: DiffOODSettings,
            spaces: Optional[Sequence[str]] = None) -> Dict[str, torch.Tensor]:
    """The score step: the per-repeat changes (N, R) || n(g(ref)) - n(g(x_r)) ||_1 of a round trip of the
    normalized images ``x`` in each of ``spaces`` (default: the settings' space), ref = x, or the round trip's
    per-repeat reference (``protocol: official``)."""
    norm, (n, r) = settings.normalization, trip.reconstructions.shape[:2]
    spaces = list(spaces or [settings.space])
    if settings.timestep == 0:                                              # the input came back: no change
        return {sp: torch.zeros(n, r, device=x.device) for sp in spaces}
    rec = norm.normalize(trip.reconstructions.flatten(0, 1))
    ref = x if trip.reference is None else norm.normalize(trip.reference.flatten(0, 1))
    out = {}
    for sp in spaces:
        feat = classify(classifier, ref, settings, sp)[1]                  # re-classify, score the change
        feat = feat if trip.reference is None else feat.view(n, r, -1)
        out[sp] = repeat_changes(feat, classify(classifier, rec, settings, sp)[1].view(n, r, -1))
    return out


def diffood(classifier: Classifier, diffusion, x: torch.Tensor, keys: Sequence[Hashable], settings: DiffOODSettings,
            labels: Optional[torch.Tensor] = None) -> RoundTrip:
    """The DiffOOD score of a batch of normalized images ``x`` (see the module docstring): :func:`reconstruct`,
    then :func:`changes` averaged over the repeats. ``keys`` name the images for their noise; ``labels`` replace
    the predictions as the conditioning classes. With a list of timesteps, one round trip per timestep: ``change``
    (N, K) holds each one's score (the engine z-normalises and sums them), ``reconstructions`` (N, K * R, ...)."""
    if isinstance(settings.timestep, tuple):
        trips = [diffood(classifier, diffusion, x, keys, settings.replace(timestep=t), labels)
                 for t in settings.timestep]
        ref = None if trips[0].reference is None else torch.cat([t.reference for t in trips], 1)
        return RoundTrip(trips[0].pred, trips[0].logits, torch.cat([t.reconstructions for t in trips], 1), ref,
                         torch.stack([t.change for t in trips], 1))
    trip = reconstruct(classifier, diffusion, x, keys, settings, labels)
    trip.change = changes(classifier, x, trip, settings)[settings.space].mean(1)
    return trip


def _resized(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
