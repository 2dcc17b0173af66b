"""Size the engine's micro-batch to a GPU memory budget by a measured probe.

Each image of a micro-batch becomes ``repeats`` noised copies and ``2 x repeats`` network samples under
guidance, plus ``repeats`` decoded reconstructions and their classifier pass, so the peak memory of a micro-batch
grows linearly with its size on top of the models' weights. :func:`suggest_batch_size` measures the CUDA peak of
one solver step at two probe sizes (the engine's own code on random images, so the weights, the VAE, the
classifier, the precision and ``repeats`` are all counted), fits ``peak(b) = base + b * per_image`` and returns
the largest ``b`` that fits the budget. It measures; it does not estimate from parameter counts.
"""
from __future__ import annotations

import copy
import math
from typing import Mapping, Optional, Sequence

import torch

from .engine import DiffOOD


def fit_batch_size(peaks: Mapping[int, int], budget_bytes: int) -> int:
    """Largest batch size whose peak, extrapolated linearly from ``{batch size: peak bytes}``, fits the budget."""
    if len(peaks) < 2:
        raise ValueError("need the peak memory of at least two batch sizes to fit base + per-image memory")
    (n_lo, p_lo), (n_hi, p_hi) = min(peaks.items()), max(peaks.items())
    per_image = max((p_hi - p_lo) / (n_hi - n_lo), 1.0)
    base = p_lo - per_image * n_lo
    batch = math.floor((budget_bytes - base) / per_image)
    if batch < 1:
        raise ValueError(
            f"a memory budget of {budget_bytes / 2**30:.2f} GiB does not hold one image: the models take "
            f"{base / 2**30:.2f} GiB and each image {per_image / 2**30:.2f} GiB more; raise the budget, lower "
            "repeats, or load the diffusion model with torch_dtype=torch.float16")
    return batch


def probe_peak_bytes(engine: DiffOOD, batch_size: int, image_size: int) -> int:
    """Peak CUDA memory (bytes, weights included) of scoring ``batch_size`` random images of side ``image_size``.

    Runs one solver step (``timestep = stride``): every step needs the same memory, so the peak is that of the
    full setting. The engine itself is left unchanged.
    """
    probe = copy.copy(engine)
    probe.settings = engine.settings.replace(timestep=engine.settings.stride)
    probe.batch_size = batch_size
    probe.compile = False  # measure, do not compile for the probe's shapes
    channels = len(engine.settings.mean)
    x = probe.normalize(torch.rand(batch_size, channels, image_size, image_size))
    device = engine.device
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    probe.score(x)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def suggest_batch_size(engine: DiffOOD, budget_bytes: int, image_size: Optional[int] = None,
                       probe_sizes: Sequence[int] = (1, 4)) -> int:
    """Largest micro-batch (images; each is ``repeats x 2`` network samples) whose measured peak fits the budget.

    ``image_size`` is the side of the inputs the engine will see (default: the diffusion model's
    ``sample_size``; 224 for OpenOOD's ImageNet crops). Set ``engine.batch_size`` to the result.
    """
    if engine.device.type != "cuda":
        raise ValueError(f"suggest_batch_size measures CUDA memory, but the engine runs on {engine.device}; on a CPU "
                         "pick batch_size by hand (host memory is rarely the limit there)")
    size = image_size or engine.diffusion.sample_size
    peaks = {n: probe_peak_bytes(engine, n, size) for n in probe_sizes}
    return fit_batch_size(peaks, budget_bytes)
