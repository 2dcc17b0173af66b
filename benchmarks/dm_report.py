"""Results file, JSON and figure of ``benchmarks/dm_quality.py``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from openood_diffood.evaluate.tables import format_table  # noqa: E402

from . import stats  # noqa: E402
from .common import results_header, write_json  # noqa: E402
from .suite import Suite  # noqa: E402
from .sweep import Sweep  # noqa: E402

CELLS = ("near AUROC", "far AUROC", "near FPR@95", "far FPR@95")
BASELINE_STYLES = {"msp": ("tab:gray", ":"), "vim": ("tab:purple", "--"), "knn": ("tab:brown", "-.")}

Row = Dict[str, stats.Estimate]


def steps_of(label: str) -> int:
    return int(label.split()[-1])


def _errorbar(ax, x, est, **style) -> None:
    ax.errorbar(x, [e.value for e in est], yerr=[[e.value - e.low for e in est], [e.high - e.value for e in est]],
                capsize=3, **style)


def plot(path: Path, rows: Mapping[str, Row], baselines: Mapping[str, Row]) -> None:
    """The denoising loss and each OOD metric against training steps (baselines as horizontal lines), and
    the AUROC against the loss."""
    base = {steps_of(k): v for k, v in rows.items() if k.startswith("base")}
    wide = {steps_of(k): v for k, v in rows.items() if k.startswith("wide")}
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    panels = [(axes[0, 0], "loss", "denoising loss (epsilon MSE) at t, ID val"),
              (axes[0, 1], "near AUROC", "near-OOD AUROC (%)"), (axes[0, 2], "far AUROC", "far-OOD AUROC (%)"),
              (axes[1, 1], "near FPR@95", "near-OOD FPR@95 (%, lower is better)"),
              (axes[1, 2], "far FPR@95", "far-OOD FPR@95 (%, lower is better)")]
    for ax, cell, ylabel in panels:
        _errorbar(ax, list(base), [v[cell] for v in base.values()], color="tab:blue", marker="o",
                  label="DiffOOD, demo UNet")
        _errorbar(ax, list(wide), [v[cell] for v in wide.values()], color="tab:red", marker="D", ms=7, ls="none",
                  label="DiffOOD, 2x wider UNet")
        if cell != "loss":
            for m, r in baselines.items():
                color, ls = BASELINE_STYLES.get(m, ("black", ":"))
                ax.axhline(r[cell].value, color=color, ls=ls, lw=1.2, label=m.upper())
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(base), [str(k) for k in sorted(base)])
        ax.minorticks_off()
        ax.set_xlabel("training steps of the diffusion model")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[1, 0]
    for split, marker in (("near", "o"), ("far", "s")):
        for group, color in ((base, "tab:blue"), (wide, "tab:red")):
            if not group:
                continue
            loss = [v["loss"].value for v in group.values()]
            _errorbar(ax, loss, [v[f"{split} AUROC"] for v in group.values()], color=color, marker=marker,
                      ls="-" if split == "near" else "--",
                      label=f"{split}-OOD, {'demo' if group is base else '2x wider'} UNet")
    ax.invert_xaxis()
    ax.set_xlabel("denoising loss at t (better to the right)")
    ax.set_ylabel("AUROC (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle("DiffOOD on the digits benchmark against its diffusion model's training (95 % bootstrap "
                 "intervals)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(rows: Mapping[str, Row], baselines: Mapping[str, Row], params: Mapping[str, int]) -> str:
    body = [[label, f"{params[label]:,}", r["loss"].cell(4), *[r[c].cell() for c in CELLS]]
            for label, r in rows.items()]
    body += [[m.upper() + " (baseline)", "-", "-", *[r[c].cell() for c in CELLS]] for m, r in baselines.items()]
    return format_table(["model (training steps)", "UNet parameters", "denoising loss [95 % CI]",
                         *[f"{c} [95 % CI]" for c in CELLS]], body, markdown=True)


def crossings(rows: Mapping[str, Row], baselines: Mapping[str, Row]) -> List[str]:
    """For each split and baseline: the fewest base-model steps from which DiffOOD's AUROC stays above it."""
    base = {steps_of(k): v for k, v in rows.items() if k.startswith("base")}
    lines = []
    for cell in ("near AUROC", "far AUROC"):
        for m, r in baselines.items():
            above = [s for s in sorted(base) if all(base[u][cell].value > r[cell].value for u in base if u >= s)]
            lines.append(f"- {cell}: DiffOOD stays above {m.upper()} ({r[cell].value:.1f}) "
                         + (f"from {above[0]} training steps on" if above else "from no length on"))
    return lines


def write_report(out: Path, tag: str, rows: Mapping[str, Row], baselines: Mapping[str, Row], sweep: Sweep,
                 models: Mapping[str, Path], meta: dict, suite: Suite, params: Mapping[str, int]) -> Path:
    """Markdown, JSON and PNG; returns the markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"dm_quality_{tag}.png"
    plot(png, rows, baselines)
    t, w = sweep.choice
    sizes = ", ".join(f"{s.name} {len(s.images)}" for s in suite.test_sets())
    lines = [*results_header(f"DiffOOD against its diffusion model's quality, digits benchmark ({tag})",
                             "dm_quality", f"dm_quality_{tag}_findings.md", meta, png.name),
             "Models: the demo's diffusion architecture trained with `python -m openood_diffood train` (one run, "
             "constant learning rate after a 100-step warm-up; each length is that run's checkpoint, its EMA "
             "weights exported with `export_checkpoint`), and the same with twice the channels at the longest "
             "length. Weights stay out of the repository: "
             + ", ".join(f"`{k}`" for k in models) + " are rebuilt from the seed.",
             f"DiffOOD settings, chosen once on the validation sets with the shipped demo model (joint sweep below): "
             f"**t = {t}, w = {w:g}**, DDIM stride 20, R = 4, space {suite.space}. Test images per set: {sizes}.",
             "Denoising loss: epsilon MSE at t of the ID validation digits, conditioned on their class, 8 noise "
             f"draws per image. Intervals: {stats.RESAMPLES} bootstrap resamples, percentile 95 %.", "",
             table(rows, baselines, params), "", "Where DiffOOD's AUROC crosses each baseline:", "",
             *crossings(rows, baselines), "", "## Joint validation sweep (shipped demo model)", "",
             format_table(sweep.header(), sweep.rows(), markdown=True), ""]
    md = out / f"dm_quality_{tag}.md"
    md.write_text("\n".join(lines))
    write_json(out / f"dm_quality_{tag}.json", {
        "meta": meta, "settings": {"timestep": t, "guidance": w, "space": suite.space},
        "rows": {k: {c: e.as_list() for c, e in r.items()} for k, r in rows.items()},
        "baselines": {k: {c: e.as_list() for c, e in r.items()} for k, r in baselines.items()},
        "parameters": dict(params), "sweep": sweep.as_dict()})
    print(md.read_text())
    return md
