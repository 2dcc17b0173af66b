"""Content digests: of bytes, of each image of an array, of a file."""
from __future__ import annotations

import hashlib
import os
from typing import List, Union

import numpy as np


def digest(data: bytes, size: int = 16) -> str:
    """Hex BLAKE2b digest of ``data`` (``size`` bytes)."""
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def item_digests(array: np.ndarray) -> List[str]:
    """One digest per item along the first axis, covering the item's shape, dtype and bytes."""
    array = np.ascontiguousarray(array)
    head = f"{array.dtype.str}{array.shape[1:]}".encode()
    return [digest(head + item.tobytes()) for item in array]


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
