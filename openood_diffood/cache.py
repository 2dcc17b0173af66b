"""Score cache: an interrupted run resumes where it stopped, and a finished dataset is never scored again.

A DiffOOD score is a pure function of the input image's values, the settings and the two models (each image's
noise derives from its own content, see :mod:`openood_diffood.noise`). So the cache maps an image digest (its
exact input values) to its (score, prediction) under a key that covers everything else:

``<cache_dir>/<key>/``: ``key.json`` (what the key covers, readable) and one ``unit-<digest>.npz`` per finished
batch, written atomically (temporary file + ``os.replace``), so a killed run leaves only complete units. The key
hashes every setting (:meth:`DiffOODSettings.as_dict`), the resolved precision, the package version and a content
fingerprint of the classifier and of the diffusion model (weights, buffers, configs and structure): change any of
them and the scores go to a fresh directory. Units are named by their images, so any rank, dataset, order or
batching finds them again.
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

from .engine import DiffOOD

#: Bump when the unit file layout changes.
FORMAT = 1
_SCALARS = (bool, int, float, str, type(None))


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def image_digests(x: torch.Tensor) -> List[str]:
    """One digest per image of the exact float32 input values (and shape)."""
    x = x.detach().float().cpu().contiguous()
    shape = repr(tuple(x.shape[1:])).encode()
    return [_digest(shape + img.numpy().tobytes()) for img in x]


def _plain(value: Any) -> Any:
    """Config / attribute values -> JSON-able (unknown objects by their repr)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, _SCALARS) else repr(value)


def module_fingerprint(module: nn.Module) -> str:
    """Content hash of a module: every submodule's type, public scalar attributes and ``config`` (diffusers
    models), and the name, dtype, shape and bytes of every parameter and buffer (persistent or not)."""
    h = hashlib.blake2b(digest_size=16)
    for name, sub in module.named_modules():
        attrs = {k: v for k, v in vars(sub).items() if not k.startswith("_") and isinstance(v, _SCALARS)}
        config = getattr(sub, "config", None)
        info = [name, type(sub).__qualname__, attrs, _plain(config) if isinstance(config, Mapping) else None]
        h.update(json.dumps(info, sort_keys=True, default=repr).encode())
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def engine_identity(engine: DiffOOD) -> Dict[str, Any]:
    """Everything besides the image that determines a :class:`~openood_diffood.DiffOOD` engine's scores."""
    from . import __version__

    identity = {"format": FORMAT, "version": __version__, "settings": _plain(engine.settings.as_dict()),
                "precision": engine.precision, "classifier": module_fingerprint(engine.classifier),
                "diffusion": module_fingerprint(engine.diffusion)}
    if engine.settings.combine is not None:  # the scores depend on the ID validation statistics too
        identity["calibration"] = engine.calibration.as_dict() if engine.calibration is not None else None
    return identity


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
    """(score, prediction) per image digest under one engine identity (see the module docstring)."""

    def __init__(self, root: Union[str, os.PathLike], identity: Mapping[str, Any]) -> None:
        text = json.dumps(_plain(identity), sort_keys=True, indent=1)
        self.dir = Path(root) / _digest(text.encode())
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
        name = f"unit-{_digest(''.join(keys).encode())}.npz"
        arrays = {"keys": np.array(list(keys)), "score": scores.detach().cpu().float().numpy(),
                  "pred": preds.detach().cpu().long().numpy()}
        atomic_write(self.dir / name, lambda f: np.savez(f, **arrays))
        self._read.add(name)
        self._entries.update(zip(keys, zip(arrays["score"].tolist(), arrays["pred"].tolist())))

    def score(self, engine: DiffOOD, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(scores, predictions) of a batch: cached images are looked up, the others scored and stored as a unit."""
        keys = image_digests(x)
        missing = [i for i, hit in enumerate(self.lookup(keys)) if not hit]
        if missing:
            out = engine.score(x[missing])
            self.store([keys[i] for i in missing], out.score, out.pred)
        return self.get(keys)
