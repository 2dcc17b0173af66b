"""Score an ID test set and near / far OOD sets with DiffOOD and baselines, then report (used by ``eval``/``demo``).
Images travel as uint8 NHWC arrays and are normalized batch by batch, so large sets never sit in memory as floats."""
from __future__ import annotations

import os
import time
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..hashing import item_digests
from ..method.features import as_classifier
from ..method.normalization import Normalization
from ..runtime.cache import module_fingerprint
from ..runtime.engine import DiffOOD
from . import metrics, plots
from .baselines import FitData
from .runners import DIFFOOD, DiffOODMethod, SetStore, baseline_identity, build_runners, check_fit_data

DEFAULT_METHODS = (DIFFOOD, "msp", "ebo", "mls", "react", "vim", "knn")


@dataclass
class ImageSet:
    """A named set of uint8 NHWC images (``labels`` for ID sets, None for OOD sets; ``classes`` names them)."""

    name: str
    images: np.ndarray
    labels: Optional[np.ndarray] = None
    classes: Optional[Sequence[str]] = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ConfigError(f"set {self.name!r}: expected uint8 images (N, H, W, C), got {self.images.dtype} "
                              f"{self.images.shape}")
        if len(self.images) == 0:
            raise ConfigError(f"set {self.name!r} has no images")
        if self.labels is not None and len(self.labels) != len(self.images):
            raise ConfigError(f"set {self.name!r}: {len(self.labels)} labels for {len(self.images)} images")

    def limited(self, limit: Optional[int], seed: int) -> "ImageSet":
        """A random subset of at most ``limit`` images, fixed by ``seed`` and the set's name (order kept)."""
        if limit is None or limit >= len(self.images):
            return self
        rng = np.random.default_rng([seed, zlib.crc32(self.name.encode())])
        idx = np.sort(rng.choice(len(self.images), limit, replace=False))
        return ImageSet(self.name, self.images[idx], None if self.labels is None else self.labels[idx], self.classes)

    def unlabelled(self) -> "ImageSet":
        """The set without labels and class names (as an OOD set: its classes are none of the ID classes)."""
        return self if self.labels is None and self.classes is None else ImageSet(self.name, self.images)

    def grey_to_rgb(self) -> "ImageSet":
        """The set with a grey channel repeated three times (as OpenOOD's loaders turn MNIST into RGB)."""
        return ImageSet(self.name, np.repeat(self.images, 3, axis=-1), self.labels, self.classes)


@dataclass
class Benchmark:
    """ID test set, OOD sets by split, the ID fit set (ViM / KNN / ReAct) and the normalization of the inputs.
    ``csid`` are covariate-shifted ID sets, counted as ID in full-spectrum (``fsood``) evaluation. OOD sets carry
    no labels: whatever their source has (CIFAR-100's 0-99, OpenOOD's -1) names none of the ID classes."""

    id_test: ImageSet
    ood: Dict[str, List[ImageSet]]
    normalization: Normalization
    fit: Optional[ImageSet] = None
    csid: List[ImageSet] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ood = {split: [s.unlabelled() for s in sets] for split, sets in self.ood.items()}

    def all_sets(self) -> List[Tuple[str, ImageSet]]:
        """(role, set) for every set: id, csid, near, far, fit."""
        out = [("id", self.id_test)] + [("csid", s) for s in self.csid]
        out += [(split, s) for split, sets in self.ood.items() for s in sets]
        return out + ([("fit", self.fit)] if self.fit is not None else [])

    def limited(self, limit: Optional[int], fit_limit: Optional[int], seed: int) -> "Benchmark":
        """Every test set cut to ``limit`` images and the fit set to ``fit_limit`` (None: all; fixed by ``seed``)."""
        return Benchmark(self.id_test.limited(limit, seed),
                         {k: [s.limited(limit, seed) for s in v] for k, v in self.ood.items()}, self.normalization,
                         None if self.fit is None else self.fit.limited(fit_limit, seed),
                         [s.limited(limit, seed) for s in self.csid])

    def matching_channels(self) -> "Benchmark":
        """Grey sets made RGB (with a warning) when the ID test set is RGB, as OpenOOD treats MNIST."""
        if self.id_test.images.shape[-1] != 3:
            return self
        grey = [s.name for _, s in self.all_sets() if s.images.shape[-1] == 1]
        if not grey:
            return self
        warnings.warn(f"grey set(s) {', '.join(grey)} repeated to three channels to match the RGB ID test set")
        convert = lambda s: s.grey_to_rgb() if s.images.shape[-1] == 1 else s  # noqa: E731
        return Benchmark(self.id_test, {k: [convert(s) for s in v] for k, v in self.ood.items()}, self.normalization,
                         None if self.fit is None else convert(self.fit), [convert(s) for s in self.csid])

    def validate(self, num_classes: int) -> None:
        """Clear errors for label / size problems; a warning where an OOD set shares images with the ID set."""
        shapes = {f"{role}:{s.name}": s.images.shape[1:] for role, s in self.all_sets()}
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{k} {h}x{w}x{c}" for k, (h, w, c) in shapes.items())
            raise ConfigError(f"images of mixed sizes ({listing}): resize every set to the classifier's input size "
                              "(--image-size N)")
        channels = shapes[f"id:{self.id_test.name}"][-1]
        if self.normalization.channels != channels:
            raise ConfigError(f"the ID test set {self.id_test.name!r} has {channels} channel(s) but the normalization "
                              f"{self.normalization.channels} value(s); give {channels}-value --mean/--std for a "
                              f"classifier trained on such images, or the ID set with the channels the classifier "
                              f"takes (grey images repeated to RGB)")
        for role, s in self.all_sets():
            if role in ("id", "csid", "fit"):
                if s.labels is None:
                    raise ConfigError(f"{role} set {s.name!r} has no labels; ID sets need class labels")
                lo, hi = int(s.labels.min()), int(s.labels.max())
                if lo < 0 or hi >= num_classes:
                    raise ConfigError(f"{role} set {s.name!r} has labels {lo}..{hi} but the classifier has "
                                      f"{num_classes} classes (0..{num_classes - 1}): use labels in the classifier's "
                                      "class order, or the classifier trained on these classes")
        id_hashes = item_digests(self.id_test.images)
        for split, sets in self.ood.items():
            for s in sets:
                shared = int(np.isin(item_digests(s.images), id_hashes).sum())
                if shared:
                    warnings.warn(f"{shared} of {len(s.images)} images of {split} OOD set {s.name!r} are also in "
                                  f"the ID test set {self.id_test.name!r}: is that the right file?")


def normalized_batches(images: np.ndarray, normalization: Normalization, batch_size: int) -> Iterator[torch.Tensor]:
    """uint8 NHWC -> normalized float NCHW batches."""
    for i in range(0, len(images), batch_size):
        yield normalization.from_uint8(images[i:i + batch_size])


#: ID images (from the fit set) that calibrate ``combine`` and a list of timesteps in the ``eval`` command.
CALIBRATION_IMAGES = 1000


def calibration_batches(bench: Benchmark, batch_size: Union[int, str], seed: int) -> Iterator[torch.Tensor]:
    """Normalized batches of up to CALIBRATION_IMAGES fit-set images (fixed by ``seed``) for ``DiffOOD.calibrate``."""
    if bench.fit is None:
        raise ConfigError("combine and a list of timesteps calibrate on ID images: give --fit-data (ID training "
                          f"images; up to {CALIBRATION_IMAGES} are used) or leave --combine out and give one timestep")
    images = bench.fit.limited(CALIBRATION_IMAGES, seed).images
    return normalized_batches(images, bench.normalization, batch_size if isinstance(batch_size, int) else 64)


@dataclass
class RunScores:
    """Every method's scores for one classifier: ``id[method]`` and ``ood[method][split][set]``."""

    id: Dict[str, np.ndarray]
    ood: Dict[str, Dict[str, Dict[str, np.ndarray]]]
    id_pred: np.ndarray
    id_labels: np.ndarray
    backends: Dict[str, str]
    seconds: Dict[str, float]


@torch.no_grad()
def predictions(net: nn.Module, images: np.ndarray, bench: Benchmark, batch_size: int,
                device: torch.device) -> np.ndarray:
    """The classifier's argmax predictions."""
    clf = as_classifier(net).eval()
    return torch.cat([clf(x.to(device)).argmax(1).cpu()
                      for x in normalized_batches(images, bench.normalization, batch_size)]).numpy()


def score_benchmark(net: nn.Module, bench: Benchmark, methods: Sequence[str], *, engine: Optional[DiffOOD],
                    backend: str = "auto", id_name: str = "cifar10", batch_size: int = 200, fsood: bool = False,
                    device: torch.device = torch.device("cpu"), progress: bool = True,
                    runners: Optional[Mapping[str, Any]] = None, cache_dir: Optional[str] = None,
                    on_method: Optional[Callable[[str, "RunScores"], None]] = None) -> RunScores:
    """Fit (where needed) and run every method on the ID test set (plus csid sets with ``fsood``) and OOD sets.
    ``runners`` are the methods already built (:func:`.runners.build_runners`); with ``cache_dir`` the finished
    (method, set) scores of the baselines are kept there and read back; ``on_method(name, scores)`` is called as
    each method finishes."""
    runners = runners or build_runners(net, methods, engine, backend, id_name)
    check_fit_data(runners, bench.fit is not None)
    id_sets = [bench.id_test] + (bench.csid if fsood else [])
    id_images = np.concatenate([s.images for s in id_sets])
    id_labels = np.concatenate([s.labels for s in id_sets])
    scores = RunScores({}, {}, predictions(net, id_images, bench, batch_size, device), id_labels, {}, {})
    fingerprint = module_fingerprint(net) if cache_dir else ""
    shared: List[FitData] = []  # the fit set's features, extracted once for every method fitted on it

    def fit_data() -> Optional[FitData]:
        if bench.fit is None:
            return None
        if not shared:
            shared.append(FitData.extract(net, fit_batches(bench, batch_size), progress))
        return shared[0]

    for name in methods:
        method, start = runners[name], time.perf_counter()
        store = None
        if cache_dir and not isinstance(method, DiffOODMethod):  # DiffOOD keeps its scores in its engine's cache
            store = SetStore(cache_dir, baseline_identity(method, fingerprint, bench.fit.images if bench.fit else
                                                          None, bench.normalization))
        fitted = False

        def run(images: np.ndarray, desc: str) -> np.ndarray:
            nonlocal fitted
            found = None if store is None else store.get(images)
            if found is not None:
                return found
            if not fitted:
                method.fit(fit_data() if method.needs_fit else None, progress)
                fitted = True
            bs = method.engine.micro_batch_size(bench.normalization.from_uint8(images[:1])) \
                if isinstance(method, DiffOODMethod) else batch_size
            out = method.score(normalized_batches(images, bench.normalization, bs), progress, desc,
                               total=-(-len(images) // bs))
            if store is not None:
                store.put(images, out)
            return out

        scores.id[name] = run(id_images, f"{name} | ID")
        scores.ood[name] = {split: {s.name: run(s.images, f"{name} | {s.name}") for s in sets}
                            for split, sets in bench.ood.items()}
        scores.backends[name] = method.backend
        scores.seconds[name] = time.perf_counter() - start
        if on_method is not None:
            on_method(name, scores)
    return scores


def fit_batches(bench: Benchmark, batch_size: int) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """The fit set as ``(normalized images, labels)`` batches."""
    labels = torch.from_numpy(bench.fit.labels).long().split(batch_size)
    return list(zip(normalized_batches(bench.fit.images, bench.normalization, batch_size), labels))


def save_scores(out_dir: str, run_name: str, scores: RunScores) -> List[str]:
    """``scores/<run>/<method>.npz``: ``conf`` (OpenOOD's sign, -score) per set, with ID predictions and labels."""
    folder = os.path.join(out_dir, "scores", run_name)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for m in scores.id:
        arrays = {"id.conf": -scores.id[m], "id.pred": scores.id_pred, "id.label": scores.id_labels}
        arrays.update({f"{split}.{name}.conf": -s for split, sets in scores.ood[m].items() for name, s in sets.items()})
        path = os.path.join(folder, f"{m}.npz")
        np.savez_compressed(path, **arrays)
        paths.append(path)
    return paths


@torch.no_grad()
def reconstruction_figure(path: str, engine: DiffOOD, bench: Benchmark, per_set: int = 3) -> str:
    """PNG grid of the first ID test images and the first images of each split's first OOD set, each captioned
    with its set, its true class (ID images) or ``OOD`` (OOD images: never an ID class) and the classifier's
    prediction, with its DiffOOD score, and its reconstructions labelled with the classifier's prediction on them."""
    names = bench.id_test.classes or [str(c) for c in range(engine.classifier.num_classes)]
    picks = [(bench.id_test, "ID", per_set + 1)] + [(sets[0], split, per_set) for split, sets in bench.ood.items()
                                                    if sets]
    images = np.concatenate([s.images[:k] for s, _, k in picks])
    x = bench.normalization.from_uint8(images)
    recs, out = engine.reconstruct(x)
    rec_logits, _ = engine.features(bench.normalization.normalize(recs.flatten(0, 1)))
    rec_pred = rec_logits.argmax(1).view(recs.shape[:2]).tolist()
    shown = [(s, role, i) for s, role, k in picks for i in range(min(k, len(s.images)))]
    titles = [f"{s.name} ({role})\n{'true ' + names[int(s.labels[i])] if role == 'ID' else 'OOD'}, pred "
              f"{names[int(p)]}" for (s, role, i), p in zip(shown, out.pred)]
    rec_titles = [[f"pred {names[p]}" for p in row] for row in rec_pred]
    how = (f"the first {per_set + 1} ID test images and the first {per_set} of each split's first OOD set, in set "
           "order; reconstructions are labelled with the classifier's prediction on them")
    return plots.reconstruction_grid(path, bench.normalization.unnormalize(x), recs, out.score.tolist(), titles,
                                     rec_titles, suptitle=f"DiffOOD round trips: {how}")


def report(out_dir: str, results: Mapping[str, Sequence[metrics.MethodResult]], run_names: Sequence[str],
           meta: dict) -> List[str]:
    """Print OpenOOD-style tables and a summary; write metrics.csv / metrics.json. Returns the paths written."""
    for method, runs in results.items():
        print(metrics.format_method_table(method, runs), end="\n\n")
    print(metrics.format_summary(results))
    return metrics.write_results(out_dir, results, run_names, meta)
