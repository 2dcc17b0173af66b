"""Score cache: an interrupted run resumes where it stopped, and a finished set is never scored again.

A DiffOOD score is a pure function of the input image's values, the settings and the two models (each image's
noise derives from its own content, see :mod:`openood_diffood.method.noise`). So the cache maps an image digest
(its exact input values) to its (score, prediction) under a key that covers everything else:

``<cache_dir>/<key>/``: ``key.json`` (what the key covers, readable) and one ``unit-<digest>.npz`` per finished
batch, written atomically (temporary file + ``os.replace``), so a killed run leaves only complete units. The key
is the engine's :meth:`~openood_diffood.DiffOOD.identity`: every setting, the resolved precision, the package
version and a content fingerprint of the classifier and of the diffusion model; change any of them and the scores
go to a fresh directory. Units are named by their images, so any rank, dataset, order or batching finds them.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..hashing import digest, item_digests

#: Bump when the unit file layout changes.
FORMAT = 1
_SCALARS = (bool, int, float, str, type(None))


def image_digests(x: torch.Tensor) -> List[str]:
    """One digest per image of its exact float32 input values (and shape)."""
    return item_digests(x.detach().float().cpu().contiguous().numpy())


def module_fingerprint(module: nn.Module) -> str:
    """Content hash of a module: every submodule's public scalar attributes (a null class, a scaling factor) and
    ``config`` (diffusers models), and the name, dtype, shape and bytes of every parameter and buffer (persistent
    or not)."""
    h = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        attrs = {k: v for k, v in vars(sub).items() if not k.startswith("_") and isinstance(v, _SCALARS)}
        config = getattr(sub, "config", None)
        h.update(json.dumps([name, attrs, dict(config) if isinstance(config, Mapping) else None], sort_keys=True,
                            default=repr).encode())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write through a temporary file in the same directory, then rename it into place."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class ScoreCache:
    """(score, prediction) per image digest under one identity (see the module docstring)."""

    def __init__(self, root: Union[str, os.PathLike], identity: Mapping[str, Any]) -> None:
        text = json.dumps(identity, sort_keys=True, indent=1, default=repr)
        self.dir = Path(root) / digest(text.encode())
        self.dir.mkdir(parents=True, exist_ok=True)
        key_file = self.dir / "key.json"
        if not key_file.exists():
            atomic_write(key_file, lambda f: f.write(text.encode()))
        self._entries: Dict[str, Tuple[float, int]] = {}
        self._read: set = set()
        self.refresh()

    def refresh(self) -> None:
        """Read the units written since the last refresh (by this or another process)."""
        for path in sorted(self.dir.glob("unit-*.npz")):
            if path.name in self._read:
                continue
            with np.load(path, allow_pickle=False) as unit:
                self._entries.update(zip(unit["keys"].tolist(), zip(unit["score"].tolist(), unit["pred"].tolist())))
            self._read.add(path.name)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, keys: Sequence[str]) -> List[bool]:
        """Which of ``keys`` have a cached result."""
        return [k in self._entries for k in keys]

    def get(self, keys: Sequence[str]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores float32, predictions int64) of cached ``keys``."""
        entries = [self._entries[k] for k in keys]
        return (torch.tensor([e[0] for e in entries], dtype=torch.float32),
                torch.tensor([e[1] for e in entries], dtype=torch.long))

    def store(self, keys: Sequence[str], scores: torch.Tensor, preds: torch.Tensor) -> None:
        """Write one finished unit atomically and remember it."""
        if not keys:
            return
        name = f"unit-{digest(''.join(keys).encode())}.npz"
        arrays = {"keys": np.array(list(keys)), "score": scores.detach().cpu().float().numpy(),
                  "pred": preds.detach().cpu().long().numpy()}
        atomic_write(self.dir / name, lambda f: np.savez(f, **arrays))
        self._read.add(name)
        self._entries.update(zip(keys, zip(arrays["score"].tolist(), arrays["pred"].tolist())))
