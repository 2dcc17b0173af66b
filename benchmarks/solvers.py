"""AUROC vs network evaluations per image: DDIM stride 20 (the paper) against faster deterministic solvers.

Runs the shared CIFAR-10 models (``$DIFFOOD_DATA`` or ``<repo>/../shared/data``: the ResNet18_32x32 classifier
and the class-conditional UNet) on N images per set: ID ``cifar10_test``, OOD Tiny ImageNet (OpenOOD's
``openood_cifar10_test_tin`` mask) and ``cifar100_test``, drawn with a fixed seed. Scores are kept in a score
cache (``--cache``), so an interrupted run resumes. Writes a markdown table (``--out``).

    python benchmarks/solvers.py --per-set 24 --repeats 1
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
from scipy.stats import spearmanr

from common import REPO, bootstrap_std, data_dir  # noqa: E402  (puts the repository on sys.path)

from openood_diffood import DiffOOD, DiffOODSettings, load_diffusion  # noqa: E402
from openood_diffood.cache import ScoreCache, engine_identity  # noqa: E402
from openood_diffood.metrics import ood_metrics  # noqa: E402
from openood_diffood.networks import load_state_dict_file, resnet18_32x32  # noqa: E402
from openood_diffood.solvers import network_evaluations  # noqa: E402

#: (name, file, OpenOOD mask or None); the first is the ID set.
SETS = [("CIFAR-10 (ID)", "cifar10_test.npz", None), ("TIN", "tin_val_32.npz", "openood_cifar10_test_tin"),
        ("CIFAR-100", "cifar100_test.npz", None)]
#: (solver, stride) from t = 300: 15 evaluations for the paper's DDIM, 5 for the others.
CONFIGS = [("ddim", 20), ("ddim", 60), ("dpmpp2m", 60), ("plms", 75)]


def load_set(path: Path, mask: str, n: int, seed: int, mean, std) -> torch.Tensor:
    """n images drawn with a fixed seed (from the mask's images when given), normalized NCHW float."""
    with np.load(path, allow_pickle=False) as f:
        pool = np.flatnonzero(f[mask]) if mask else np.arange(len(f["labels"]))
        idx = np.sort(np.random.default_rng(seed).choice(pool, n, replace=False))
        x = torch.from_numpy(f["images"][idx]).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


def score_set(engine: DiffOOD, cache: ScoreCache, x: torch.Tensor, batch: int) -> np.ndarray:
    return np.concatenate([cache.score(engine, x[i:i + batch])[0].numpy() for i in range(0, len(x), batch)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-set", type=int, default=24)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=None, help="default: a whole set per batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=Path("/tmp/diffood_solver_cache"))
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "solvers_cpu.md")
    args = p.parse_args()
    args.batch_size = args.batch_size or args.per_set

    data = data_dir()
    net = resnet18_32x32(10)
    net.load_state_dict(load_state_dict_file(data / "weights" / "cifar10_resnet18_32x32.pt"))
    net.eval()
    backend = load_diffusion(data / "weights" / "cifar10_cond_unet", torch_dtype=torch.float32)
    base = DiffOODSettings(timestep=300, guidance=3.0, repeats=args.repeats, dataset="cifar10")
    sets = {name: load_set(data / f, mask, args.per_set, args.seed, base.mean, base.std) for name, f, mask in SETS}

    scores: Dict[Tuple[str, int], Dict[str, np.ndarray]] = {}
    seconds: Dict[Tuple[str, int], float] = {}
    for solver, stride in CONFIGS:
        engine = DiffOOD(net, backend, base.replace(solver=solver, stride=stride), batch_size=args.batch_size,
                         channels_last=True)
        cache = ScoreCache(args.cache, engine_identity(engine))
        start = time.perf_counter()
        scores[solver, stride] = {name: score_set(engine, cache, x, args.batch_size) for name, x in sets.items()}
        seconds[solver, stride] = time.perf_counter() - start
        print(f"{solver} stride {stride}: {seconds[solver, stride]:.0f} s", flush=True)

    id_name, ood_names = SETS[0][0], [s[0] for s in SETS[1:]]
    reference = np.concatenate(list(scores[CONFIGS[0]].values()))
    lines = [f"### AUROC vs network evaluations (CPU, {torch.get_num_threads()} threads)", "",
             f"Shared CIFAR-10 models (ResNet18_32x32, class-conditional UNet 14.5 M). {args.per_set} images per "
             f"set (seed {args.seed}); t = 300, w = 3, R = {args.repeats}, logit space, fp32. Evaluations per image "
             f"= solver steps x R (each a batched call on the conditional + null pair). AUROC in % with a "
             f"bootstrap std; Spearman rho of all {3 * args.per_set} scores with DDIM stride 20. Small N: "
             "differences of a few AUROC points are within noise.", "",
             "| solver | stride | evals / image | " + " | ".join(f"AUROC {n}" for n in ood_names)
             + " | Spearman vs DDIM-20 | s (incl. cache hits) |",
             "|---|---|---|" + "---|" * len(ood_names) + "---|---|"]
    for solver, stride in CONFIGS:
        s = scores[solver, stride]
        cells = []
        for name in ood_names:
            auroc = ood_metrics(s[id_name], s[name])["AUROC"]
            cells.append(f"{100 * auroc:.1f} ± {100 * bootstrap_std(s[id_name], s[name]):.1f}")
        rho = spearmanr(np.concatenate(list(s.values())), reference).statistic
        evals = network_evaluations(solver, 300, stride) * args.repeats
        lines.append(f"| {solver} | {stride} | {evals} | " + " | ".join(cells)
                     + f" | {rho:.3f} | {seconds[solver, stride]:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
