"""The joint validation sweep of DiffOOD's noise level and guidance (issue 14): every (t, w) of a grid on a
suite's validation sets only; the choice is the best mean validation AUROC (ties: the paper's t = 300, w = 3)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from openood_diffood import DiffOOD

from . import stats
from .roundtrips import RoundTripStore
from .suite import Suite, diffood_changes, mean_scores

TIMESTEPS = (100, 200, 300)
GUIDANCES = (1.0, 3.0, 6.0)
PAPER = (300, 3.0)


@dataclass
class Sweep:
    """Validation mean near/far AUROC (with its interval) of each (t, w) and the choice."""

    cells: Dict[Tuple[int, float], stats.Estimate]
    choice: Tuple[int, float]

    def rows(self) -> List[List[str]]:
        """One table row per t, one column per w; the choice in bold."""
        ts = sorted({t for t, _ in self.cells})
        ws = sorted({w for _, w in self.cells})
        return [[f"t = {t}", *[("**{}**" if (t, w) == self.choice else "{}").format(self.cells[t, w].cell())
                               for w in ws]] for t in ts]

    def header(self) -> List[str]:
        return ["", *[f"w = {w:g}" for w in sorted({w for _, w in self.cells})]]

    def as_dict(self) -> dict:
        return {"cells": {f"t={t},w={w:g}": e.as_list() for (t, w), e in self.cells.items()},
                "choice": {"timestep": self.choice[0], "guidance": self.choice[1]}}


def joint_sweep(store: RoundTripStore, engine: DiffOOD, suite: Suite, timesteps: Sequence[int] = TIMESTEPS,
                guidances: Sequence[float] = GUIDANCES, compute: bool = True) -> Sweep:
    """Score every (t, w) of the grid on ``suite``'s validation sets with ``engine``'s other settings."""
    id_name, groups = suite.val_groups()
    cells = {}
    for t in timesteps:
        for w in guidances:
            e = engine.replace(timestep=t, guidance=w)
            sc = mean_scores(diffood_changes(store, e, suite.val_sets(), compute=compute), suite.space,
                             e.settings.repeats)
            cells[t, w] = stats.grouped("AUROC", sc, id_name, groups)
    paper_first = sorted(cells, key=lambda k: k != PAPER)
    return Sweep(cells, max(paper_first, key=lambda k: cells[k].value))
