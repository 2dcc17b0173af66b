"""The methods ``eval`` runs, built and checked before any scoring. DiffOOD's scores are kept by the engine's
score cache; every other method's per set by :class:`SetStore`, keyed by method, backend, classifier weights and
fit set, so a repeated ``eval`` recomputes only what did not finish."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import ConfigError
from ..hashing import digest, item_digests
from ..runtime.cache import KeyedStore
from ..runtime.engine import DiffOOD
from ..version import __version__
from .baselines import make_baselines

DIFFOOD = "diffood"


class DiffOODMethod:
    """The DiffOOD engine behind the same ``fit`` / ``score`` calls as the baselines."""

    name, backend, needs_fit = DIFFOOD, "openood_diffood", False

    def __init__(self, engine: DiffOOD) -> None:
        self.engine = engine

    def fit(self, data: object, progress: bool = False) -> "DiffOODMethod":
        """Nothing to fit."""
        return self

    def score(self, batches: Iterable[torch.Tensor], progress: bool = True, desc: str = "",
              total: Optional[int] = None) -> np.ndarray:
        """DiffOOD scores (higher = more OOD); finished images stay in the engine's cache when it has one."""
        out = [self.engine.score(x).score
               for x in tqdm(batches, desc=desc or DIFFOOD, total=total, disable=not progress, leave=False)]
        return torch.cat(out).numpy()


def build_runners(net: nn.Module, methods: Sequence[str], engine: Optional[DiffOOD], backend: str = "auto",
                  id_name: str = "cifar10") -> Dict[str, Any]:
    """Every method by name, built (and so checked) before anything is scored."""
    runners: Dict[str, Any] = {b.name: b for b in make_baselines([m for m in methods if m != DIFFOOD], net, backend,
                                                                 id_name)}
    if DIFFOOD in methods:
        if engine is None:
            raise ConfigError("method 'diffood' needs a diffusion model: give --diffusion <diffusers dir>")
        runners[DIFFOOD] = DiffOODMethod(engine)
    return {m: runners[m] for m in methods}


def check_fit_data(runners: Mapping[str, Any], has_fit: bool) -> None:
    """The methods fitted on ID training images have them (before any method runs)."""
    needy = [name for name, r in runners.items() if r.needs_fit]
    if needy and not has_fit:
        raise ConfigError(f"{', '.join(needy)} {'is' if len(needy) == 1 else 'are'} fitted on ID training images: "
                          "give --fit-data train.npz, or leave "
                          f"{', '.join(needy)} out of --postprocessor")


class SetStore:
    """Scores of finished (method, set) pairs: ``<root>/sets/<key>/<set digest>.npz`` (a :class:`KeyedStore`)."""

    def __init__(self, root: os.PathLike, identity: Mapping[str, Any]) -> None:
        self._files = KeyedStore(Path(root) / "sets", identity)
        self.dir = self._files.dir

    def get(self, images: np.ndarray) -> Optional[np.ndarray]:
        """The stored scores of this exact set of images, or None."""
        arrays = self._files.load(self._name(images))
        return None if arrays is None else arrays["score"]

    def put(self, images: np.ndarray, scores: np.ndarray) -> None:
        self._files.save(self._name(images), {"score": np.asarray(scores)})

    @staticmethod
    def _name(images: np.ndarray) -> str:
        return digest("".join(item_digests(images)).encode())


def baseline_identity(method: Any, classifier_fingerprint: str, fit_images: Optional[np.ndarray],
                      normalization: Any) -> Dict[str, Any]:
    """What a baseline's scores depend on besides the images scored."""
    fit = None if fit_images is None else digest("".join(item_digests(fit_images)).encode())
    return {"version": __version__, "method": method.name, "backend": method.backend,
            "classifier": classifier_fingerprint, "fit": fit if method.needs_fit else None,
            "normalization": [list(normalization.mean), list(normalization.std)]}
