"""How DiffOOD grows with its diffusion model, on the digits benchmark shipped with the package (issue 14).

The demo's diffusion architecture is trained with the package's own ``train`` (one run, seed ``--seed``; its
checkpoints after each of ``--lengths`` steps are exported as diffusers models), and a variant with twice the
channels to the longest length. For each model: the denoising loss (epsilon MSE, conditioned on the true class) of
the ID validation digits at DiffOOD's timestep, and DiffOOD's near- and far-OOD AUROC and FPR@95 on the test sets
with bootstrap intervals, at the (t, w) the joint validation sweep chose once with the shipped demo model (DDIM-20,
R = 4, the demo's feature space). MSP, ViM and KNN on the same classifier are the reference lines. The weights stay
in ``--work`` (git-ignored), rebuilt from the seed; round trips are stored, so a rerun recomputes nothing.

    python -m benchmarks.dm_quality                     # benchmarks/results/dm_quality_cpu.md + .json + .png
"""
from __future__ import annotations

import argparse
import os
import shlex
import time
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from openood_diffood import DiffOOD
from openood_diffood.method.noise import sample_noise
from openood_diffood.method.solvers import add_noise
from openood_diffood.models.demo import load_demo_models
from openood_diffood.models.diffusion import DiffusionBackend
from openood_diffood.train.arguments import add_train_arguments
from openood_diffood.train.data import DEMO_DATA
from openood_diffood.train.trainer import checkpoints, export_checkpoint, train_main

from . import stats
from .common import CACHE, add_output_arguments, apply_run_arguments, int_list, provenance
from .dm_report import write_report
from .roundtrips import RoundTripStore
from .suite import Suite, baseline_scores, diffood_changes, digits_settings, digits_suite, mean_scores
from .sweep import joint_sweep

LENGTHS = (150, 300, 600, 1200, 2400, 4800)
#: The demo diffusion model's architecture and optimizer (scripts/make_demo_assets.py), with a constant learning
#: rate after the warm-up, so that a checkpoint after N steps is a model trained for N steps.
CHANNELS = (16, 32, 64)
TRAIN_ARGS = ["--norm-groups", "8", "--layers-per-block", "1", "--attention-levels", "--dropout", "0.1",
              "--max-timestep", "500", "--batch-size", "64", "--lr", "1e-3", "--warmup-steps", "100",
              "--lr-schedule", "constant", "--ema-decay", "0.995", "--crop-padding", "1", "--no-flip",
              "--checkpoint-every", "1000000", "--keep-checkpoints", "0"]
BASELINES = ("msp", "vim", "knn")
#: Noise draws per image for the denoising loss.
LOSS_DRAWS = 8


def train_args(run: Path, channels: Sequence[int], steps: int, seed: int, extra: Sequence[str] = ()):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args([DEMO_DATA, "-o", str(run / "final"), "--block-out-channels", *map(str, channels),
                              "--steps", str(steps), "--seed", str(seed), *TRAIN_ARGS, *extra])


def train_models(work: Path, lengths: Sequence[int], channels: Sequence[int], seed: int,
                 extra: Sequence[str] = ()) -> Tuple[Dict[str, Path], float]:
    """Train (or find) every model; returns ({label: diffusers dir}, training seconds spent now)."""
    spent, models = 0.0, {}
    wide = [2 * c for c in channels]
    for name, chans, steps_list in (("base", channels, lengths), ("wide", wide, [max(lengths)])):
        run = work / f"{name}_{'-'.join(map(str, chans))}_seed{seed}"
        args = train_args(run, chans, max(lengths), seed, extra)
        args.checkpoint_dir = str(run / "checkpoints")
        for steps in steps_list:
            folder = run / "checkpoints" / f"step_{steps:06d}"
            if not folder.is_dir():
                start = time.perf_counter()
                args.stop_after, args.resume = steps, bool(checkpoints(args.checkpoint_dir))
                train_main(args)
                now = time.perf_counter() - start
                record = run / "seconds.txt"
                record.write_text(f"{now + (float(record.read_text()) if record.exists() else 0.0):.1f}")
                spent += now
            out = run / "models" / f"step_{steps:06d}"
            if not (out / "unet").is_dir():
                export_checkpoint(args, str(folder), str(out))
            models[f"{name} {steps}"] = out
    return models, spent


@torch.no_grad()
def denoising_loss(backend: DiffusionBackend, suite: Suite, t: int, seed: int) -> stats.Estimate:
    """Epsilon MSE at timestep ``t`` of the ID validation images, conditioned on their class, LOSS_DRAWS noise
    draws per image; the interval resamples the images."""
    x0 = torch.from_numpy(suite.id_val.images).permute(0, 3, 1, 2).float() / 127.5 - 1
    labels = torch.from_numpy(suite.id_val.labels)
    eps = sample_noise(range(len(x0)), seed, LOSS_DRAWS, tuple(x0.shape[1:]), torch.device("cpu"))
    per_image = []
    for r in range(LOSS_DRAWS):
        zt = add_noise(x0, eps[:, r], backend.schedule, t)
        pred = backend.network(zt, torch.full((len(x0),), t), labels)
        per_image.append(((pred - eps[:, r]) ** 2).flatten(1).mean(1))
    return stats.mean(torch.stack(per_image, 1).mean(1).numpy(), seed)


def ood_cells(scores: Dict[str, np.ndarray], suite: Suite) -> Dict[str, stats.Estimate]:
    """Near / far AUROC and FPR@95 with intervals."""
    id_name, (near, far) = suite.test_groups()
    return {f"{split} {m}": stats.grouped(m, scores, id_name, [group])
            for split, group in (("near", near), ("far", far)) for m in ("AUROC", "FPR@95")}


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse_args(argv)
    apply_run_arguments(args)
    started = time.perf_counter()
    models, train_seconds = train_models(args.work, args.lengths, args.channels, args.seed, args.train_extra)
    if args.stage == "train":
        print("\n".join(f"{k}: {v}" for k, v in models.items()))
        return args.work
    suite = digits_suite().limited(args.limit)
    net, demo_dir = load_demo_models()
    store = RoundTripStore(args.cache_dir)
    demo_engine = DiffOOD(net, demo_dir, digits_settings(), batch_size=25)
    sweep = joint_sweep(store, demo_engine, suite)
    t, w = sweep.choice
    rows: Dict[str, dict] = {}
    params: Dict[str, int] = {}
    for label, path in models.items():
        engine = DiffOOD(net, str(path), digits_settings(timestep=t, guidance=w), batch_size=25)
        params[label] = sum(p.numel() for p in engine.diffusion.parameters())
        sc = mean_scores(diffood_changes(store, engine, suite.test_sets(), label), suite.space, 4)
        rows[label] = {"loss": denoising_loss(engine.diffusion, suite, t, args.seed), **ood_cells(sc, suite)}
    base, backends, base_seconds, _ = baseline_scores(net, suite.benchmark(), BASELINES, args.backend, "demo")
    baselines = {m: ood_cells(s, suite) for m, s in base.items()}
    total = {"training (earlier runs included, from the checkpoints)": train_seconds_total(args.work),
             "round trips": store.compute_seconds(), "baselines": base_seconds,
             "this run, wall": time.perf_counter() - started}
    meta = provenance([os.path.join(os.path.dirname(demo_dir), "classifier.safetensors"), demo_dir], backends,
                      total, argv=list(argv) if argv is not None else None, trained_now_seconds=train_seconds)
    return write_report(args.out, args.tag, rows, baselines, sweep, models, meta, suite, params)


def train_seconds_total(work: Path) -> float:
    """Training seconds recorded beside the runs (``seconds.txt``), summed."""
    return float(sum(float(p.read_text()) for p in work.glob("*/seconds.txt")))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", type=int_list, default=list(LENGTHS),
                   help="training lengths (steps) of the base model; the wide one trains to the longest")
    p.add_argument("--channels", type=int, nargs="+", default=list(CHANNELS), help="base UNet channels per level")
    p.add_argument("--train-extra", type=shlex.split, default=[],
                   help="extra `train` arguments in one string (tests: --train-extra='--batch-size 16')")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=None, help="images per set (default: all)")
    p.add_argument("--backend", default="auto", help="baselines from openood / pytorch-ood / auto")
    p.add_argument("--work", type=Path, default=CACHE / "dm_quality", help="training runs and exported models")
    add_output_arguments(p, "train", "'train' only trains and exports")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
