"""Helpers shared by the benchmarks: where the shared real data is, and a bootstrap error bar for AUROC."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from openood_diffood.metrics import ood_metrics  # noqa: E402

#: Environment variable naming the shared data folder (default ``<repo>/../shared/data``).
DATA_ENV = "DIFFOOD_DATA"


def data_dir() -> Path:
    """The shared data folder; exits with a clear message when it is missing."""
    path = Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data"))
    if not (path / "cifar10_test.npz").is_file():
        raise SystemExit(f"shared data not found at {path}: set {DATA_ENV} to the folder with cifar10_test.npz")
    return path


def bootstrap_std(id_s: np.ndarray, ood_s: np.ndarray, rounds: int = 500, seed: int = 0) -> float:
    """Standard deviation of the AUROC (fraction) over bootstrap resamples of both sets."""
    rng = np.random.default_rng(seed)
    return float(np.std([ood_metrics(rng.choice(id_s, id_s.size), rng.choice(ood_s, ood_s.size))["AUROC"]
                         for _ in range(rounds)]))
