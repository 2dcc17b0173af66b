"""Resumable store of DiffOOD reconstructions for the benchmarks.

The diffusion round trip is the expensive part of DiffOOD; every feature space and every number of repeats up to R
can be scored from the same reconstructions. So the benchmarks run the round trip once per (image, setting) and
keep the result on disk: ``<cache_dir>/<engine key>/chunk-<digest>.npz`` holds the reconstructions (N, R, C, H, W)
in [0, 1] and the input's predictions for one chunk of images, written atomically. The engine key is the score
cache's (every setting, the package version and both models' content), so a changed setting never reuses a stale
file, and an interrupted run loses at most one chunk.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from openood_diffood import DiffOOD, DiffOODSettings
from openood_diffood.cache import atomic_write, engine_identity
from openood_diffood.evaluation import normalized_batches
from openood_diffood.scoring import repeat_changes


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def reconstructions(engine: DiffOOD, images: np.ndarray, cache_dir: str, chunk: int = 20,
                    desc: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """(reconstructions float32 (N, R, C, H, W) in [0, 1], predictions (N,)) of uint8 NHWC ``images``."""
    identity = engine_identity(engine)
    identity["settings"].pop("combine")  # a scoring option: the reconstructions do not depend on it
    folder = Path(cache_dir) / _digest(json.dumps(identity, sort_keys=True).encode())
    folder.mkdir(parents=True, exist_ok=True)
    s = engine.settings
    recs, preds = [], []
    starts = range(0, len(images), chunk)
    for start, x in tqdm(zip(starts, normalized_batches(images, s.mean, s.std, chunk)), total=len(starts),
                         desc=desc or "reconstruct", leave=False):
        path = folder / f"chunk-{_digest(images[start:start + chunk].tobytes())}.npz"
        if not path.exists():
            rec, out = engine.reconstruct(x)
            arrays = {"recs": rec.numpy().astype(np.float32), "pred": out.pred.numpy()}
            atomic_write(path, lambda f: np.savez(f, **arrays))
        with np.load(path, allow_pickle=False) as unit:
            recs.append(unit["recs"])
            preds.append(unit["pred"])
    return np.concatenate(recs), np.concatenate(preds)


@torch.no_grad()
def changes_by_space(engine: DiffOOD, images: np.ndarray, recs: np.ndarray, spaces: Sequence[str],
                     batch: int = 100) -> Dict[str, np.ndarray]:
    """Per-repeat feature changes (N, R) in each space for ``images`` and their stored reconstructions."""
    s = engine.settings
    out: Dict[str, list] = {sp: [] for sp in spaces}
    for start, x in zip(range(0, len(images), batch), normalized_batches(images, s.mean, s.std, batch)):
        rec = torch.from_numpy(recs[start:start + batch])
        n, r = rec.shape[:2]
        rec_norm = engine.normalize(rec.flatten(0, 1))
        for sp in spaces:
            settings = s.replace(space=sp, threshold=None) if sp != s.space else s
            _, feat = engine.features(x, settings)
            _, rec_feat = engine.features(rec_norm, settings)
            out[sp].append(repeat_changes(feat, rec_feat.view(n, r, -1)).numpy())
    return {sp: np.concatenate(v) for sp, v in out.items()}


def settings_label(s: DiffOODSettings) -> str:
    """A short description of the round trip's settings."""
    w = "unconditional" if s.guidance == 0 else f"w = {s.guidance:g}"
    return f"t = {s.timestep}, {w}, R = {s.repeats}, {s.solver} stride {s.stride}, seed {s.seed}"
