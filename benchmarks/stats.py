"""Metrics with bootstrap intervals (``scipy.stats.bootstrap``): one method on one ID / OOD pair, and the paired
difference of two methods scored on the same images.

Scores follow the package's convention (higher = more OOD); AUROC and FPR@95 are in percent, with OpenOOD v1.5's
definitions (:func:`openood_diffood.evaluate.metrics.ood_metrics`, which :func:`auroc` and :func:`fpr95` equal).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Sequence, Tuple

import numpy as np
from scipy.stats import bootstrap, rankdata

#: Resamples and confidence level of every interval.
RESAMPLES = 2000
LEVEL = 0.95


def auroc(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """AUROC (%) with OOD positive, ties counted half (Mann-Whitney U; equals the trapezoidal ROC area)."""
    ranks = rankdata(np.concatenate([id_s, ood_s]))
    n_id, n_ood = len(id_s), len(ood_s)
    return 100 * (ranks[n_id:].sum() - n_ood * (n_ood + 1) / 2) / (n_id * n_ood)


def fpr95(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """FPR@95 (%): the share of ID scores at or above the highest threshold that flags 95 % of the OOD scores."""
    threshold = np.sort(ood_s)[::-1][int(np.ceil(0.95 * len(ood_s))) - 1]
    return 100 * float(np.mean(id_s >= threshold))


METRICS: Dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"AUROC": auroc, "FPR@95": fpr95}


@dataclass(frozen=True)
class Estimate:
    """A value with its bootstrap interval."""

    value: float
    low: float
    high: float

    def cell(self, digits: int = 1) -> str:
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def as_list(self) -> Tuple[float, float, float]:
        return self.value, self.low, self.high


def _interval(statistic: Callable[..., float], data: Sequence[np.ndarray], seed: int) -> Estimate:
    res = bootstrap(tuple(data), statistic, paired=False, vectorized=False, n_resamples=RESAMPLES,
                    confidence_level=LEVEL, method="percentile", random_state=np.random.default_rng(seed))
    lo, hi = res.confidence_interval
    value = statistic(*data)
    return Estimate(float(value), float(np.nan_to_num(lo, nan=value)), float(np.nan_to_num(hi, nan=value)))


def mean(values: np.ndarray, seed: int = 0) -> Estimate:
    """The mean of ``values`` with its interval."""
    return _interval(np.mean, (np.asarray(values, float),), seed)


def metric(name: str, id_s: np.ndarray, ood_s: np.ndarray, seed: int = 0) -> Estimate:
    """``name`` (AUROC or FPR@95) of ID vs OOD scores, resampling both sets independently."""
    return _interval(METRICS[name], (np.asarray(id_s, float), np.asarray(ood_s, float)), seed)


def mean_of_means(name: str, scores: Mapping[str, np.ndarray], id_name: str, groups: Sequence[Sequence[str]],
                  index: Mapping[str, np.ndarray]) -> float:
    """The mean over ``groups`` (e.g. near, far) of the mean metric over each group's OOD sets, on the images
    ``index`` picks from each set."""
    i = scores[id_name][index[id_name]]
    return float(np.mean([np.mean([METRICS[name](i, scores[s][index[s]]) for s in g]) for g in groups]))


def grouped(name: str, scores: Mapping[str, np.ndarray], id_name: str, groups: Sequence[Sequence[str]],
            seed: int = 0) -> Estimate:
    """:func:`mean_of_means` of one method with its interval (every set resampled independently)."""
    names = list(dict.fromkeys([id_name, *(s for g in groups for s in g)]))

    def stat(*idx: np.ndarray) -> float:
        return mean_of_means(name, scores, id_name, groups, dict(zip(names, idx)))
    return _interval(stat, [np.arange(len(scores[n])) for n in names], seed)


def paired_difference(name: str, a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], id_name: str,
                      groups: Sequence[Sequence[str]], seed: int = 0) -> Estimate:
    """:func:`mean_of_means` of method ``a`` minus method ``b`` scored on the same images: each resample draws the
    same images for both methods (paired), every set independently."""
    names = list(dict.fromkeys([id_name, *(s for g in groups for s in g)]))
    for n in names:
        if len(a[n]) != len(b[n]):
            raise ValueError(f"paired difference needs the same images: set {n} has {len(a[n])} and {len(b[n])}")

    def stat(*idx: np.ndarray) -> float:
        index = dict(zip(names, idx))
        return mean_of_means(name, a, id_name, groups, index) - mean_of_means(name, b, id_name, groups, index)
    return _interval(stat, [np.arange(len(a[n])) for n in names], seed)
