"""PNG figures for an evaluation: score histograms (ID vs each OOD set) and DiffOOD reconstructions."""
from __future__ import annotations

import math
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .metrics import ood_metrics  # noqa: E402


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


#: A bin holding more than this share of a panel's mass gets a log density axis (MSP's spike at -1, for example).
LOG_SCALE_SHARE = 0.3


def score_histograms(out_dir: str, id_scores: Mapping[str, np.ndarray],
                     ood_scores: Mapping[str, Mapping[str, np.ndarray]], dpi: int = 110) -> List[str]:
    """One PNG per OOD set (``hist_<set>.png``): a panel per method, ID vs that set, with the set's AUROC and the
    threshold at which 95 % of the OOD set is detected (the FPR@95 point).
    ``id_scores[method]`` are the ID test scores; ``ood_scores[set_name][method]`` the OOD scores (higher = OOD)."""
    os.makedirs(out_dir, exist_ok=True)
    methods = list(id_scores)
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    paths = []
    for set_name, per_method in ood_scores.items():
        fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows), squeeze=False)
        for ax, method in zip(axes.flat, methods):
            histogram_panel(ax, method, np.asarray(id_scores[method]), np.asarray(per_method[method]), set_name)
        for ax in list(axes.flat)[len(methods):]:
            ax.axis("off")
        fig.suptitle(f"OOD scores, ID test vs {set_name} (each method's own scale; higher = more OOD)", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"hist_{_safe(set_name)}.png")
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths


def histogram_panel(ax, method: str, s_id: np.ndarray, s_ood: np.ndarray, set_name: str) -> None:
    """One method's panel: ID vs OOD densities, the FPR@95 threshold, AUROC in the title, log density for spikes."""
    lo, hi = np.percentile(np.concatenate([s_id, s_ood]), [0.5, 99.5])
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40)
    counts = []
    for scores, color, label in ((s_id, "tab:blue", "ID"), (s_ood, "tab:red", set_name)):
        c, _, _ = ax.hist(np.clip(scores, lo, hi), bins=bins, alpha=0.55, density=True, color=color, label=label)
        counts.append(c / max(c.sum(), 1e-12))
    if max(c.max() for c in counts) > LOG_SCALE_SHARE:
        ax.set_yscale("log")
    m = ood_metrics(s_id, s_ood)
    threshold = float(np.quantile(s_ood, 0.05))  # 95 % of the OOD scores lie at or above it
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"FPR@95 threshold (FPR {100 * m['FPR@95']:.0f}%)")
    ax.set_title(f"{method} (AUROC {100 * m['AUROC']:.1f})", fontsize=9)
    ax.set_xlabel("score", fontsize=8)
    ax.set_ylabel("density" + (" (log)" if ax.get_yscale() == "log" else ""), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="best")


def reconstruction_grid(path: str, images: torch.Tensor, recs: torch.Tensor, scores: Sequence[float],
                        titles: Sequence[str], rec_titles: Optional[Sequence[Sequence[str]]] = None,
                        suptitle: str = "DiffOOD: inputs (top, with set and score) and their reconstructions",
                        dpi: int = 110) -> str:
    """A PNG with one column per image: the input on top, its DiffOOD reconstructions below, score in the title.
    ``images`` (N, C, H, W) and ``recs`` (N, R, C, H, W) are in [0, 1]; ``titles`` describe each input (its set,
    classes); ``rec_titles[n][r]`` label each reconstruction (e.g. the classifier's prediction on it)."""
    n, r = recs.shape[0], recs.shape[1]
    if images.shape[0] != n or len(scores) != n or len(titles) != n:
        raise ValueError(f"reconstruction_grid: {images.shape[0]} images, {n} reconstructions, {len(scores)} scores "
                         f"and {len(titles)} titles; they must match")
    fig, axes = plt.subplots(1 + r, n, figsize=(1.35 * n, 1.35 * (1 + r) + 0.9), squeeze=False)
    for j in range(n):
        _show(axes[0, j], images[j])
        axes[0, j].set_title(f"{titles[j]}\nscore {scores[j]:.3f}", fontsize=6)
        for i in range(r):
            _show(axes[1 + i, j], recs[j, i])
            if rec_titles is not None:
                axes[1 + i, j].set_title(rec_titles[j][i], fontsize=6)
    axes[0, 0].set_ylabel("input", fontsize=7)
    for i in range(r):
        axes[1 + i, 0].set_ylabel(f"rec {i + 1}", fontsize=7)
    fig.suptitle(suptitle, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _show(ax, img: torch.Tensor) -> None:
    arr = img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray" if arr.shape[-1] == 1 else None,
              interpolation="nearest", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def histogram_inputs(id_scores: Mapping[str, np.ndarray],
                     ood: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]]) -> Dict[str, Dict[str, np.ndarray]]:
    """Regroup ``ood[method][split][set] -> scores`` into ``{set: {method: scores}}`` for :func:`score_histograms`."""
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for method in id_scores:
        for sets in ood[method].values():
            for set_name, s in sets.items():
                out.setdefault(set_name, {})[method] = s
    return out


def training_grid(path: str, rows: Sequence[torch.Tensor], row_titles: Sequence[str], column_titles: Sequence[str],
                  title: str, dpi: int = 110) -> str:
    """A PNG grid of image rows (each (N, C, H, W) in [0, 1]) with a title per row and per column."""
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 1.2, 1.1 * len(rows) + 0.6), squeeze=False)
    for i, images in enumerate(rows):
        for j in range(n):
            _show(axes[i, j], images[j])
        axes[i, 0].set_ylabel(row_titles[i], fontsize=7, rotation=0, ha="right", va="center")
    for j, name in enumerate(column_titles):
        axes[0, j].set_title(f"class {name}", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
