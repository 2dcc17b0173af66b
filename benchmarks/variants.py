"""DiffOOD variants beyond the paper's single score (issue 21) and their choice on the validation sets.

A variant is a guidance w, one or several noise levels t, one or several feature spaces and optionally another
postprocessor's score (``combine``, e.g. KNN). Several columns (each timestep x space, then the combined score) are
z-normalised on the ID validation images and summed, by the package's own :class:`Calibration` (what
``timestep: [..]`` and ``combine: knn`` do in the engine); one column is the plain mean change. Every choice looks
at the validation sets only.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from openood_diffood import DiffOODSettings
from openood_diffood.method.diffood import network_evaluations

from . import stats
from .cifar10_choices import z_sum

#: Per-repeat changes by (t, w), set and space: ``changes[t, w][set][space]`` (N, R).
Changes = Dict[Tuple[int, float], Dict[str, Dict[str, np.ndarray]]]
#: Scores by method and set (higher = more OOD).
Baselines = Dict[str, Dict[str, np.ndarray]]


@dataclass(frozen=True)
class Variant:
    """One DiffOOD score: the change at every timestep in every space (z-summed when several), plus ``combine``'s
    score weighted ``weight``."""

    timesteps: Tuple[int, ...]
    guidance: float
    spaces: Tuple[str, ...] = ("logit",)
    combine: Optional[str] = None
    weight: float = 1.0

    @property
    def name(self) -> str:
        base = "diffood" + (f"+{self.combine}" if self.combine else "")
        extra = f", {self.combine} weight {self.weight:g}" if self.combine else ""
        return (f"{base} (t = {'+'.join(map(str, self.timesteps))}, w = {self.guidance:g}, "
                f"{'+'.join(self.spaces)}{extra})")

    def with_combine(self, name: str, weight: float) -> "Variant":
        return Variant(self.timesteps, self.guidance, self.spaces, name, weight)

    def evaluations(self, repeats: int, diffusion) -> int:
        """Network evaluations per image, by the package's one cost rule (a list of timesteps summed)."""
        t = self.timesteps if len(self.timesteps) > 1 else self.timesteps[0]
        return network_evaluations(DiffOODSettings(timestep=t, guidance=self.guidance, repeats=repeats), diffusion)

    def columns(self, changes: Changes, baselines: Baselines, name: str) -> List[np.ndarray]:
        cols = [changes[t, self.guidance][name][sp].mean(1) for t in self.timesteps for sp in self.spaces]
        return cols + ([baselines[self.combine][name]] if self.combine else [])

    def scores(self, val: Tuple[Changes, Baselines], id_val: str, data: Tuple[Changes, Baselines],
               names: Sequence[str]) -> Dict[str, np.ndarray]:
        """Scores of the sets ``names`` of ``data``, the z-sum fitted on the ID validation set of ``val``."""
        cols = {n: self.columns(*data, n) for n in names}
        if len(cols[names[0]]) == 1:
            return {n: c[0] for n, c in cols.items()}
        weights = [1.0] * (len(cols[names[0]]) - 1) + [self.weight if self.combine else 1.0]
        fitted = z_sum(self.columns(*val, id_val), weights)
        return {n: fitted(c) for n, c in cols.items()}


def candidates(cells: Sequence[Tuple[int, float]], spaces: Sequence[str]) -> List[Variant]:
    """At every (t, w) cell each space and every sum of two or more spaces; at each w every list of two or more of
    its cells' timesteps in each space."""
    cells = sorted(set(cells))
    out = [Variant((t,), w, tuple(c)) for t, w in cells
           for k in range(1, len(spaces) + 1) for c in combinations(spaces, k)]
    for w in sorted({w for _, w in cells}):
        ts = [t for t, g in cells if g == w]
        out += [Variant(tuple(c), w, (sp,)) for sp in spaces for k in range(2, len(ts) + 1)
                for c in combinations(ts, k)]
    return out


def validation_aurocs(variants: Sequence[Variant], val: Tuple[Changes, Baselines], id_val: str,
                      ood_val: str) -> Dict[Variant, stats.Estimate]:
    """Validation AUROC (ID val against the OOD val set) of every variant, with its interval."""
    out = {}
    for v in variants:
        sc = v.scores(val, id_val, val, [id_val, ood_val])
        out[v] = stats.metric("AUROC", sc[id_val], sc[ood_val])
    return out


def best(aurocs: Mapping[Variant, stats.Estimate], costs: Mapping[Variant, int]) -> Variant:
    """The best validation AUROC; ties: the cheaper variant."""
    return max(aurocs, key=lambda v: (round(aurocs[v].value, 6), -costs[v]))
