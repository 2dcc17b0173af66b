"""The choices ``benchmarks/cifar10.py`` makes on the validation sets: the feature space and an improvement over the
plain change (each candidate fitted on the ID validation images only)."""
from __future__ import annotations

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from openood_diffood.method.calibration import Calibration

from . import stats

Candidate = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _rankfit(ref: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    ref = np.sort(ref)
    return lambda v: np.searchsorted(ref, v, side="right") / len(ref)


def _per_class_fit(ref: np.ndarray, pred: np.ndarray, classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Change minus its predicted class's ID-validation mean, over the pooled within-class std."""
    mu = np.array([ref[pred == c].mean() if (pred == c).any() else ref.mean() for c in range(classes)])
    sd = float(np.sqrt(np.mean((ref - mu[pred]) ** 2))) + 1e-12
    return lambda v, p: (v - mu[p]) / sd


def z_sum(val_id: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None,
          ) -> Callable[[Sequence[np.ndarray]], np.ndarray]:
    """The package's z-normalised sum (:class:`Calibration`: a list of timesteps, ``combine``) fitted on ID
    validation columns (one per score: the change at each timestep, then e.g. KNN's score), for the same columns of
    any set; from stored round trips, as the engine scores ``timestep: [..]`` / ``combine: knn`` (issue 21)."""
    tensors = lambda cols: [torch.from_numpy(np.asarray(c, dtype=np.float64)) for c in cols]  # noqa: E731
    cal = Calibration.fit(*tensors(val_id))
    return lambda cols: cal.combine(*tensors(cols), weights=weights).numpy()


def improvement_candidates(val_change: Mapping[str, np.ndarray], val_energy: np.ndarray, val_pred: np.ndarray,
                           classes: int) -> Dict[str, Candidate]:
    """Score functions f(change, energy, pred) fitted on the ID validation set only."""
    c, e = val_change["id"], val_energy
    z = z_sum([c, e])  # the library's combine: energy
    rc, re_ = _rankfit(c), _rankfit(e)
    per_class = _per_class_fit(c, val_pred, classes)
    return {
        "change + energy (z on ID val)": lambda ch, en, p: z([ch, en]),
        "change + energy (rank on ID val)": lambda ch, en, p: rc(ch) + re_(en),
        "change, per-class z (ID val)": lambda ch, en, p: per_class(ch, p),
    }


def best_space(val_scores: Mapping[str, Tuple[np.ndarray, np.ndarray]], default: str,
               ) -> Tuple[str, Dict[str, stats.Estimate]]:
    """(the space of the best validation AUROC, ties: ``default``; every space's validation AUROC)."""
    aurocs = {sp: stats.metric("AUROC", i, o) for sp, (i, o) in val_scores.items()}
    return max(sorted(aurocs, key=lambda sp: sp != default), key=lambda sp: aurocs[sp].value), aurocs


def best_candidate(cands: Mapping[str, Candidate], plain: Tuple[np.ndarray, np.ndarray],
                   energy: Tuple[np.ndarray, np.ndarray], pred: Tuple[np.ndarray, np.ndarray],
                   ) -> Tuple[str, bool, Dict[str, stats.Estimate]]:
    """(the best candidate on validation, whether it beats the plain change there, every candidate's AUROC)."""
    val = {name: stats.metric("AUROC", f(plain[0], energy[0], pred[0]), f(plain[1], energy[1], pred[1]))
           for name, f in cands.items()}
    chosen = max(val, key=lambda k: val[k].value)
    return chosen, val[chosen].value > stats.auroc(*plain), val


def space_rows(aurocs: Mapping[str, Mapping[str, stats.Estimate]], spaces: Sequence[str]) -> list:
    """One row per space, one column per setting."""
    return [[sp, *[a[sp].cell() for a in aurocs.values()]] for sp in spaces]
