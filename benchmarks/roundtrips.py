"""Resumable store of DiffOOD round trips (format 3), shared by every benchmark.

The diffusion round trip (the reconstruct step of :mod:`openood_diffood.method.diffood`) is the expensive part of
DiffOOD; every feature space and every number of repeats up to R can be scored from the same round trips by the
package's own score step. So the benchmarks run it once per (image, setting) and keep it in a
:class:`~openood_diffood.runtime.cache.KeyedStore` under ``<cache_dir>``: the key is ``{"format": 3, "round_trip":
every setting that changes a reconstruction (``round_trip_settings``: all but the feature space, its threshold and
``combine``; ``protocol`` included) with the resolved precision, "classifier": fingerprint, "diffusion":
fingerprint}`` (the engine's model fingerprints), and ``chunk-<blake2b-16 of the chunk's uint8 NHWC bytes>.npz``
holds ``recs`` float32 (n, R, C, H, W) in [0, 1], ``pred``, ``logits``, ``reference`` (``protocol: official``
only) and ``seconds`` (the compute time of that chunk) for CHUNK consecutive images of a set. A request for fewer
repeats reads the first R of a stored larger R (each repeat's noise is independent of R), so changing the feature
space or the repeats recomputes nothing. Format 3 (issue 20) invalidated the format-2 round trips: their key left
``protocol`` out and used another model fingerprint.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from openood_diffood import DiffOOD
from openood_diffood.hashing import digest
from openood_diffood.method.diffood import RoundTrip, changes, round_trip_settings
from openood_diffood.runtime.cache import KeyedStore

FORMAT = 3
#: Images per stored chunk (consecutive images of a set, in set order).
CHUNK = 25


def identity(engine: DiffOOD, repeats: Optional[int] = None) -> Dict[str, Any]:
    """The key of ``engine``'s round trips (with ``repeats`` instead of the engine's, when given)."""
    key = {**round_trip_settings(engine.settings), "precision": engine.precision}
    if repeats is not None:
        key["repeats"] = repeats
    return {"format": FORMAT, "round_trip": key, **engine.fingerprints()}


@dataclass
class RoundTripStore:
    """Round trips under ``cache_dir`` (see the module docstring); ``seconds`` records the stored compute time of
    every chunk read or written, so a results file can state the total compute behind it."""

    cache_dir: Union[str, os.PathLike]
    seconds: Dict[str, float] = field(default_factory=dict)

    def stores(self, engine: DiffOOD) -> List[KeyedStore]:
        """The store of ``engine``'s round trips, then those of the same round trip with more repeats (fewest
        first), which hold its round trips too."""
        r = engine.settings.repeats
        keys = KeyedStore.keys(self.cache_dir)
        stored = {k.get("round_trip", {}).get("repeats", 0) for k in keys}
        more = sorted(m for m in stored if m > r and identity(engine, m) in keys)
        return [KeyedStore(self.cache_dir, identity(engine, m)) for m in [r, *more]]

    def get(self, engine: DiffOOD, images: np.ndarray, desc: str = "", compute: bool = True) -> RoundTrip:
        """The round trips (on the CPU) of uint8 NHWC ``images`` under ``engine``'s settings, computed where none is
        stored (``compute=False``: a missing chunk is an error)."""
        r = engine.settings.repeats
        stores = self.stores(engine)
        trips = []
        for start in tqdm(range(0, len(images), CHUNK), desc=desc or "round trips", leave=False):
            block = np.ascontiguousarray(images[start:start + CHUNK])
            name = f"chunk-{digest(block.tobytes())}"
            store = next((s for s in stores if s.has(name)), None)
            if store is None:
                if not compute:
                    raise FileNotFoundError(f"round trip {stores[0].path(name)} is not stored ({desc})")
                store = stores[0]
                self._compute(engine, block, store, name)
            unit = store.load(name)
            self.seconds[str(store.path(name))] = float(unit["seconds"])
            trips.append(RoundTrip(torch.from_numpy(unit["pred"]), torch.from_numpy(unit["logits"]),
                                   torch.from_numpy(unit["recs"][:, :r]),
                                   torch.from_numpy(unit["reference"][:, :r]) if "reference" in unit else None))
        return RoundTrip.concatenate(trips)

    def missing(self, engine: DiffOOD, images: np.ndarray) -> int:
        """How many chunks of ``images`` are not stored for ``engine``."""
        stores = self.stores(engine)
        names = [f"chunk-{digest(np.ascontiguousarray(images[i:i + CHUNK]).tobytes())}"
                 for i in range(0, len(images), CHUNK)]
        return sum(not any(s.has(n) for s in stores) for n in names)

    @staticmethod
    def _compute(engine: DiffOOD, block: np.ndarray, store: KeyedStore, name: str) -> None:
        start = time.perf_counter()
        trip = engine.round_trips(engine.settings.normalization.from_uint8(block))
        arrays = {"recs": trip.reconstructions.float().numpy(), "pred": trip.pred.numpy(),
                  "logits": trip.logits.float().numpy(), "seconds": np.float64(time.perf_counter() - start)}
        if trip.reference is not None:
            arrays["reference"] = trip.reference.float().numpy()
        store.save(name, arrays)

    def compute_seconds(self) -> float:
        """Total stored compute time of every chunk this store has read or written."""
        return float(sum(self.seconds.values()))


@torch.no_grad()
def changes_by_space(engine: DiffOOD, images: np.ndarray, trips: RoundTrip, spaces: Sequence[str],
                     batch: int = 100) -> Dict[str, np.ndarray]:
    """Per-repeat changes (N, R) in each space of uint8 ``images`` and their round trips, by the package's score
    step."""
    out: Dict[str, List[np.ndarray]] = {sp: [] for sp in spaces}
    for start in range(0, len(images), batch):
        x = engine.settings.normalization.from_uint8(images[start:start + batch]).to(engine.device)
        part = trips.apply(lambda t: t[start:start + batch].to(engine.device))
        for sp, change in changes(engine.classifier, x, part, engine.settings, spaces).items():
            out[sp].append(change.cpu().numpy())
    return {sp: np.concatenate(v) for sp, v in out.items()}


def scores(store: RoundTripStore, engine: DiffOOD, images: np.ndarray, desc: str = "",
           spaces: Optional[Sequence[str]] = None, compute: bool = True) -> Dict[str, np.ndarray]:
    """Per-repeat changes (N, R) by space (default: the engine's) of ``images``, from stored round trips."""
    trips = store.get(engine, images, desc, compute)
    return changes_by_space(engine, images, trips, spaces or [engine.settings.space])
