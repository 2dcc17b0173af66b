"""Size the engine's micro-batch to a GPU memory budget: :func:`suggest_batch_size` measures the peak of the
engine's own code at two probe sizes, fits ``peak(b) = base + b * per_image`` and returns the largest ``b`` that
fits. Measurements go through a :class:`DeviceMemory` (``torch.cuda``, or a test's stand-in on the CPU)."""
from __future__ import annotations

import math
from typing import Callable, Mapping, Optional, Protocol, Sequence

import torch

from ..errors import ConfigError


def fit_batch_size(peaks: Mapping[int, int], budget_bytes: int) -> int:
    """Largest batch size whose peak, extrapolated linearly from ``{batch size: peak bytes}``, fits the budget."""
    if len(peaks) < 2:
        raise ValueError("need the peak memory of at least two batch sizes to fit base + per-image memory")
    (n_lo, p_lo), (n_hi, p_hi) = min(peaks.items()), max(peaks.items())
    per_image = max((p_hi - p_lo) / (n_hi - n_lo), 1.0)
    base = p_lo - per_image * n_lo
    batch = math.floor((budget_bytes - base) / per_image)
    if batch < 1:
        raise ConfigError(
            f"a memory budget of {budget_bytes / 2**30:.2f} GiB does not hold one image: the models take "
            f"{base / 2**30:.2f} GiB and each image {per_image / 2**30:.2f} GiB more; raise the budget, lower "
            "repeats, or load the diffusion model with torch_dtype=torch.float16")
    return batch


class DeviceMemory(Protocol):
    """The memory queries of ``batch_size: auto``: the engine's budget and the peak of a probe run."""

    def budget(self, fraction: float) -> int:
        """Bytes a micro-batch may use: what is allocated now plus ``fraction`` of the free memory."""

    def peak(self, run: Callable[[int], None], batch_size: int) -> int:
        """Peak bytes (weights included) of ``run(batch_size)``."""


class CudaMemory:
    """:class:`DeviceMemory` of one CUDA device, measured with ``torch.cuda``'s allocator statistics."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def budget(self, fraction: float) -> int:
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        return torch.cuda.memory_allocated(self.device) + int(fraction * free)

    def peak(self, run: Callable[[int], None], batch_size: int) -> int:
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        run(batch_size)
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device)


def device_memory(device: torch.device) -> Optional[DeviceMemory]:
    """The memory queries of ``device``: :class:`CudaMemory` on CUDA, None where memory is not measured (CPU)."""
    return CudaMemory(device) if device.type == "cuda" else None


def suggest_batch_size(run: Callable[[int], None], memory: DeviceMemory, fraction: float,
                       probe_sizes: Sequence[int] = (1, 4)) -> int:
    """Largest batch size whose measured peak fits ``fraction`` of the free memory; ``run(b)`` scores a
    micro-batch of ``b`` images."""
    budget = memory.budget(fraction)
    return fit_batch_size({n: memory.peak(run, n) for n in probe_sizes}, budget)
