"""Figures and the analysis section of ``benchmarks/cifar10.py``: the validation choices as a figure, and how the
test sets look to the classifier and to DiffOOD (analysis only; no choice is made from it)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from openood_diffood.evaluate.plots import reconstruction_grid, score_histograms  # noqa: E402
from openood_diffood.evaluate.tables import format_table  # noqa: E402

from . import stats  # noqa: E402
from .sweep import Sweep  # noqa: E402

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def validation_figure(path: Path, sweep: Sweep, space_val: Mapping[str, Mapping[str, stats.Estimate]],
                      spaces: Sequence[str], labels: Mapping[str, str],
                      repeats: Mapping[str, Mapping[int, List[float]]]) -> None:
    """The t x w sweep as a heat map, the feature spaces and the repeats (validation AUROC with intervals)."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.0))
    ts = sorted({t for t, _ in sweep.cells})
    ws = sorted({w for _, w in sweep.cells})
    grid = np.array([[sweep.cells[t, w].value for w in ws] for t in ts])
    im = axes[0].imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    for i, t in enumerate(ts):
        for j, w in enumerate(ws):
            bold = (t, w) == sweep.choice
            axes[0].text(j, i, f"{grid[i, j]:.1f}" + ("\n(chosen)" if bold else ""), ha="center", va="center",
                         color="white" if grid[i, j] < grid.mean() else "black", fontsize=9,
                         fontweight="bold" if bold else "normal")
    axes[0].set_xticks(range(len(ws)), [f"{w:g}" for w in ws])
    axes[0].set_yticks(range(len(ts)), [str(t) for t in ts])
    axes[0].set_xlabel("guidance w")
    axes[0].set_ylabel("timestep t")
    axes[0].set_title("joint sweep: AUROC cifar10_val vs tin_val", fontsize=10)
    fig.colorbar(im, ax=axes[0], label="AUROC (%)")
    for k, (setting, aurocs) in enumerate(space_val.items()):
        x = np.arange(len(spaces)) + 0.15 * (k - 0.5)
        est = [aurocs[sp] for sp in spaces]
        axes[1].errorbar(x, [e.value for e in est], yerr=[[e.value - e.low for e in est],
                                                          [e.high - e.value for e in est]],
                         marker="o", ls="none", capsize=3, label=labels[setting])
    axes[1].set_xticks(range(len(spaces)), spaces, rotation=30, fontsize=8)
    axes[1].set_ylabel("AUROC (%) cifar10_val vs tin_val")
    axes[1].set_title("feature space (DDIM-20, R = 4)", fontsize=10)
    axes[1].legend(fontsize=8)
    for k, (setting, per_r) in enumerate(repeats.items()):
        rs = sorted(per_r)
        x = np.arange(len(rs)) + 0.1 * (k - 0.5)
        axes[2].errorbar(x, [per_r[r][0] for r in rs], yerr=[[per_r[r][0] - per_r[r][1] for r in rs],
                                                             [per_r[r][2] - per_r[r][0] for r in rs]],
                         marker="o", capsize=3, label=setting)
        axes[2].set_xticks(range(len(rs)), [str(r) for r in rs])
    axes[2].set_xlabel("repeats R (the first R of the R = 4 round trips)")
    axes[2].set_ylabel("AUROC (%) cifar10_val vs tin_val")
    axes[2].set_title("repeats (logits)", fontsize=10)
    axes[2].legend(fontsize=8)
    for ax in axes[1:]:
        ax.grid(alpha=0.3)
    fig.suptitle("Validation choices (95 % bootstrap intervals)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pred_histogram(path: Path, preds: Mapping[str, np.ndarray]) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.2))
    width = 0.8 / len(preds)
    for i, (name, p) in enumerate(preds.items()):
        ax.bar(np.arange(10) + i * width, np.bincount(p, minlength=10) / len(p), width, label=name)
    ax.set_xticks(np.arange(10) + 0.4 - width / 2, CIFAR10_CLASSES, rotation=30, fontsize=8)
    ax.set_ylabel("share of the set")
    ax.set_title("classifier's predicted CIFAR-10 class", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


@torch.no_grad()
def analysis_section(inp, scores: Mapping[str, Mapping[str, np.ndarray]], plain: str,
                     fig_dir: Path) -> Tuple[List[str], Dict[str, object]]:
    """(markdown lines, JSON data) of the analysis of the test sets at the paper's setting."""
    suite, engine, ch = inp.suite, inp.engines["paper"], inp.changes["paper"]
    id_name = suite.id_test.name
    names = [s.name for s in suite.test_sets()]
    by_space = {sp: {n: stats.auroc(ch[id_name][sp].mean(1), ch[n][sp].mean(1)) for n in names[1:]}
                for sp in inp.spaces}
    mean_change = {sp: {n: float(ch[n][sp].mean()) for n in names} for sp in inp.spaces}
    sets = {s.name: s for s in suite.test_sets()}
    trips = {n: inp.store.get(engine, sets[n].images, compute=False) for n in names}
    preds = {n: trips[n].pred.numpy() for n in names}
    _pred_histogram(fig_dir / "predicted_classes.png", preds)
    shown = [m for m in (plain, "msp", "knn") if m in scores]
    score_histograms(str(fig_dir), {m: scores[m][id_name] for m in shown},
                     {n: {m: scores[m][n] for m in shown} for n in names[1:]})
    # 3 ID, 3 of each near set, then the 4 most ID-looking and 2 most OOD-looking far images
    far = names[-1]
    order = np.argsort(scores[plain][far])
    picks = [(n, [0, 1, 2]) for n in names[:-1]] + [(far, [*order[:4].tolist(), *order[-2:].tolist()])]
    imgs = torch.cat([torch.from_numpy(sets[n].images[idx]).permute(0, 3, 1, 2).float() / 255 for n, idx in picks])
    recs = torch.cat([trips[n].reconstructions[idx] for n, idx in picks])
    shown_scores = [float(scores[plain][n][i]) for n, idx in picks for i in idx]
    titles = [f"{n}, predicted {CIFAR10_CLASSES[preds[n][i]]}" for n, idx in picks for i in idx]
    reconstruction_grid(str(fig_dir / "reconstructions.png"), imgs, recs, shown_scores, titles,
                        suptitle=f"DiffOOD at the paper's setting: the first 3 test images of {', '.join(names[:-1])}, "
                        f"then the 4 {far} images it scores most ID-like and the 2 most OOD-like\n(top: the input "
                        "with its set, the class the reconstructions are conditioned on, and its score; below: its "
                        "R reconstructions)")
    msp = {n: float(np.mean(-scores["msp"][n])) for n in names} if "msp" in scores else {}
    share = {n: (np.bincount(preds[n], minlength=10) / len(preds[n])).round(3).tolist() for n in names}
    rel = fig_dir.name
    lines = ["## Understanding the sets (test sets, paper setting; analysis only, no choice is made here)", "",
             "AUROC by feature space on each test set:", "",
             format_table(["space", *names[1:]], [[sp, *[f"{v[n]:.1f}" for n in names[1:]]]
                                                  for sp, v in by_space.items()], markdown=True), "",
             "Mean change per set and space (the score's raw scale):", "",
             format_table(["space", *names], [[sp, *[f"{v[n]:.3f}" for n in names]]
                                              for sp, v in mean_change.items()], markdown=True), "",
             "Mean max-softmax per set: " + ", ".join(f"{k} {v:.3f}" for k, v in msp.items()), "",
             "Predicted class shares:", "",
             format_table(["set", *CIFAR10_CLASSES], [[n, *[f"{x:.2f}" for x in v]] for n, v in share.items()],
                          markdown=True), "",
             f"![predicted classes]({rel}/predicted_classes.png)", "", f"![reconstructions]({rel}/reconstructions.png)",
             "", *[f"![histogram]({rel}/hist_{n}.png)" for n in names[1:]]]
    return lines, {"auroc_by_space_test": by_space, "mean_change_by_space": mean_change,
                   "predicted_class_share": share, "mean_max_softmax": msp}
