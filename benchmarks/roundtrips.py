"""Resumable store of DiffOOD round trips (format 2), shared by every benchmark.

The diffusion round trip is the expensive part of DiffOOD; every feature space and every number of repeats up to R
can be scored from the same reconstructions. So the benchmarks run it once per (image, setting) and keep it:

``<cache_dir>/<blake2b-16 of key.json>/key.json`` names the round trip: ``{"format": 2, "round_trip": {timestep,
guidance, repeats, stride, solver, seed, precision, resize, class_map, mean, std}, "classifier": fingerprint,
"diffusion": fingerprint}`` (``json.dumps(sort_keys=True, indent=1)``), and beside it ``chunk-<blake2b-16 of the
chunk's uint8 NHWC bytes>.npz`` holds ``recs`` float32 (n, R, C, H, W) in [0, 1], ``pred`` and ``seconds`` (the
compute time of that chunk) for CHUNK consecutive images of a set. Chunks are written atomically, so an interrupted
run loses at most one. A request for fewer repeats reads the first R of a stored larger R (each repeat's noise is
independent of R), so changing the feature space or the repeats recomputes nothing.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from openood_diffood import DiffOOD
from openood_diffood.config import LAYER_SPACE
from openood_diffood.hashing import digest
from openood_diffood.method.scoring import repeat_changes
from openood_diffood.runtime.cache import atomic_write

FORMAT = 2
#: Images per stored chunk (consecutive images of a set, in set order).
CHUNK = 25


def tensor_fingerprint(tensors: Mapping[str, torch.Tensor], extra: Optional[Mapping[str, Any]] = None) -> str:
    """blake2b-16 over every tensor's name, dtype, shape and bytes (sorted by name), then ``extra`` as JSON."""
    h = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.flatten().view(torch.uint8).numpy().tobytes())
    if extra is not None:
        h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def model_fingerprints(classifier: nn.Module, backend: nn.Module) -> Tuple[str, str]:
    """(classifier, diffusion) fingerprints of a classifier and a pixel UNet backend, as the store's keys use them;
    the UNet's config enters without ``_name_or_path`` (where a model was loaded from changes nothing it computes,
    so a checkout or data folder elsewhere finds the same round trips)."""
    unet = backend.unet
    tensors = {**{f"unet.{k}": v for k, v in unet.state_dict().items()}, "alphas_cumprod": backend.alphas_cumprod}
    config = {k: v for k, v in unet.config.items() if k != "_name_or_path"}
    return tensor_fingerprint(classifier.state_dict()), tensor_fingerprint(tensors, extra=config)


def round_trip_key(engine: DiffOOD) -> Dict[str, Any]:
    """The settings a round trip depends on (the feature space, threshold and combine do not enter)."""
    s, norm = engine.settings, engine.settings.normalization
    return {"timestep": s.timestep, "guidance": s.guidance, "repeats": s.repeats, "stride": s.stride,
            "solver": s.solver, "seed": s.seed, "precision": engine.precision, "resize": s.resize,
            "class_map": None if s.class_map is None else list(s.class_map), "mean": list(norm.mean),
            "std": list(norm.std)}


@dataclass
class RoundTrips:
    """A set's reconstructions (N, R, C, H, W) in [0, 1] and the classifier's predictions (N,)."""

    recs: np.ndarray
    pred: np.ndarray


@dataclass
class RoundTripStore:
    """Round trips under ``cache_dir`` (see the module docstring); ``seconds`` records the stored compute time of
    every chunk read or written, so a results file can state the total compute behind it."""

    cache_dir: Path
    seconds: Dict[str, float] = field(default_factory=dict)
    #: (classifier, backend, their fingerprints) by the modules' ids; holding the modules keeps an id from being
    #: reused by a later model while its entry lives (a freed model's id can come back for the next one loaded).
    _fingerprints: Dict[Tuple[int, int], Tuple[nn.Module, nn.Module, Tuple[str, str]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir)
        self.cache_dir.mkdir(parents=True, exist_ok=True)

    def identity(self, engine: DiffOOD, repeats: Optional[int] = None) -> Dict[str, Any]:
        """The key of ``engine``'s round trips (with ``repeats`` instead of the engine's, when given)."""
        net, backend = engine.classifier.net, engine.diffusion
        models = (id(net), id(backend))
        if models not in self._fingerprints:
            self._fingerprints[models] = (net, backend, model_fingerprints(net, backend))
        classifier, diffusion = self._fingerprints[models][2]
        key = round_trip_key(engine)
        if repeats is not None:
            key["repeats"] = repeats
        return {"format": FORMAT, "round_trip": key, "classifier": classifier, "diffusion": diffusion}

    def folder(self, identity: Mapping[str, Any]) -> Path:
        text = json.dumps(identity, sort_keys=True, indent=1)
        folder = self.cache_dir / digest(text.encode())
        if not (folder / "key.json").exists():
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / "key.json", lambda f: f.write(text.encode()))
        return folder

    def larger(self, engine: DiffOOD) -> List[Path]:
        """Folders of the same round trip with more repeats than the engine's, fewest first."""
        r = engine.settings.repeats
        found = []
        for key_file in self.cache_dir.glob("*/key.json"):
            key = json.loads(key_file.read_text())
            more = key.get("round_trip", {}).get("repeats", 0)
            if more > r and key == self.identity(engine, more):
                found.append((more, key_file.parent))
        return [f for _, f in sorted(found)]

    def get(self, engine: DiffOOD, images: np.ndarray, desc: str = "", compute: bool = True) -> RoundTrips:
        """The round trips of uint8 NHWC ``images`` under ``engine``'s settings, computed where none is stored
        (``compute=False``: a missing chunk is an error)."""
        r = engine.settings.repeats
        folders = [self.folder(self.identity(engine)), *self.larger(engine)]
        recs, preds = [], []
        starts = range(0, len(images), CHUNK)
        for start in tqdm(starts, desc=desc or "round trips", leave=False):
            block = np.ascontiguousarray(images[start:start + CHUNK])
            name = f"chunk-{digest(block.tobytes())}.npz"
            path = next((f / name for f in folders if (f / name).exists()), None)
            if path is None:
                if not compute:
                    raise FileNotFoundError(f"round trip {folders[0] / name} is not stored ({desc})")
                path = folders[0] / name
                self._compute(engine, block, path)
            with np.load(path, allow_pickle=False) as unit:
                recs.append(unit["recs"][:, :r])
                preds.append(unit["pred"])
                self.seconds[str(path)] = float(unit["seconds"])
        return RoundTrips(np.concatenate(recs), np.concatenate(preds))

    def missing(self, engine: DiffOOD, images: np.ndarray) -> int:
        """How many chunks of ``images`` are not stored for ``engine``."""
        folders = [self.folder(self.identity(engine)), *self.larger(engine)]
        names = [f"chunk-{digest(np.ascontiguousarray(images[i:i + CHUNK]).tobytes())}.npz"
                 for i in range(0, len(images), CHUNK)]
        return sum(not any((f / n).exists() for f in folders) for n in names)

    @staticmethod
    def _compute(engine: DiffOOD, block: np.ndarray, path: Path) -> None:
        start = time.perf_counter()
        rec, out = engine.reconstruct(engine.settings.normalization.from_uint8(block))
        arrays = {"recs": rec.numpy().astype(np.float32), "pred": out.pred.numpy(),
                  "seconds": np.float64(time.perf_counter() - start)}
        atomic_write(path, lambda f: np.savez(f, **arrays))

    def compute_seconds(self) -> float:
        """Total stored compute time of every chunk this store has read or written."""
        return float(sum(self.seconds.values()))


def _features(engine: DiffOOD, x: torch.Tensor, spaces: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Flattened features of normalized images in each space; the layers and the logits of an OpenOOD-style net
    come from one ``return_feature_list`` pass, every other space from :meth:`DiffOOD.features`."""
    out: Dict[str, torch.Tensor] = {}
    layers = {sp: int(m.group(1)) for sp in spaces if (m := LAYER_SPACE.match(sp))}
    if layers and engine.classifier.openood_style:
        logits, feats = engine.classifier.net(x.to(engine.device), return_feature_list=True)
        out.update({sp: feats[k].flatten(1) for sp, k in layers.items()}, logit=logits)
    s = engine.settings
    for sp in spaces:
        if sp not in out:
            out[sp] = engine.features(x, s if sp == s.space else s.replace(space=sp, threshold=None))[1]
    return {sp: out[sp] for sp in spaces}


@torch.no_grad()
def changes_by_space(engine: DiffOOD, images: np.ndarray, recs: np.ndarray, spaces: Sequence[str],
                     batch: int = 100) -> Dict[str, np.ndarray]:
    """Per-repeat feature changes (N, R) in each space for uint8 ``images`` and their reconstructions ``recs``."""
    norm = engine.settings.normalization
    out: Dict[str, List[np.ndarray]] = {sp: [] for sp in spaces}
    for start in range(0, len(images), batch):
        x = norm.from_uint8(images[start:start + batch])
        rec = torch.from_numpy(recs[start:start + batch])
        n, r = rec.shape[:2]
        feat = _features(engine, x, spaces)
        rec_feat = _features(engine, norm.normalize(rec.flatten(0, 1)), spaces)
        for sp in spaces:
            out[sp].append(repeat_changes(feat[sp], rec_feat[sp].view(n, r, -1)).numpy())
    return {sp: np.concatenate(v) for sp, v in out.items()}


def scores(store: RoundTripStore, engine: DiffOOD, images: np.ndarray, desc: str = "",
           spaces: Union[None, Sequence[str]] = None, compute: bool = True) -> Dict[str, np.ndarray]:
    """Per-repeat changes (N, R) by space (default: the engine's) of ``images``, from stored round trips."""
    trips = store.get(engine, images, desc, compute)
    return changes_by_space(engine, images, trips.recs, spaces or [engine.settings.space])
