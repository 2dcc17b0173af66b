"""Results file, JSON and figure of ``benchmarks/solver_frontier.py``."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from openood_diffood.evaluate.tables import format_table  # noqa: E402

from . import stats  # noqa: E402
from .cifar10_data import PRECISION_NAMES  # noqa: E402
from .common import results_header, write_json  # noqa: E402
from .frontier import SOLVER_NAMES, TOLERANCE, Point, fewest  # noqa: E402
from .suite import Suite  # noqa: E402
from .sweep import Sweep  # noqa: E402

COLORS = {"ddim": "tab:blue", "dpmpp2m": "tab:orange", "plms": "tab:green"}
MARKERS = {1: "v", 2: "s", 4: "o"}
NAMES = {"ddim": "DDIM", "dpmpp2m": "DPM-Solver++(2M)", "plms": "PLMS"}
TICKS = (1, 2, 5, 10, 20, 50, 100, 200, 500)  # labelled UNet evaluation counts on the log x axis


@dataclass
class Study:
    """One benchmark's sweep and frontiers: ``settings[name] = (t, w)``, ``points[name]`` the frontier there."""

    suite: Suite
    sweep: Sweep
    settings: Dict[str, Tuple[int, float]]
    points: Dict[str, List[Point]]
    seconds: float


def _reference(points: Sequence[Point]) -> Point:
    return next(p for p in points if p.delta is None)


def frontier_table(points: Sequence[Point]) -> str:
    rows = [[p.label, p.evaluations, p.mean.cell(), f"{p.near:.1f}", f"{p.far:.1f}",
             "reference" if p.delta is None else p.delta.cell(2)] for p in points]
    return format_table(["solver-stride R", "UNet evals / image", "mean near/far AUROC [95 % CI]", "near AUROC",
                         "far AUROC", "difference to DDIM-20 R4 [paired 95 % CI]"], rows, markdown=True)


def fewest_line(points: Sequence[Point]) -> str:
    ref = _reference(points)
    parts = []
    for by_interval, what in ((False, "by its point estimate"), (True, "with its whole paired interval")):
        p = fewest(points, by_interval)
        parts.append(f"{what}: " + ("none cheaper than the reference" if p is None else
                                    f"**{p.label}, {p.evaluations} evaluations** "
                                    f"(difference {p.delta.cell(2)})"))
    return (f"Fewest UNet evaluations per image within {TOLERANCE} mean AUROC of DDIM-20 R4 ({ref.evaluations} "
            f"evaluations, {ref.mean.value:.2f}): " + "; ".join(parts) + ".")


def default_decision(studies: Mapping[str, Study]) -> Tuple[Optional[str], str]:
    """(the solver-stride R qualifying on every benchmark at the paper's setting, or None; the reasoning)."""
    qualified = []
    for name, s in studies.items():
        pts = s.points["paper"]
        ref = _reference(pts)
        qualified.append({p.label for p in pts if p.delta is not None and p.delta.low >= -TOLERANCE
                          and p.evaluations < ref.evaluations})
    both = set.intersection(*qualified) if qualified else set()
    if len(studies) < 2:
        return None, "Only one benchmark ran: no default is changed on one benchmark's evidence."
    if not both:
        return None, (f"No cheaper solver / stride / R stays within {TOLERANCE} AUROC of DDIM-20 R4 with its whole "
                      "paired interval on both benchmarks at the paper's setting, so diffood.yml keeps the paper's "
                      "DDIM stride 20 and R = 4.")
    pts = {p.label: p for p in next(iter(studies.values())).points["paper"]}
    best = min(both, key=lambda label: pts[label].evaluations)
    return best, (f"{best} stays within {TOLERANCE} AUROC of DDIM-20 R4 with its whole paired interval on both "
                  "benchmarks at the paper's setting (candidates: " + ", ".join(sorted(both)) + ").")


def plot(path: Path, studies: Mapping[str, Study]) -> None:
    """One panel per (benchmark, setting): AUROC against evaluations, the reference band, paired intervals."""
    panels = [(n, s, k) for n, s in studies.items() for k in s.points]
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.3 * rows), squeeze=False)
    for ax, (name, s, setting) in zip(axes.flat, panels):
        pts = s.points[setting]
        ref = _reference(pts)
        ax.axhspan(ref.mean.value - TOLERANCE, ref.mean.value, color="grey", alpha=0.2,
                   label=f"within {TOLERANCE} of DDIM-20 R4")
        ax.axhline(ref.mean.value, color="black", lw=0.8)
        for solver in SOLVER_NAMES:
            for r, marker in MARKERS.items():
                sel = sorted((p for p in pts if p.solver == solver and p.repeats == r), key=lambda p: p.evaluations)
                if not sel:
                    continue
                x = [p.evaluations for p in sel]
                y = [p.mean.value for p in sel]
                lo = [0.0 if p.delta is None else p.delta.value - p.delta.low for p in sel]
                hi = [0.0 if p.delta is None else p.delta.high - p.delta.value for p in sel]
                ax.errorbar(x, y, yerr=[lo, hi], color=COLORS[solver], marker=marker, ms=5, lw=1, capsize=2,
                            ls="-" if r == 4 else "--" if r == 2 else ":", label=f"{NAMES[solver]} R{r}")
        ax.scatter([ref.evaluations], [ref.mean.value], s=120, facecolors="none", edgecolors="black", zorder=5,
                   label="DDIM-20 R4 (reference)")
        t, w = s.settings[setting]
        ax.set_xscale("log")
        lo, hi = min(p.evaluations for p in pts), max(p.evaluations for p in pts)
        ax.set_xticks([x for x in TICKS if lo / 1.5 <= x <= hi * 1.5], minor=False)
        ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("UNet evaluations per image (log scale)")
        ax.set_ylabel("mean near/far AUROC (%)")
        ax.set_title(f"{name}: {setting} setting t = {t}, w = {w:g}", fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.suptitle("DiffOOD: UNet evaluations per image against mean near/far AUROC\nerror bars: paired 95 % "
                 "bootstrap interval of the difference to DDIM-20 R4", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 1.9 / fig.get_figwidth(), 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_section(s: Study) -> List[str]:
    t, w = s.sweep.choice
    return [f"Joint validation sweep (DDIM-20, R = 4; mean near/far AUROC on the validation sets "
            f"{', '.join(x.name for x in s.suite.val_sets())} [95 % CI]); chosen: **t = {t}, w = {w:g}**.", "",
            format_table(s.sweep.header(), s.sweep.rows(), markdown=True), ""]


def write_report(out: Path, tag: str, studies: Mapping[str, Study], meta: dict, args: argparse.Namespace) -> Path:
    """Markdown, JSON and PNG; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"solver_frontier_{tag}.png"
    plot(png, studies)
    best, why = default_decision(studies)
    lines = [*results_header(f"DiffOOD: UNet evaluations per image against AUROC ({tag})", "solver_frontier",
                             f"solver_frontier_{tag}_findings.md", meta, png.name),
             "UNet evaluations per image = solver network evaluations x R x 2 (the guidance pair; 1 for w = 1). "
             "R = 1 and 2 are the first repeats of an R = 4 run (each repeat's noise is independent of R). "
             f"Intervals: {stats.RESAMPLES} bootstrap resamples, percentile {100 * stats.LEVEL:.0f} %; a point's "
             "interval is paired (the same resampled images for it and for DDIM-20 R4).", ""]
    for name, s in studies.items():
        sizes = ", ".join(f"{x.name} {len(x.images)}" for x in s.suite.test_sets())
        lines += [f"## {name}", "", f"Test images per set: {sizes}; DiffOOD space {s.suite.space}. Wall time of "
                  f"this benchmark in this run: {meta['wall_seconds'][name] / 60:.1f} min (stored round trips "
                  "are read, not recomputed).", "", *sweep_section(s)]
        for setting, pts in s.points.items():
            t, w = s.settings[setting]
            lines += [f"### {name}, {setting} setting: t = {t}, w = {w:g}", "", frontier_table(pts), "",
                      fewest_line(pts), ""]
    lines += ["## Defaults of diffood.yml", "", why, ""]
    if "cifar10" in studies:
        lines += [f"CIFAR-10 grid: `--cifar-grid {args.cifar_grid}`"
                  + (f", strides {args.cifar_strides}, the reduced grid's runs at R = {args.cifar_repeats}"
                     if args.cifar_grid == "reduced" else f", strides {args.strides}")
                  + f"; round trips in {PRECISION_NAMES[args.precision]}.", ""]
    md = out / f"solver_frontier_{tag}.md"
    md.write_text("\n".join(lines))
    write_json(out / f"solver_frontier_{tag}.json", {
        "meta": meta, "default_decision": {"qualifying": best, "reason": why},
        "studies": {n: {"sweep": s.sweep.as_dict(), "settings": {k: list(v) for k, v in s.settings.items()},
                        "points": {k: [p.as_dict() for p in v] for k, v in s.points.items()}}
                    for n, s in studies.items()}})
    print(md.read_text())
    return md
