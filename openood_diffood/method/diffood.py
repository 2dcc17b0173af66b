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
pass of the same loop, sqrt(abar_0) x0 + sqrt(1 - abar_0) eps^r. Everything else about running this (micro-batches,
precision, compilation, batch sizes, caching) is :class:`openood_diffood.DiffOOD`'s.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..config import DiffOODSettings
from .features import Classifier
from .noise import sample_noise
from .scoring import feature_change
from .solvers import SOLVERS, add_noise, solver_timesteps


@dataclass
class BatchResult:
    """What :func:`diffood` finds for a batch: ``change`` (N,) is the DiffOOD score (higher = more OOD), ``pred``
    the classifier's prediction, ``logits`` its logits (for ``combine: energy``) and ``reconstructions``
    (N, R, C, H, W) in [0, 1]."""

    change: torch.Tensor
    pred: torch.Tensor
    logits: torch.Tensor
    reconstructions: torch.Tensor


def classify(classifier: Classifier, x: torch.Tensor, settings: DiffOODSettings) -> Tuple[torch.Tensor, torch.Tensor]:
    """(logits, g(x) flattened) of normalized images in the feature space of ``settings``."""
    if settings.space == "image":
        return classifier(x), settings.normalization.unnormalize(x).flatten(1)
    return classifier.features(x, settings.space, settings.threshold)


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


def diffood(classifier: Classifier, diffusion, x: torch.Tensor, keys: Sequence[Hashable], settings: DiffOODSettings,
            labels: Optional[torch.Tensor] = None) -> BatchResult:
    """The DiffOOD score of a batch of normalized images ``x`` (see the module docstring).

    ``keys`` name the images for their noise; ``labels`` replace the predictions as the conditioning classes.
    """
    norm, n, r = settings.normalization, x.shape[0], settings.repeats
    logits, feat = classify(classifier, x, settings)                        # classify
    pred = logits.argmax(1)
    if settings.timestep == 0:                                              # no noise: the input comes back
        recs = norm.unnormalize(x).unsqueeze(1).expand(n, r, *x.shape[1:])
        return BatchResult(feature_change(feat, feat.unsqueeze(1).expand(n, r, -1)), pred, logits, recs)
    y = pred if labels is None else labels
    if settings.class_map is not None:
        y = torch.as_tensor(settings.class_map, device=y.device)[y]
    size, hw = diffusion.sample_size, tuple(x.shape[-2:])
    x0 = _resized(norm.unnormalize(x) * 2 - 1, (size, size))               # map to [-1, 1]
    z0, eps = repeated_latents(diffusion, x0, keys, settings)
    rec = round_trip(diffusion, z0, eps, y if diffusion.conditional else None, settings)   # noise, denoise
    rec01 = (_resized(rec, hw).clamp(-1, 1) + 1) / 2
    _, rec_feat = classify(classifier, norm.normalize(rec01), settings)    # re-classify
    if settings.protocol == "official":                                    # per-repeat noised reference
        ref01 = (_resized(official_reference(diffusion, z0, eps), hw).clamp(-1, 1) + 1) / 2
        feat = classify(classifier, norm.normalize(ref01), settings)[1].view(n, r, -1)
    change = feature_change(feat, rec_feat.view(n, r, -1))                 # score the change
    return BatchResult(change, pred, logits, rec01.view(n, r, *rec01.shape[1:]))


def _resized(x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
