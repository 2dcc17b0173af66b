"""The detection loop of the official DiffOOD code (runner/ood_detect.py ``diff_detect`` with runner/schedule.py
and runner/method.py), written out directly, and its score (detect/ood_detect.py).

Per image batch: y = argmax of the classifier on the clean image; per repeat k with noise eps_k:
img_n = sqrt(abar[t]) x + sqrt(1 - abar[t]) eps_k; then ``multi_iteration(img_n, t - 1, -1)`` visits
i = t - 1, t - 1 - stride, ..., evaluating the network at label i with the guided noise
(1 + beta) eps(y) - beta eps(null) and moving from abar[i + 1] to abar[next + 1] with PNDM's DDIM transfer (the last
step lands on abar[0]). Images are clamped to [0, 1] and classified; the score of timestep t is the mean over
repeats of || n(f(reference_k)) - n(f(rec_k)) ||_1, n(v) = v / (||v|| + 1e-10), where the official reference is
the t = 0 pass of the same loop (img_n at abar[0], not denoised).

``official=False`` switches the two protocol details the package does differently: the network label is the
noise level's own timestep i + 1, and the reference is the clean image.
"""
import math

import numpy as np
import torch


def official_alphas_cumprod(kind: str, beta_start: float = 1e-4, beta_end: float = 0.02, steps: int = 1000):
    """runner/schedule.py ``get_schedule``: float64 betas, then float32 alphas and their cumulative product."""
    if kind == "linear":
        betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
    elif kind == "cosine":
        abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = np.array([min(1 - abar((i + 1) / steps) / abar(i / steps), 0.999) for i in range(steps)])
    else:
        raise ValueError(kind)
    return (1.0 - torch.from_numpy(betas).float()).cumprod(0)


def transfer(x, e, a_t, a_next):
    """runner/method.py ``tran_ddim`` (PNDM's form of the DDIM step)."""
    a_t, a_next = torch.as_tensor(a_t), torch.as_tensor(a_next)
    coef_x = 1 / (a_t.sqrt() * (a_t.sqrt() + a_next.sqrt()))
    coef_e = 1 / (a_t.sqrt() * (((1 - a_next) * a_t).sqrt() + ((1 - a_t) * a_next).sqrt()))
    return x + (a_next - a_t) * (coef_x * x - coef_e * e)


def round_trip(eps_model, x, y, noise, t, stride, beta, abar, null, official=True):
    """Noise x (in [-1, 1]) to timestep t and denoise it back (``schedule.diffusion`` + ``multi_iteration``).

    ``eps_model(x, labels_t, y)``: the network; ``y`` None runs it unconditionally (``model(x, t)``)."""
    x = abar[t].sqrt() * x + (1 - abar[t]).sqrt() * noise
    seq = list(range(t - 1, -1, -stride))
    for i, j in zip(seq, seq[1:] + [-1]):
        label = torch.full((x.shape[0],), float(i if official else i + 1))
        if y is None:
            e = eps_model(x, label, None)
        else:
            e = (1 + beta) * eps_model(x, label, y) - beta * eps_model(x, label, torch.full_like(y, null))
        x = transfer(x, e, abar[i + 1], abar[j + 1])
    return x


def normalized(v):
    return v / (v.norm(dim=-1, keepdim=True) + 1e-10)


@torch.no_grad()
def official_scores(classifier, eps_model, images01, normalize, noises, t, stride, guidance, abar, null,
                    conditional=True, official=True, encode=None, decode=None):
    """The score of timestep t for images in [0, 1] with one noise tensor per repeat (``noises``: R tensors).

    ``guidance`` is the package's w; the official beta is w - 1. ``encode`` / ``decode`` (latent models) map
    [-1, 1] images to the space the network denoises and back (identity by default)."""
    encode = encode or (lambda v: v)
    decode = decode or (lambda v: v)
    y = classifier(normalize(images01)).argmax(1) if conditional else None
    x = encode(images01 * 2 - 1)
    changes = []
    for noise in noises:
        rec = decode(round_trip(eps_model, x, y, noise, t, stride, guidance - 1, abar, null, official))
        ref = (decode(abar[0].sqrt() * x + (1 - abar[0]).sqrt() * noise) * 0.5 + 0.5).clamp(0, 1) if official \
            else images01
        rec_logits = classifier(normalize((rec * 0.5 + 0.5).clamp(0, 1)))
        changes.append((normalized(classifier(normalize(ref))) - normalized(rec_logits)).abs().sum(-1))
    return torch.stack(changes, 1).mean(1)
