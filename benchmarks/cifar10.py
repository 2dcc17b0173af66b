"""CIFAR-10 on the shared real data: DiffOOD at the paper's settings and at the joint validation sweep's choice
against OpenOOD's baselines, the paper's Table 3, validation ablations (feature space, repeats, t x w) and a
validated improvement. The sets are those of :mod:`benchmarks.cifar10_data`; every choice looks at the validation
sets only.

The round trips (DDIM-20, R = 4, bf16) are stored (``--cache-dir``), so an interrupted run resumes and every feature
space and number of repeats is scored from the same reconstructions. Results: ``<out>/cifar10_<tag>.md`` and
``.json``, PNGs under ``<out>/cifar10_<tag>/``; findings in words in ``<out>/cifar10_<tag>_findings.md`` (written by
hand, never by this script).

    python -m benchmarks.cifar10                        # the CPU run of benchmarks/results/cifar10_cpu.md
    python -m benchmarks.cifar10 --stage reconstruct    # only fill the round-trip store
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

from .cifar10_data import DATA_FILES, add_set_arguments, cifar_engine, from_arguments
from .cifar10_report import Inputs, write_report
from .common import add_output_arguments, float_list, int_list, provenance, setting
from .suite import baseline_scores, diffood_changes
from .sweep import GUIDANCES, PAPER, TIMESTEPS, joint_sweep

BASELINES = ("msp", "ebo", "mls", "react", "vim", "knn")
SPACES = ("image", "layer1", "layer2", "layer3", "layer4", "feature", "logit")


def main(argv: Optional[Sequence[str]] = None) -> Optional[Path]:
    args, started = parse_args(argv), time.perf_counter()
    data, net, backend, sets, store = from_arguments(args)
    suite = sets.suite()
    paper = cifar_engine(net, backend, timestep=args.paper[0], guidance=args.paper[1], seed=args.seed,
                         precision=args.precision)
    sweep = joint_sweep(store, paper, suite, args.sweep_timesteps, args.sweep_guidances)
    chosen = paper.replace(timestep=sweep.choice[0], guidance=sweep.choice[1])
    engines = {"paper": paper, **({"chosen": chosen} if chosen.settings != paper.settings else {})}
    test_sets = [*suite.test_sets(), sets.misclassified]
    if args.stage == "reconstruct":
        for name, e in engines.items():
            for s in test_sets:
                store.get(e, s.images, f"{s.name} ({name} setting)")
        print(f"round trips stored under {args.cache_dir} ({store.compute_seconds() / 60:.1f} min of compute)")
        return None
    changes = {k: diffood_changes(store, e, test_sets, spaces=SPACES) for k, e in engines.items()}
    val_changes = {k: diffood_changes(store, e, suite.val_sets(), spaces=SPACES) for k, e in engines.items()}
    bench = suite.benchmark()
    bench.ood["table3"] = [sets.misclassified]
    base, backends, base_seconds, id_pred = baseline_scores(net, bench, BASELINES, args.backend)
    val_energy, _, val_seconds, _ = baseline_scores(net, suite.val_benchmark(), ("ebo",), args.backend)
    meta = provenance([data / f for f in DATA_FILES], backends, {
        "round trips (stored and new)": store.compute_seconds(), "baselines": base_seconds + val_seconds,
        "this run, wall": time.perf_counter() - started}, argv=list(argv) if argv is not None else None)
    inputs = Inputs(sets, suite, store, engines, sweep, changes, val_changes, base,
                    val_energy["ebo"], id_pred, SPACES)
    return write_report(args.out, args.tag, inputs, meta)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(p)
    p.add_argument("--paper", type=setting, default=PAPER,
                   help="the paper's t,w (DDIM stride 20, R = 4, logits)")
    p.add_argument("--sweep-timesteps", type=int_list, default=list(TIMESTEPS))
    p.add_argument("--sweep-guidances", type=float_list, default=list(GUIDANCES))
    p.add_argument("--backend", default="auto", help="baselines from openood / pytorch-ood / auto")
    add_output_arguments(p, "reconstruct", "'reconstruct' only fills the round-trip store")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
