"""DiffOOD variants on the shared CIFAR-10 data (issue 21): past the validation corner of t x w, several feature
spaces and timesteps in one score, and the combination with KNN / ViM; chosen on the validation sets only
(cifar10_val + tin_val, as OpenOOD's APS), then reported on the test sets against KNN, ViM and the earlier
validation choice, with paired bootstrap intervals, the paper's Table 3 and rank correlations with the baselines.

The round trips (DDIM-20, R = 2 by default) go to the round-trip store, so an interrupted run resumes and every
space, timestep list and combination is scored from the same reconstructions. Results:
``<out>/cifar10_variants_<tag>.md`` / ``.json`` / ``.png``; findings in words in
``<out>/cifar10_variants_<tag>_findings.md`` (written by hand).

    python -m benchmarks.cifar10_variants --precision fp32                    # the run of the results file
    python -m benchmarks.cifar10_variants --precision fp32 --stage validate   # stop after the validation choice
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

from .cifar10_data import DATA_FILES, add_set_arguments, cifar_engine, from_arguments
from .common import add_output_arguments, float_list, int_list, provenance, setting
from .suite import baseline_scores, diffood_changes
from .variants import Variant, best, candidates, validation_aurocs
from .variants_report import Study, write_report

TIMESTEPS = (25, 50, 100)
GUIDANCES = (6.0, 9.0, 12.0)
SPACES = ("logit", "feature", "layer3")
COMBINE = ("knn", "vim")
WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)
BASELINES = ("msp", "ebo", "vim", "knn")
#: The earlier validation choice (benchmarks/results/cifar10_cpu.md: t = 100, w = 6, logits).
CURRENT = (100, 6.0)


def main(argv: Optional[Sequence[str]] = None):
    args, started = parse_args(argv), time.perf_counter()
    data, net, backend, sets, store = from_arguments(args)
    suite = sets.suite()

    def changes(t: int, w: float, image_sets, label: str):
        e = cifar_engine(net, backend, timestep=t, guidance=w, repeats=args.repeats, precision=args.precision,
                         seed=args.seed)
        return diffood_changes(store, e, image_sets, f"{label} t{t} w{w:g}", spaces=args.spaces)

    cells = sorted({(t, w) for t in args.timesteps for w in args.guidances} | set(args.extra))
    grid = sorted({*cells, tuple(args.current)})
    val_changes = {tw: changes(*tw, suite.val_sets(), "val") for tw in grid}
    val_base, _, val_seconds, _ = baseline_scores(net, suite.val_benchmark(), args.combine, args.backend)
    val = (val_changes, val_base)
    id_val, ood_val = suite.id_val.name, suite.val_near[0].name
    singles = candidates(cells, args.spaces)
    current = Variant((args.current[0],), args.current[1])
    cands = list(dict.fromkeys([*singles, current]))
    costs = {v: v.evaluations(args.repeats, backend) for v in cands}
    aurocs = validation_aurocs(cands, val, id_val, ood_val)
    chosen = best(aurocs, costs)
    combos = {name: validation_aurocs([chosen.with_combine(name, w) for w in WEIGHTS], val, id_val, ood_val)
              for name in args.combine}
    combined = {name: max(a, key=lambda v: a[v].value) for name, a in combos.items()}
    print(f"validation choice: {chosen.name} ({aurocs[chosen].cell()}); "
          + "; ".join(f"{v.name} ({combos[n][v].cell()})" for n, v in combined.items()))
    if args.stage == "validate":
        return None
    test_sets = [*suite.test_sets(), sets.misclassified]
    needed = sorted({(t, chosen.guidance) for t in chosen.timesteps} | ({tuple(args.current)} if args.test_current
                                                                      else set()))
    test_changes = {tw: changes(*tw, test_sets, "test") for tw in needed}
    bench = suite.benchmark()
    bench.ood["table3"] = [sets.misclassified]
    base, backends, base_seconds, id_pred = baseline_scores(net, bench, BASELINES, args.backend)
    meta = provenance([data / f for f in DATA_FILES], backends, {
        "round trips (stored and new)": store.compute_seconds(), "baselines": base_seconds + val_seconds,
        "this run, wall": time.perf_counter() - started}, argv=list(argv) if argv is not None else None,
        precision=args.precision, repeats=args.repeats)
    study = Study(sets, suite, val, (test_changes, base), aurocs, costs, chosen, current, combos, combined,
                  id_pred, backend, args.repeats, args.test_current)
    return write_report(args.out, args.tag, study, meta)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_set_arguments(p)
    p.add_argument("--repeats", type=int, default=2, help="R of every round trip (the sweep's R; 2 fits a CPU)")
    p.add_argument("--timesteps", type=int_list, default=list(TIMESTEPS))
    p.add_argument("--guidances", type=float_list, default=list(GUIDANCES))
    p.add_argument("--extra", type=lambda s: [setting(c) for c in s.split(";")], default=[],
                   help="cells t,w;t,w beyond the grid (where the validation trend points)")
    p.add_argument("--spaces", type=lambda s: s.split(","), default=list(SPACES))
    p.add_argument("--combine", type=lambda s: s.split(","), default=list(COMBINE),
                   help="postprocessors combined with the chosen variant (weight chosen on validation)")
    p.add_argument("--current", type=setting, default=CURRENT, help="the earlier validation choice t,w (logits)")
    p.add_argument("--test-current", action=argparse.BooleanOptionalAction, default=True,
                   help="also score the earlier choice on the test sets (its round trips; paired against it)")
    p.add_argument("--backend", default="auto", help="baselines from openood / pytorch-ood / auto")
    add_output_arguments(p, "validate", "'validate' stops after the validation choice (no test round trips)")
    return p.parse_args(argv)


if __name__ == "__main__":
    main()
