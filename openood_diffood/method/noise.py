"""Per-sample noise: each image's noise depends only on the global seed and the image's own key.

So a score never depends on the batch size, the image's position in a batch, the loader's order or the number
of processes. The default key is the image's content (its pixels quantized to 8 bits), so the same image always
draws the same noise; callers with stable ids (file names) may pass those instead.
"""
from __future__ import annotations

import hashlib
from typing import Hashable, List, Sequence, Tuple

import torch

from ..hashing import digest


def content_keys(x01: torch.Tensor) -> List[str]:
    """One key per image: a hash of its pixels in [0, 1] quantized to 8 bits."""
    q = (x01.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [digest(img.tobytes()) for img in q]


def key_seed(seed: int, key: Hashable) -> int:
    """A 63-bit generator seed from the global seed and one sample's key."""
    digest = hashlib.blake2b(f"{seed}\x00{key!r}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_noise(keys: Sequence[Hashable], seed: int, repeats: int, shape: Tuple[int, ...],
                 device: torch.device) -> torch.Tensor:
    """Standard normal noise of shape (len(keys), repeats, *shape), reproducible per key and repeat.

    Repeat r of a key draws from its own seed, so the draws of R repeats are the first R of any larger R.
    """
    out = torch.empty((len(keys), repeats, *shape))
    gen = torch.Generator()
    for i, key in enumerate(keys):
        for r in range(repeats):
            gen.manual_seed(key_seed(seed, (key, r)))
            out[i, r] = torch.randn(shape, generator=gen)
    return out.to(device, non_blocking=True)
