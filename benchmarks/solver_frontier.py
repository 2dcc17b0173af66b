"""UNet evaluations per image against mean near/far AUROC: DDIM at strides 20, 30, 50, 100, PLMS and
DPM-Solver++(2M) at the same strides (matching step counts), repeats 1, 2, 4 (issue 14).

Two benchmarks, two settings each: the paper's t = 300, w = 3 and the (t, w) that the joint validation sweep
(t in {100, 200, 300} x w in {1, 3, 6}, DDIM-20, R = 4, validation sets only) chooses on that benchmark.

- digits (the demo benchmark and models shipped with the package), every test image, the full grid (every solver
  and stride computed at R = 4; R = 1 and 2 are its first repeats, whose noise does not depend on R);
- CIFAR-10 (the shared models, ``$DIFFOOD_DATA``), ``--n`` images per test set, bf16: by default the DDIM-20 R = 4
  reference and every solver at stride 100, each at R = 4 (so R = 1, 2, 4), to fit about two hours of a 2-core CPU
  at both settings; the digits' full grid showed the repeats, not the solver or the stride, setting the frontier
  (``--cifar-strides 20,50,100`` adds DDIM-50, ``--cifar-grid full`` runs the digits' grid at ``--strides``).

Each point's interval is the paired bootstrap interval (same resampled images) of its mean near/far AUROC minus the
reference's. Round trips are stored (``--cache-dir``): a rerun recomputes nothing.

    python -m benchmarks.solver_frontier                  # benchmarks/results/solver_frontier_cpu.md + .json + .png
    python -m benchmarks.solver_frontier --suites cifar10 --stage reconstruct     # only fill the round-trip store
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from openood_diffood import DiffOOD
from openood_diffood.models.demo import load_demo_models

from . import frontier
from .cifar10_data import DATA_FILES, add_precision_argument, build_sets, cifar_engine, load_models
from .common import (add_output_arguments, apply_run_arguments, data_dir, float_list, int_list, provenance,
                     setting)
from .frontier_report import Study, write_report
from .roundtrips import RoundTripStore
from .suite import Suite, digits_settings, digits_suite
from .sweep import GUIDANCES, PAPER, TIMESTEPS, joint_sweep


def settings_to_run(choice: Tuple[int, float], paper: Tuple[int, float]) -> List[Tuple[str, Tuple[int, float]]]:
    """(name, (t, w)) of the paper's setting and the validation-chosen one (once when they agree)."""
    out = [("paper", paper)]
    return out + ([("validation-chosen", choice)] if choice != paper else [])


def study(store: RoundTripStore, engine: DiffOOD, suite: Suite, grid: Sequence[frontier.Run], args) -> Study:
    """The joint sweep, then the frontier at each setting, on one suite."""
    started = time.perf_counter()
    sweep = joint_sweep(store, engine, suite, args.sweep_timesteps, args.sweep_guidances)
    settings = settings_to_run(sweep.choice, tuple(args.paper))
    points = {name: frontier.frontier(store, engine.replace(timestep=t, guidance=w), suite, grid)
              for name, (t, w) in settings}
    return Study(suite, sweep, dict(settings), points, time.perf_counter() - started)


def digits_study(store: RoundTripStore, args) -> Tuple[Study, List[str]]:
    net, diffusion = load_demo_models()
    engine = DiffOOD(net, diffusion, digits_settings(timestep=args.paper[0], guidance=args.paper[1]),
                     batch_size=25)
    grid = frontier.full_grid(args.strides)
    return study(store, engine, digits_suite().limited(args.limit), grid, args), [diffusion]


def cifar_study(store: RoundTripStore, args) -> Tuple[Study, List[str]]:
    data = data_dir()
    net, backend = load_models(data, diffusion=args.diffusion)
    suite = build_sets(data, net, args.n, args.val_n, 0).suite().limited(args.limit)
    engine = cifar_engine(net, backend, timestep=args.paper[0], guidance=args.paper[1],
                          precision=args.precision)
    grid = frontier.full_grid(args.strides) if args.cifar_grid == "full" else \
        frontier.reduced_grid(args.cifar_strides, args.cifar_repeats)
    return study(store, engine, suite, grid, args), [str(data / f) for f in DATA_FILES]


def main(argv: Optional[Sequence[str]] = None) -> Optional[Path]:
    args = parse_args(argv)
    apply_run_arguments(args)
    started = time.perf_counter()
    store = RoundTripStore(args.cache_dir)
    runners = {"digits": digits_study, "cifar10": cifar_study}
    studies: Dict[str, Study] = {}
    files: List[str] = []
    for name in args.suites:
        studies[name], used = runners[name](store, args)
        files += used
        print(f"{name}: done in {studies[name].seconds / 60:.1f} min", flush=True)
    if args.stage == "reconstruct":
        return None
    meta = provenance(files, {}, {"round trips (stored and new)": store.compute_seconds(),
                                  "this run, wall": time.perf_counter() - started},
                      argv=list(argv) if argv is not None else None,
                      wall_seconds={k: s.seconds for k, s in studies.items()})
    return write_report(args.out, args.tag, studies, meta, args)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", nargs="+", choices=("digits", "cifar10"), default=["digits", "cifar10"])
    p.add_argument("--n", type=int, default=300, help="CIFAR-10 images per test set")
    p.add_argument("--val-n", type=int, default=150, help="CIFAR-10 images per validation set")
    p.add_argument("--limit", type=int, default=None, help="cut every set to this many images (tests)")
    p.add_argument("--strides", type=int_list, default=list(frontier.STRIDES))
    p.add_argument("--cifar-grid", choices=("reduced", "full"), default="reduced")
    p.add_argument("--cifar-strides", type=int_list, default=[20, 100],
                   help="strides of the reduced CIFAR grid (the smallest: the DDIM R = 4 reference)")
    p.add_argument("--cifar-repeats", type=int, default=4, help="R of the reduced CIFAR grid's runs")
    p.add_argument("--diffusion", help="CIFAR-10 diffusers directory (default: the shared cifar10_cond_unet)")
    p.add_argument("--paper", type=setting, default=PAPER,
                   help="the paper's t,w")
    p.add_argument("--sweep-timesteps", type=int_list, default=list(TIMESTEPS))
    p.add_argument("--sweep-guidances", type=float_list, default=list(GUIDANCES))
    add_precision_argument(p)
    add_output_arguments(p, "reconstruct", "'reconstruct' only fills the round-trip store")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
