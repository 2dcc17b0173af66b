"""Keyed stores on disk and the score cache, so an interrupted run resumes and a finished set is never scored again.
A :class:`KeyedStore` folder ``<root>/<digest of key.json>/`` holds ``key.json`` (read back and checked on open)
and atomically written ``.npz`` files. The score cache keeps (score, prediction) by image digest, one
``unit-<digest>.npz`` per batch, under the engine's :meth:`~openood_diffood.DiffOOD.identity` (settings, precision,
version, model fingerprints): a score depends only on those and the image."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..hashing import digest, item_digests

#: Bump when the layout of the score cache's units or keys changes (2: the one model fingerprint, issue 20).
FORMAT = 2
_SCALARS = (bool, int, float, str, type(None))
#: Config entries that say where a model was loaded from, not what it computes.
_LOCATION = ("_name_or_path",)


def image_digests(x: torch.Tensor) -> List[str]:
    """One digest per image of its exact float32 input values (and shape)."""
    return item_digests(x.detach().float().cpu().contiguous().numpy())


def module_fingerprint(module: nn.Module) -> str:
    """Content hash of a model, the one every key uses: every submodule's public scalar attributes (a null class,
    a scaling factor) and ``config`` (diffusers models; without where the model was loaded from, so a copy
    elsewhere is the same model), and the name, dtype, shape and bytes of every parameter and buffer (persistent
    or not)."""
    h = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        attrs = {k: v for k, v in vars(sub).items() if not k.startswith("_") and isinstance(v, _SCALARS)}
        config = getattr(sub, "config", None)
        config = {k: v for k, v in config.items() if k not in _LOCATION} if isinstance(config, Mapping) else None
        h.update(json.dumps([name, attrs, config], sort_keys=True, default=repr).encode())
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


class KeyedStore:
    """``.npz`` files under one key (see the module docstring); ``key`` must be plain JSON data."""

    def __init__(self, root: Union[str, os.PathLike], key: Mapping[str, Any]) -> None:
        text = json.dumps(key, sort_keys=True, indent=1)
        self.key: Dict[str, Any] = json.loads(text)
        self.dir = Path(root) / digest(text.encode())
        key_file = self.dir / "key.json"
        if not key_file.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write(key_file, lambda f: f.write(text.encode()))
        elif key_file.read_text() != text:
            raise ConfigError(f"{key_file} does not hold the key its folder is named after (an edited or damaged "
                              f"store): remove {self.dir}, and its files are computed again")

    @staticmethod
    def keys(root: Union[str, os.PathLike]) -> List[Dict[str, Any]]:
        """The key of every store under ``root``."""
        return [json.loads(p.read_text()) for p in sorted(Path(root).glob("*/key.json"))]

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.npz"

    def has(self, name: str) -> bool:
        return self.path(name).exists()

    def names(self, prefix: str = "") -> List[str]:
        """The names of the stored files that start with ``prefix``, sorted."""
        return sorted(p.stem for p in self.dir.glob(f"{prefix}*.npz"))

    def load(self, name: str) -> Optional[Dict[str, np.ndarray]]:
        """The arrays of file ``name``, or None when it is not stored."""
        if not self.has(name):
            return None
        with np.load(self.path(name), allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def save(self, name: str, arrays: Mapping[str, Any]) -> None:
        """Write file ``name`` atomically."""
        atomic_write(self.path(name), lambda f: np.savez(f, **arrays))


class ScoreCache:
    """(score, prediction) per image digest under one identity (see the module docstring)."""

    def __init__(self, root: Union[str, os.PathLike], identity: Mapping[str, Any]) -> None:
        self._files = KeyedStore(root, identity)
        self.dir = self._files.dir
        self._entries: Dict[str, Tuple[float, int]] = {}
        self._read: set = set()
        self.refresh()

    def refresh(self) -> None:
        """Read the units written since the last refresh (by this or another process)."""
        for name in self._files.names("unit-"):
            if name not in self._read:
                self._remember(name, self._files.load(name))

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
        name = f"unit-{digest(''.join(keys).encode())}"
        arrays = {"keys": np.array(list(keys)), "score": scores.detach().cpu().float().numpy(),
                  "pred": preds.detach().cpu().long().numpy()}
        self._files.save(name, arrays)
        self._remember(name, arrays)

    def _remember(self, name: str, unit: Mapping[str, np.ndarray]) -> None:
        self._entries.update(zip(unit["keys"].tolist(), zip(unit["score"].tolist(), unit["pred"].tolist())))
        self._read.add(name)
