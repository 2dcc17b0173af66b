"""Size the engine's micro-batch to a GPU memory budget by a measured probe.

Each image of a micro-batch becomes ``repeats`` noised copies and ``2 x repeats`` network samples under guidance,
plus ``repeats`` decoded reconstructions and their classifier pass, so the peak memory of a micro-batch grows
linearly with its size on top of the models' weights. :func:`suggest_batch_size` measures the CUDA peak of a run
at two probe sizes (the engine's own code on random images, so weights, VAE, classifier, precision and ``repeats``
are all counted), fits ``peak(b) = base + b * per_image`` and returns the largest ``b`` that fits the budget.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch


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


def peak_bytes(run: Callable[[int], None], batch_size: int, device: torch.device) -> int:
    """Peak CUDA memory (bytes, weights included) of ``run(batch_size)``."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    run(batch_size)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def suggest_batch_size(run: Callable[[int], None], budget_bytes: int, device: torch.device,
                       probe_sizes: Sequence[int] = (1, 4)) -> int:
    """Largest batch size whose measured peak fits the budget; ``run(b)`` scores a micro-batch of ``b`` images."""
    if device.type != "cuda":
        raise ValueError(f"suggest_batch_size measures CUDA memory, but the engine runs on {device}; on a CPU pick "
                         "batch_size by hand (host memory is rarely the limit there)")
    return fit_batch_size({n: peak_bytes(run, n, device) for n in probe_sizes}, budget_bytes)
