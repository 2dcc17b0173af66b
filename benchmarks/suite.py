"""A benchmark's image sets by role (ID test, near / far OOD test, the validation sets, the fit set), the digits
benchmark shipped with the package, and DiffOOD's and the baselines' scores on them.

Every choice a benchmark makes looks at the validation sets only; the test sets are scored once the choice is made.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from openood_diffood import DiffOOD, DiffOODSettings
from openood_diffood.evaluate.benchmark import Benchmark, ImageSet, score_benchmark
from openood_diffood.evaluate.command import DEMO_SETTINGS
from openood_diffood.evaluate.demo_data import demo_sets
from openood_diffood.method.normalization import Normalization
from openood_diffood.models.demo import DEMO_MEAN, DEMO_STD

from .roundtrips import RoundTripStore, scores

#: Per-set scores by set name.
SetScores = Dict[str, np.ndarray]
Groups = Tuple[str, List[List[str]]]


@dataclass
class Suite:
    """The image sets of one benchmark; ``space`` is the feature space DiffOOD scores in on it."""

    name: str
    id_test: ImageSet
    near: List[ImageSet]
    far: List[ImageSet]
    id_val: ImageSet
    val_near: List[ImageSet]
    val_far: List[ImageSet]
    fit: ImageSet
    normalization: Normalization
    space: str

    def test_sets(self) -> List[ImageSet]:
        return [self.id_test, *self.near, *self.far]

    def val_sets(self) -> List[ImageSet]:
        return [self.id_val, *self.val_near, *self.val_far]

    def test_groups(self) -> Groups:
        """(ID set name, [near set names, far set names]) of the test sets."""
        return self.id_test.name, [[s.name for s in g] for g in (self.near, self.far) if g]

    def val_groups(self) -> Groups:
        """(ID set name, [near, far] validation set names; a split without a validation set is left out)."""
        return self.id_val.name, [[s.name for s in g] for g in (self.val_near, self.val_far) if g]

    def benchmark(self) -> Benchmark:
        """The test sets and the fit set as the package's :class:`Benchmark` (for the baselines)."""
        return Benchmark(self.id_test, {"near": self.near, "far": self.far}, self.normalization, self.fit)

    def val_benchmark(self) -> Benchmark:
        return Benchmark(self.id_val, {"near": self.val_near, "far": self.val_far}, self.normalization, self.fit)

    def limited(self, n: Optional[int], seed: int = 0) -> "Suite":
        """Every test and validation set cut to ``n`` images (None: all), fixed by ``seed``."""
        cut = lambda sets: [s.limited(n, seed) for s in sets]  # noqa: E731
        return replace(self, id_test=self.id_test.limited(n, seed), near=cut(self.near), far=cut(self.far),
                       id_val=self.id_val.limited(n, seed), val_near=cut(self.val_near), val_far=cut(self.val_far))


def digits_suite(seed: int = 0) -> Suite:
    """The demo benchmark (:mod:`openood_diffood.evaluate.demo_data`): ID digits 0-5, near-OOD digits 6-9, far-OOD
    photo patches, each with its validation set; DiffOOD in the demo's validation-chosen feature space."""
    d = demo_sets(seed)
    sets = {split: [ImageSet(n + suffix, imgs) for n, imgs in d[split].items()]
            for split, suffix in (("near", ""), ("far", ""), ("val_near", "_val"), ("val_far", "_val"))}
    return Suite("digits", ImageSet("digits_0-5", *d["test"]), sets["near"], sets["far"],
                 ImageSet("digits_0-5_val", *d["val"]), sets["val_near"], sets["val_far"],
                 ImageSet("train", *d["train"]), Normalization(DEMO_MEAN, DEMO_STD), DEMO_SETTINGS["space"])


def digits_settings(**changes) -> DiffOODSettings:
    """DiffOOD settings on the digits (the demo's normalization and space; DDIM-20, R = 4 unless changed)."""
    base = dict(DEMO_SETTINGS, stride=20, mean=DEMO_MEAN, std=DEMO_STD)
    return DiffOODSettings(**{**base, **changes})


def diffood_changes(store: RoundTripStore, engine: DiffOOD, sets: Sequence[ImageSet], label: str = "",
                    spaces: Optional[Sequence[str]] = None, compute: bool = True) -> Dict[str, Dict[str, np.ndarray]]:
    """Per-repeat changes ``{set: {space: (N, R)}}`` of each set from the round-trip store."""
    s = engine.settings
    tag = label or f"{s.solver}{s.stride} t{s.timestep} w{s.guidance:g} R{s.repeats}"
    return {im.name: scores(store, engine, im.images, f"{im.name} {tag}", spaces, compute) for im in sets}


def mean_scores(changes: Mapping[str, Mapping[str, np.ndarray]], space: str, repeats: int) -> SetScores:
    """DiffOOD scores by set: the mean change over the first ``repeats`` repeats."""
    return {name: ch[space][:, :repeats].mean(1) for name, ch in changes.items()}


def baseline_scores(net: nn.Module, bench: Benchmark, methods: Sequence[str], backend: str = "auto",
                    id_name: str = "cifar10") -> Tuple[Dict[str, SetScores], Dict[str, str], float, np.ndarray]:
    """({method: {set: scores}}, {method: backend that ran}, seconds, ID predictions) on a benchmark."""
    run = score_benchmark(net, bench, methods, engine=None, backend=backend, id_name=id_name, batch_size=200,
                          device=torch.device("cpu"), progress=True)
    out = {m: {bench.id_test.name: run.id[m], **{n: s for split in run.ood[m].values() for n, s in split.items()}}
           for m in run.id}
    return out, run.backends, float(sum(run.seconds.values())), run.id_pred
