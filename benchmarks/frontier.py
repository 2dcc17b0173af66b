"""The solver grid of the frontier study: which (solver, stride, repeats) run, what each costs in UNet evaluations
per image, and each point's mean near/far AUROC with the paired difference to DDIM-20 at R = 4."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from openood_diffood import DiffOOD
from openood_diffood.method.diffood import network_evaluations

from . import stats
from .roundtrips import RoundTripStore
from .suite import SetScores, Suite, diffood_changes, mean_scores

SOLVER_NAMES = ("ddim", "dpmpp2m", "plms")
STRIDES = (20, 30, 50, 100)
REPEATS = (1, 2, 4)
REFERENCE = ("ddim", 20, 4)
#: How close to the reference a cheaper point must come (mean near/far AUROC, points).
TOLERANCE = 0.5

Run = Tuple[str, int, int]  # (solver, stride, repeats computed; fewer repeats are read from it)


def full_grid(strides: Sequence[int] = STRIDES, repeats: int = max(REPEATS)) -> List[Run]:
    """Every solver at every stride, computed at the largest R."""
    return [(s, st, repeats) for st in strides for s in SOLVER_NAMES]


def reduced_grid(strides: Sequence[int] = (20, 100), repeats: int = 4) -> List[Run]:
    """The reference at the smallest stride, every solver at the largest stride, then DDIM at the strides between,
    all at ``repeats`` (on the digits' full grid the repeats, not the solver or the stride, set the frontier)."""
    ref = (REFERENCE[0], min(strides), REFERENCE[2])
    between = sorted((st for st in strides if ref[1] < st < max(strides)), reverse=True)
    return [ref] + [(s, max(strides), repeats) for s in SOLVER_NAMES] + [(ref[0], st, repeats) for st in between]


@dataclass
class Point:
    """One (solver, stride, R) of the frontier."""

    solver: str
    stride: int
    repeats: int
    evaluations: int
    mean: stats.Estimate
    near: float
    far: float
    delta: Optional[stats.Estimate] = None

    @property
    def label(self) -> str:
        return f"{self.solver}-{self.stride} R{self.repeats}"

    def as_dict(self) -> dict:
        return {"solver": self.solver, "stride": self.stride, "repeats": self.repeats,
                "evaluations": self.evaluations, "mean_auroc": self.mean.as_list(), "near_auroc": self.near,
                "far_auroc": self.far, "delta_to_reference": None if self.delta is None else self.delta.as_list()}


def run_scores(store: RoundTripStore, engine: DiffOOD, suite: Suite, run: Run,
               compute: bool = True) -> Dict[int, SetScores]:
    """Test-set scores of one computed run, for each R of REPEATS up to the run's."""
    solver, stride, r = run
    e = engine.replace(solver=solver, stride=stride, repeats=r)
    changes = diffood_changes(store, e, suite.test_sets(), compute=compute)
    return {k: mean_scores(changes, suite.space, k) for k in REPEATS if k <= r}


def frontier(store: RoundTripStore, engine: DiffOOD, suite: Suite, grid: Sequence[Run],
             compute: bool = True) -> List[Point]:
    """Every point of ``grid`` (the first run must be the reference) with its paired difference to it; runs whose
    stride exceeds the engine's timestep are left out (no step would run)."""
    id_name, groups = suite.test_groups()
    grid = [run for run in grid if run[1] <= engine.settings.timestep]
    scored = {(s, st, k): sc for s, st, r in grid for k, sc in run_scores(store, engine, suite, (s, st, r),
                                                                          compute).items()}
    ref_key = (grid[0][0], grid[0][1], REFERENCE[2])
    ref = scored[ref_key]
    points = []
    for (solver, stride, k), sc in scored.items():
        cost = network_evaluations(engine.settings.replace(solver=solver, stride=stride, repeats=k), engine.diffusion)
        point = Point(solver, stride, k, cost,
                      stats.grouped("AUROC", sc, id_name, groups),
                      stats.mean_of_means("AUROC", sc, id_name, groups[:1], _all(sc)),
                      stats.mean_of_means("AUROC", sc, id_name, groups[1:], _all(sc)))
        if (solver, stride, k) != ref_key:
            point.delta = stats.paired_difference("AUROC", sc, ref, id_name, groups)
        points.append(point)
    return sorted(points, key=lambda p: (p.evaluations, p.label))


def _all(scores: SetScores) -> Dict[str, np.ndarray]:
    return {name: np.arange(len(s)) for name, s in scores.items()}


def fewest(points: Sequence[Point], by_interval: bool) -> Optional[Point]:
    """The cheapest point within TOLERANCE of the reference: its difference (``by_interval``: the interval's lower
    end) at least -TOLERANCE. None when only the reference qualifies."""
    ok = [p for p in points if p.delta is not None and
          (p.delta.low if by_interval else p.delta.value) >= -TOLERANCE]
    reference = next(p for p in points if p.delta is None)
    cheaper = [p for p in ok if p.evaluations < reference.evaluations]
    return min(cheaper, key=lambda p: (p.evaluations, -p.mean.value)) if cheaper else None
