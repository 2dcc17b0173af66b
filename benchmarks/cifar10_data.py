"""The CIFAR-10 benchmark on the shared real data: its image sets and models.

Splits (OpenOOD v1.5's CIFAR-10 benchmark on the files in ``$DIFFOOD_DATA``, default ``<repo>/../shared/data``):

- ID test: ``cifar10_test`` minus a fixed validation hold-out of 1,000 images; N images drawn with the seed.
- near-OOD: ``cifar100_test`` and Tiny ImageNet (mask ``openood_cifar10_test_tin``); far-OOD: ``mnist_test_32``.
- fit set of ViM, KNN and ReAct: ``cifar10_train_10k``.
- validation, for every choice: ``val_n`` images of the hold-out and of Tiny ImageNet's ``openood_cifar10_val_tin``.
- the paper's Table 3: ``n_misclassified`` misclassified ID test images (from the test pool, outside the hold-out).

Every draw is the one of the pre-restructuring ``benchmarks/cifar10.py`` (same images, so its stored round trips
are found).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.evaluate.benchmark import Benchmark, ImageSet, predictions
from openood_diffood.method.diffood import network_samples
from openood_diffood.method.normalization import DATASET_STATS, Normalization
from openood_diffood.models.classifiers import load_classifier
from openood_diffood.models.diffusion import DiffusionBackend

from .common import apply_run_arguments, data_dir
from .roundtrips import RoundTripStore
from .suite import Suite

HOLDOUT = 1000
NORMALIZATION = Normalization(*DATASET_STATS["cifar10"])
CLASSIFIER = "weights/cifar10_resnet18_32x32.pt"
DIFFUSION = "weights/cifar10_cond_unet"
#: The shared files every CIFAR-10 result depends on.
DATA_FILES = ("cifar10_test.npz", "cifar10_train_10k.npz", "cifar100_test.npz", "tin_val_32.npz",
              "mnist_test_32.npz", CLASSIFIER, DIFFUSION)
#: The CIFAR round trips run in bf16 autocast unless ``--precision`` says otherwise (the package's default on GPU;
#: Spearman 0.9996 with fp32 on CPU); on a CPU without bf16 instructions fp32 is ~40x faster.
PRECISION = "bf16"
PRECISION_NAMES = {"bf16": "bf16 autocast", "fp16": "fp16 autocast", "fp32": "fp32", "auto": "auto precision"}


@dataclass
class Sets:
    """Every image set of the CIFAR-10 benchmark (see the module docstring)."""

    id_test: ImageSet
    near: List[ImageSet]
    far: List[ImageSet]
    fit: ImageSet
    id_val: ImageSet
    ood_val: ImageSet
    misclassified: Optional[ImageSet]

    def suite(self) -> Suite:
        """The sets as a :class:`Suite` (DiffOOD in the paper's logit space)."""
        return Suite("cifar10", self.id_test, self.near, self.far, self.id_val, [self.ood_val], [], self.fit,
                     NORMALIZATION, "logit")


def _load(path: Path, name: str, mask: Optional[str] = None, index: Optional[np.ndarray] = None) -> ImageSet:
    with np.load(path, allow_pickle=False) as f:
        keep = np.flatnonzero(f[mask]) if mask else np.arange(len(f["labels"]))
        keep = keep if index is None else keep[index]
        return ImageSet(name, f["images"][keep], f["labels"][keep].astype(np.int64))


def build_sets(data: Path, net: nn.Module, n: int = 300, val_n: int = 150, n_misclassified: int = 100,
               fit_n: Optional[int] = None, seed: int = 0) -> Sets:
    """Draw every set with ``seed`` (see the module docstring); ``n_misclassified = 0``: no Table-3 set."""
    perm = np.random.default_rng(seed).permutation(10000)
    holdout, pool = np.sort(perm[:HOLDOUT]), np.sort(perm[HOLDOUT:])
    id_pool = _load(data / "cifar10_test.npz", "cifar10", index=pool)
    sets = Sets(
        id_test=id_pool.limited(n, seed),
        near=[_load(data / "cifar100_test.npz", "cifar100").limited(n, seed),
              _load(data / "tin_val_32.npz", "tin", "openood_cifar10_test_tin").limited(n, seed)],
        far=[_load(data / "mnist_test_32.npz", "mnist").limited(n, seed)],
        fit=_load(data / "cifar10_train_10k.npz", "cifar10_train").limited(fit_n, seed),
        id_val=_load(data / "cifar10_test.npz", "cifar10_val", index=holdout).limited(val_n, seed),
        ood_val=_load(data / "tin_val_32.npz", "tin_val", "openood_cifar10_val_tin").limited(val_n, seed),
        misclassified=_misclassified(net, id_pool, n_misclassified, seed) if n_misclassified else None)
    for s in [*sets.near, *sets.far, sets.ood_val]:
        s.labels = None  # OOD sets carry no ID labels
    return sets


def _misclassified(net: nn.Module, pool: ImageSet, count: int, seed: int, chunk: int = 500) -> ImageSet:
    """``count`` misclassified images of ``pool``, classified in a seeded order until enough are found."""
    order = np.random.default_rng([seed, 3]).permutation(len(pool.images))
    bench = Benchmark(pool, {}, NORMALIZATION)
    found: List[int] = []
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        pred = predictions(net, pool.images[idx], bench, chunk, torch.device("cpu"))
        found += idx[pred != pool.labels[idx]].tolist()
        if len(found) >= count:
            break
    idx = np.sort(np.array(found[:count], dtype=np.int64))
    return ImageSet("misclassified", pool.images[idx], pool.labels[idx])


def load_models(data: Path, classifier: Optional[str] = None,
                diffusion: Optional[str] = None) -> Tuple[nn.Module, DiffusionBackend]:
    """The shared ResNet18_32x32 and class-conditional UNet (or the given files)."""
    net = load_classifier("resnet18_32x32", classifier or str(data / CLASSIFIER))
    return net, load_diffusion(diffusion or str(data / DIFFUSION))


def from_arguments(args: argparse.Namespace) -> Tuple[Path, nn.Module, DiffusionBackend, Sets, RoundTripStore]:
    """Apply the run arguments (threads, resamples); the shared data folder, the models, the sets that
    :func:`add_set_arguments`' flags name and the round-trip store."""
    apply_run_arguments(args)
    data = data_dir()
    net, backend = load_models(data, args.classifier, args.diffusion)
    sets = build_sets(data, net, args.n, args.val_n, args.misclassified, args.fit_n, args.seed)
    return data, net, backend, sets, RoundTripStore(args.cache_dir)


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the CIFAR-10 sets, models and round-trip precision (part of the round-trip store's key)."""
    parser.add_argument("--n", type=int, default=300, help="images per test set (ID, each OOD set)")
    parser.add_argument("--val-n", type=int, default=150, help="images per validation set (ID hold-out, TIN val)")
    parser.add_argument("--misclassified", type=int, default=100, help="misclassified ID images for Table 3")
    parser.add_argument("--fit-n", type=int, default=None, help="fit images of ViM / KNN / ReAct (default: all 10,000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier", help="ResNet18_32x32 checkpoint (default: the shared one)")
    parser.add_argument("--diffusion", help="diffusers directory (default: the shared cifar10_cond_unet)")
    add_precision_argument(parser)


def add_precision_argument(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the CIFAR round trips (part of the round-trip store's key)."""
    parser.add_argument("--precision", choices=tuple(PRECISION_NAMES), default=PRECISION,
                        help="round-trip precision (default bf16, as the stored results; on a CPU without bf16 "
                             "instructions fp32 is ~40x faster)")


def cifar_engine(net: nn.Module, backend: DiffusionBackend, **settings) -> DiffOOD:
    """A DiffOOD engine on the CIFAR-10 models: the paper's settings in bf16 unless changed; micro-batches of 64
    network samples."""
    settings = {"precision": PRECISION, "dataset": "cifar10", **settings}
    engine = DiffOOD(net, backend, **settings)
    return engine.replace(batch_size=max(1, 64 // network_samples(engine.settings, engine.diffusion)))
