"""The diffusion backend as an engine runs it: at the engine's precision, optionally compiled, with channels-last
inputs. It wraps the backend without changing it, so several engines can share one loaded model."""
from __future__ import annotations

import contextlib
from typing import Callable, Optional, Tuple, Union

import torch

from ..models.diffusion import DiffusionBackend

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: What ``precision: auto`` means per device type (any other type: fp32); a test may switch the CPU to bf16.
AUTO_PRECISION = {"cuda": "bf16"}
#: The precisions an engine runs at (the ``precision`` setting's choices).
PRECISIONS = ("auto", "fp32", *AUTOCAST_DTYPES)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> :data:`AUTO_PRECISION` of the device type (bf16 on CUDA), fp32 elsewhere; other values as
    they are."""
    if precision == "auto":
        return AUTO_PRECISION.get(device.type, "fp32")
    return precision


class Execution:
    """``encode`` / ``decode`` / ``network`` of a backend under autocast at ``precision`` (fp32: none), the network
    optionally ``torch.compile``-d (``compile``: True for inductor, or a backend name) and fed channels-last."""

    def __init__(self, backend: DiffusionBackend, device: torch.device, precision: str,
                 compile: Union[bool, str] = False, channels_last: bool = False) -> None:
        self.backend = backend
        self.device = device
        self.precision = resolve_precision(precision, device)
        self.channels_last = channels_last
        self._compiled: Optional[Callable] = None
        if compile:
            self._compiled = torch.compile(backend.network, backend="inductor" if compile is True else compile,
                                           dynamic=False)

    @property
    def schedule(self) -> Tuple[float, ...]:
        return self.backend.schedule

    @property
    def sample_size(self) -> int:
        return self.backend.sample_size

    @property
    def conditional(self) -> bool:
        return self.backend.conditional

    @property
    def null_class(self) -> Optional[int]:
        return self.backend.null_class

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST_DTYPES[self.precision])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.backend.encode(x).float()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.backend.decode(z).float()

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        if self.channels_last and z.ndim == 4:
            z = z.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return (self._compiled or self.backend.network)(z, t, labels).float()
