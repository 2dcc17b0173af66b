"""CIFAR-10 on the shared real data: DiffOOD against OpenOOD's baselines, the paper's Table 3, the Figure-7
ablations and a validated improvement.

Splits (OpenOOD v1.5's CIFAR-10 benchmark on the files in ``$DIFFOOD_DATA``, default ``<repo>/../shared/data``):

- ID test: ``cifar10_test`` minus a fixed validation hold-out of 1,000 images; N images drawn with the seed.
- near-OOD: ``cifar100_test`` and Tiny ImageNet (mask ``openood_cifar10_test_tin``); far-OOD: ``mnist_test_32``.
- fit set of ViM, KNN and ReAct: ``cifar10_train_10k``.
- validation, for every choice made here (ablations, feature space, improvement): ``--val-n`` images of the
  hold-out and of Tiny ImageNet's ``openood_cifar10_val_tin``. No choice looks at the test images.
- Table 3 of the paper: the correctly classified ID test images against ``--misclassified`` misclassified ID test
  images (drawn from the test pool, outside the hold-out).

The diffusion round trips are stored (``--cache-dir``), so an interrupted run resumes and every feature space and
number of repeats is scored from the same reconstructions. Results: ``<out>/cifar10_<tag>.md`` and ``.json``, and
PNGs under ``<out>/cifar10_<tag>/``.

    python benchmarks/cifar10.py --n 200          # the CPU run of benchmarks/results/cifar10_cpu.md
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from common import REPO, data_dir  # noqa: E402  (puts the repository on sys.path)

from openood_diffood import DiffOOD, DiffOODSettings, load_diffusion  # noqa: E402
from openood_diffood.cli import load_classifier  # noqa: E402
from openood_diffood.evaluation import Benchmark, ImageSet, predictions, score_benchmark  # noqa: E402
from reconstructions import changes_by_space, reconstructions  # noqa: E402

BASELINES = ("msp", "ebo", "mls", "react", "vim", "knn")
SPACES = ("image", "layer1", "layer2", "layer3", "layer4", "feature", "logit")
HOLDOUT = 1000
CIFAR10_STATS = DiffOODSettings().mean, DiffOODSettings().std


@dataclass
class Sets:
    """Every image set of the benchmark (see the module docstring)."""

    id_test: ImageSet
    near: List[ImageSet]
    far: List[ImageSet]
    fit: ImageSet
    id_val: ImageSet
    ood_val: ImageSet
    misclassified: ImageSet

    def test_sets(self) -> List[ImageSet]:
        return [self.id_test, *self.near, *self.far, self.misclassified]

    def val_sets(self) -> List[ImageSet]:
        return [self.id_val, self.ood_val]


def _load(path: Path, name: str, mask: Optional[str] = None, index: Optional[np.ndarray] = None) -> ImageSet:
    with np.load(path, allow_pickle=False) as f:
        keep = np.flatnonzero(f[mask]) if mask else np.arange(len(f["labels"]))
        keep = keep if index is None else keep[index]
        return ImageSet(name, f["images"][keep], f["labels"][keep].astype(np.int64))


def build_sets(data: Path, net: torch.nn.Module, n: int, val_n: int, n_misclassified: int, fit_n: Optional[int],
               seed: int) -> Sets:
    """Draw every set with ``seed`` (see the module docstring)."""
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
        misclassified=_misclassified(net, id_pool, n_misclassified, seed))
    for s in [*sets.near, *sets.far, sets.ood_val]:
        s.labels = None  # OOD sets carry no ID labels
    return sets


def _misclassified(net: torch.nn.Module, pool: ImageSet, count: int, seed: int, chunk: int = 500) -> ImageSet:
    """``count`` misclassified images of ``pool``, classified in a seeded order until enough are found."""
    order = np.random.default_rng([seed, 3]).permutation(len(pool.images))
    bench = Benchmark(pool, {}, *CIFAR10_STATS)
    found: List[int] = []
    for start in range(0, len(order), chunk):
        idx = order[start:start + chunk]
        pred = predictions(net, pool.images[idx], bench, chunk, torch.device("cpu"))
        found += idx[pred != pool.labels[idx]].tolist()
        if len(found) >= count:
            break
    idx = np.sort(np.array(found[:count], dtype=np.int64))
    return ImageSet("misclassified", pool.images[idx], pool.labels[idx])


def run_plan(args: argparse.Namespace, main: DiffOODSettings, sets: Sets) -> List[Tuple[DiffOODSettings, ImageSet]]:
    """Every (setting, image set) round trip: validation (every choice is made there), test sets, ablations."""
    plan = [(main.replace(repeats=max(args.ablation_repeats, main.repeats)), s) for s in sets.val_sets()]
    plan += [(main, s) for s in sets.test_sets()]
    if args.ablations:
        one = main.replace(repeats=1)
        plan += [(one.replace(guidance=w), s) for w in args.guidances if w != main.guidance for s in sets.val_sets()]
        plan += [(one.replace(timestep=t, stride=max(1, t * main.stride // main.timestep)), s)
                 for t in args.timesteps if t != main.timestep for s in sets.val_sets()]
    return plan


def diffusion_dir(data: Path, given: Optional[str]) -> str:
    return given or str(data / "weights" / "cifar10_cond_unet")


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    data = data_dir()
    started = time.perf_counter()
    net = load_classifier("resnet18_32x32", args.classifier or str(data / "weights" / "cifar10_resnet18_32x32.pt"))
    backend = load_diffusion(diffusion_dir(data, args.diffusion))
    sets = build_sets(data, net, args.n, args.val_n, args.misclassified, args.fit_n, args.seed)
    main_settings = DiffOODSettings(timestep=args.timestep, guidance=args.guidance, repeats=args.repeats,
                                    stride=args.stride, solver=args.solver, space=args.space, seed=args.seed)
    engines: Dict[str, DiffOOD] = {}
    recs: Dict[Tuple[str, str], Tuple[np.ndarray, np.ndarray]] = {}
    seconds = 0.0
    for settings, image_set in run_plan(args, main_settings, sets):
        key = json.dumps(settings.as_dict(), sort_keys=True)
        engine = engines.setdefault(key, DiffOOD(net, backend, settings, batch_size=args.batch_size))
        t0 = time.perf_counter()
        recs[key, image_set.name] = reconstructions(engine, image_set.images, args.cache_dir,
                                                    desc=f"{image_set.name} | {engine.settings.timestep}/"
                                                         f"{engine.settings.guidance:g}/R{engine.settings.repeats}")
        seconds += time.perf_counter() - t0
    if args.stage == "reconstruct":
        print(f"reconstructions stored under {args.cache_dir} ({seconds:.0f} s)")
        return
    from cifar10_report import write_report  # plotting imports only when reporting

    bench = Benchmark(sets.id_test, {"near": sets.near, "far": sets.far, "table3": [sets.misclassified]},
                      *CIFAR10_STATS, fit=sets.fit)
    t0 = time.perf_counter()
    baseline_scores = score_benchmark(net, bench, BASELINES, engine=None, backend=args.backend, batch_size=200,
                                      progress=True)
    val_bench = Benchmark(sets.id_val, {"near": [sets.ood_val]}, *CIFAR10_STATS, fit=sets.fit)
    val_baselines = score_benchmark(net, val_bench, ("ebo",), engine=None, backend=args.backend, batch_size=200,
                                    progress=False)
    baseline_seconds = time.perf_counter() - t0

    def changes(settings: DiffOODSettings, image_set: ImageSet, spaces: Sequence[str]) -> Dict[str, np.ndarray]:
        key = json.dumps(settings.as_dict(), sort_keys=True)
        return changes_by_space(engines[key], image_set.images, recs[key, image_set.name][0], spaces)

    write_report(args, sets, main_settings, run_plan(args, main_settings, sets), changes, recs, baseline_scores,
                 val_baselines, meta={
                     "wall_seconds_total": time.perf_counter() - started, "wall_seconds_diffusion": seconds,
                     "wall_seconds_baselines": baseline_seconds, "torch": torch.__version__,
                     "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
                     "device": args.tag, "argv": sys.argv[1:]})


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=200, help="images per test set (ID, each OOD set)")
    p.add_argument("--val-n", type=int, default=100, help="images per validation set (ID hold-out, TIN val)")
    p.add_argument("--misclassified", type=int, default=100, help="misclassified ID images for Table 3")
    p.add_argument("--fit-n", type=int, default=None, help="fit images for ViM / KNN / ReAct (default: all 10,000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classifier", help="ResNet18_32x32 checkpoint (default: the shared one)")
    p.add_argument("--diffusion", help="diffusers directory (default: the shared cifar10_cond_unet)")
    g = p.add_argument_group("DiffOOD (defaults: the paper's CIFAR settings with PLMS at 5 evaluations)")
    g.add_argument("--timestep", type=int, default=300)
    g.add_argument("--guidance", type=float, default=3.0)
    g.add_argument("--repeats", type=int, default=4)
    g.add_argument("--solver", default="plms")
    g.add_argument("--stride", type=int, default=75)
    g.add_argument("--space", default="logit")
    g.add_argument("--batch-size", default="auto", type=lambda v: v if v == "auto" else int(v))
    a = p.add_argument_group("ablations (validation sets)")
    a.add_argument("--no-ablations", dest="ablations", action="store_false")
    a.add_argument("--ablation-repeats", type=int, default=8, help="repeats of the validation run (repeats ablation)")
    a.add_argument("--guidances", type=lambda v: [float(x) for x in v.split(",")], default=[0.0, 1.0, 3.0, 6.0],
                   help="guidance weights (0 = unconditional)")
    a.add_argument("--timesteps", type=lambda v: [int(x) for x in v.split(",")], default=[100, 200, 300, 400, 500])
    p.add_argument("--backend", default="auto", help="baselines from openood / pytorch-ood / auto")
    p.add_argument("--tag", default="cpu", help="device tag of the results file name")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--cache-dir", type=Path, default=REPO / "benchmarks" / ".cache")
    p.add_argument("--stage", choices=("all", "reconstruct"), default="all",
                   help="'reconstruct' only fills the reconstruction store")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
