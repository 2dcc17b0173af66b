"""PNG figures for an evaluation: score histograms (ID vs each OOD set) and DiffOOD reconstructions."""
from __future__ import annotations

import math
import os
import re
from typing import Dict, List, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .metrics import ood_metrics  # noqa: E402


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def score_histograms(out_dir: str, id_scores: Mapping[str, np.ndarray],
                     ood_scores: Mapping[str, Mapping[str, np.ndarray]], dpi: int = 110) -> List[str]:
    """One PNG per OOD set (``hist_<set>.png``): a panel per method, ID vs that set, with the set's AUROC.

    ``id_scores[method]`` are the ID test scores; ``ood_scores[set_name][method]`` the OOD scores (higher = OOD).
    """
    os.makedirs(out_dir, exist_ok=True)
    methods = list(id_scores)
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    paths = []
    for set_name, per_method in ood_scores.items():
        fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows), squeeze=False)
        for ax, method in zip(axes.flat, methods):
            s_id, s_ood = np.asarray(id_scores[method]), np.asarray(per_method[method])
            lo, hi = np.percentile(np.concatenate([s_id, s_ood]), [0.5, 99.5])
            bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 40)
            ax.hist(np.clip(s_id, lo, hi), bins=bins, alpha=0.6, density=True, color="tab:blue", label="ID")
            ax.hist(np.clip(s_ood, lo, hi), bins=bins, alpha=0.6, density=True, color="tab:red", label=set_name)
            auroc = 100 * ood_metrics(s_id, s_ood)["AUROC"]
            ax.set_title(f"{method}  (AUROC {auroc:.1f})", fontsize=9)
            ax.set_yticks([])
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(methods):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"OOD score (higher = more OOD): ID test vs {set_name}", fontsize=10)
        fig.tight_layout()
        path = os.path.join(out_dir, f"hist_{_safe(set_name)}.png")
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
        paths.append(path)
    return paths


def reconstruction_grid(path: str, images: torch.Tensor, recs: torch.Tensor, scores: Sequence[float],
                        titles: Sequence[str], dpi: int = 110) -> str:
    """A PNG with one column per image: the input on top, its DiffOOD reconstructions below, score in the title.

    ``images`` (N, C, H, W) and ``recs`` (N, R, C, H, W) are in [0, 1]; ``titles`` name each image's set.
    """
    n, r = recs.shape[0], recs.shape[1]
    if images.shape[0] != n or len(scores) != n or len(titles) != n:
        raise ValueError(f"reconstruction_grid: {images.shape[0]} images, {n} reconstructions, {len(scores)} scores "
                         f"and {len(titles)} titles; they must match")
    fig, axes = plt.subplots(1 + r, n, figsize=(1.25 * n, 1.25 * (1 + r) + 0.5), squeeze=False)
    for j in range(n):
        _show(axes[0, j], images[j])
        axes[0, j].set_title(f"{titles[j]}\nscore {scores[j]:.3f}", fontsize=7)
        for i in range(r):
            _show(axes[1 + i, j], recs[j, i])
    axes[0, 0].set_ylabel("input", fontsize=7)
    for i in range(r):
        axes[1 + i, 0].set_ylabel(f"rec {i + 1}", fontsize=7)
    fig.suptitle("DiffOOD: inputs (top, with set and score) and their reconstructions", fontsize=9)
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
