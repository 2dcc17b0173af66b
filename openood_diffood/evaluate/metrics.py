"""OOD metrics identical to OpenOOD v1.5's ``compute_all_metrics`` (``openood/evaluators/metrics.py``), tables and
result files. Scores are higher = more OOD (OpenOOD's ``conf`` is ``-score``); OOD is the positive class for
``FPR@95`` and ``AUROC``, ``AUPR_IN`` / ``AUPR_OUT`` take ID / OOD as positive; tables give percentages."""
from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
from sklearn import metrics as skm

from ..errors import ConfigError
from .tables import format_table

METRICS = ("FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT")
COLUMNS = METRICS + ("ACC",)
SPLITS = ("near", "far")


def _check_scores(name: str, score: np.ndarray) -> np.ndarray:
    score = np.asarray(score, dtype=np.float64).ravel()
    if score.size == 0:
        raise ConfigError(f"{name}: no scores (the set is empty)")
    if not np.isfinite(score).all():
        raise ConfigError(f"{name}: {int((~np.isfinite(score)).sum())} scores are NaN or inf")
    return score


def ood_metrics(id_score: np.ndarray, ood_score: np.ndarray, recall: float = 0.95) -> Dict[str, float]:
    """FPR@95, AUROC, AUPR_IN and AUPR_OUT (fractions in [0, 1]) for ID vs OOD scores (higher = more OOD)."""
    id_score, ood_score = _check_scores("ID", id_score), _check_scores("OOD", ood_score)
    score = np.concatenate([id_score, ood_score])
    is_ood = np.concatenate([np.zeros(id_score.size, int), np.ones(ood_score.size, int)])
    fpr, tpr, _ = skm.roc_curve(is_ood, score)
    precision_in, recall_in, _ = skm.precision_recall_curve(1 - is_ood, -score)
    precision_out, recall_out, _ = skm.precision_recall_curve(is_ood, score)
    return {
        "FPR@95": float(fpr[np.argmax(tpr >= recall)]),
        "AUROC": float(skm.auc(fpr, tpr)),
        "AUPR_IN": float(skm.auc(recall_in, precision_in)),
        "AUPR_OUT": float(skm.auc(recall_out, precision_out)),
    }


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions."""
    pred, labels = np.asarray(pred).ravel(), np.asarray(labels).ravel()
    if pred.shape != labels.shape or pred.size == 0:
        raise ConfigError(f"accuracy needs as many predictions as labels (got {pred.size} and {labels.size})")
    return float((pred == labels).mean())


@dataclass
class MethodResult:
    """One method's table: ``rows[name] = {metric: percent}`` for each OOD set, then ``nearood`` / ``farood``."""

    method: str
    rows: Dict[str, Dict[str, float]]
    splits: Dict[str, str] = field(default_factory=dict)  # row name -> "near" / "far"


def method_table(method: str, id_score: np.ndarray, ood_scores: Mapping[str, Mapping[str, np.ndarray]],
                 id_accuracy: float) -> MethodResult:
    """Per-set metrics (percent) plus the near / far means, as the rows of OpenOOD's table.
    ``ood_scores`` is ``{"near": {name: scores}, "far": {name: scores}}`` (either split may be empty)."""
    rows: Dict[str, Dict[str, float]] = {}
    splits: Dict[str, str] = {}
    for split in SPLITS:
        sets = ood_scores.get(split) or {}
        per_set = []
        for name, score in sets.items():
            m = {k: 100 * v for k, v in ood_metrics(id_score, score).items()}
            m["ACC"] = 100 * id_accuracy
            rows[name], splits[name] = m, split
            per_set.append(m)
        if per_set:
            rows[f"{split}ood"] = {k: float(np.mean([m[k] for m in per_set])) for k in COLUMNS}
            splits[f"{split}ood"] = split
    if not rows:
        raise ConfigError("no OOD sets to evaluate: give at least one near or far OOD set")
    return MethodResult(method, rows, splits)


def aggregate(runs: Sequence[MethodResult]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Mean and std over runs (e.g. OpenOOD's s0/s1/s2): ``{row: {metric: {"mean": .., "std": ..}}}``."""
    first = runs[0]
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for row in first.rows:
        out[row] = {}
        for k in COLUMNS:
            values = np.array([r.rows[row][k] for r in runs])
            out[row][k] = {"mean": float(values.mean()), "std": float(values.std())}
    return out


def _fmt(cell: Dict[str, float], runs: int) -> str:
    return f"{cell['mean']:.2f}" if runs == 1 else f"{cell['mean']:.2f} \u00b1 {cell['std']:.2f}"


def format_method_table(method: str, runs: Sequence[MethodResult]) -> str:
    """OpenOOD's per-method table (rows: OOD sets, nearood, farood; columns: FPR@95 .. ACC) as text."""
    agg = aggregate(runs)
    title = f"== {method}" + (f" (mean \u00b1 std over {len(runs)} runs)" if len(runs) > 1 else "")
    rows = [[row, *[_fmt(agg[row][k], len(runs)) for k in COLUMNS]] for row in agg]
    return title + "\n" + format_table(["", *COLUMNS], rows)


def format_summary(results: Mapping[str, Sequence[MethodResult]]) -> str:
    """One line per method: near / far AUROC and FPR@95 means and ID accuracy (percent)."""
    cols = [("near AUROC", "nearood", "AUROC"), ("far AUROC", "farood", "AUROC"),
            ("near FPR@95", "nearood", "FPR@95"), ("far FPR@95", "farood", "FPR@95"), ("ACC", None, "ACC")]
    rows = []
    for method, runs in results.items():
        agg = aggregate(runs)
        any_row = next(iter(agg))
        rows.append([method, *[_fmt(agg[row or any_row][metric], len(runs)) if (row or any_row) in agg else "-"
                               for _, row, metric in cols]])
    return format_table(["method", *(c[0] for c in cols)], rows)


def write_results(out_dir: str, results: Mapping[str, Sequence[MethodResult]],
                  run_names: Sequence[str], meta: Optional[dict] = None) -> List[str]:
    """Write ``metrics.csv`` (one row per method, run and set; plus mean rows across runs) and ``metrics.json``.
    Returns the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    csv_path, json_path = os.path.join(out_dir, "metrics.csv"), os.path.join(out_dir, "metrics.json")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "run", "split", "dataset", *COLUMNS])
        for method, runs in results.items():
            for run_name, res in zip(run_names, runs):
                for row, m in res.rows.items():
                    w.writerow([method, run_name, res.splits[row], row, *(f"{m[k]:.4f}" for k in COLUMNS)])
            if len(runs) > 1:
                for row, agg in aggregate(runs).items():
                    w.writerow([method, "mean", runs[0].splits[row], row,
                                *(f"{agg[k]['mean']:.4f}" for k in COLUMNS)])
    payload = {
        "metrics_in_percent": True,
        "fpr_definition": "OpenOOD v1.5: fraction of ID flagged as OOD when 95% of OOD is detected",
        "runs": list(run_names),
        "methods": {m: {"per_run": {n: r.rows for n, r in zip(run_names, runs)}, "aggregate": aggregate(runs),
                        "splits": runs[0].splits}
                    for m, runs in results.items()},
        **(meta or {}),
    }
    with open(json_path, "w") as f:
        json.dump(payload, f, indent=2, default=_json_default)
    return [csv_path, json_path]


def write_openood_csv(path: str, runs: Sequence[MethodResult], spread: bool = True) -> str:
    """OpenOOD's ``--save-csv`` file for one method, byte for byte as ``scripts/eval_ood.py`` writes it: cells
    ``mean \u00b1 std`` over the runs (``spread=False``: the mean alone, as ``eval_ood_imagenet.py``). The one
    writer of that file (``eval`` and ``python -m openood.main`` both use it); see :func:`write_keeping_previous`."""
    agg = aggregate(runs)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["", *COLUMNS])
    for row, cell in agg.items():
        w.writerow([row, *(f"{cell[k]['mean']:.2f}" + (f" \u00b1 {cell[k]['std']:.2f}" if spread else "")
                           for k in COLUMNS)])
    return write_keeping_previous(path, text.getvalue())


def write_keeping_previous(path: str, text: str) -> str:
    """Write ``text`` to ``path``; a different file already there is first renamed to ``<path>.<n>`` (the first
    free n), and one warning line says so, so no result is ever silently destroyed."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    data = text.encode("utf-8")
    if os.path.isfile(path):
        with open(path, "rb") as f:
            if f.read() == data:
                return path
        backup = next(f"{path}.{n}" for n in itertools.count(1) if not os.path.exists(f"{path}.{n}"))
        os.replace(path, backup)
        print(f"warning: {path} held another result: kept as {backup}", file=sys.stderr, flush=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _json_default(value):
    """NumPy numbers as numbers; anything else (paths) as text."""
    return value.item() if isinstance(value, np.generic) else str(value)
