"""The results file of ``benchmarks/cifar10_variants.py``: validation choice, test table against the baselines with
paired intervals, the paper's Table 3, rank correlations (markdown + JSON + one PNG)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from openood_diffood.evaluate.tables import format_table  # noqa: E402

from . import stats  # noqa: E402
from .cifar10_data import PRECISION_NAMES, Sets  # noqa: E402
from .common import results_header, write_json  # noqa: E402
from .suite import Suite  # noqa: E402
from .variants import Baselines, Changes, Variant  # noqa: E402

Family = Tuple[Changes, Baselines]
TOP = 12


@dataclass
class Study:
    """What the report is computed from (see ``benchmarks/cifar10_variants.py``)."""

    sets: Sets
    suite: Suite
    val: Family
    test: Family
    aurocs: Dict[Variant, stats.Estimate]
    costs: Dict[Variant, int]
    chosen: Variant
    current: Variant
    combos: Dict[str, Dict[Variant, stats.Estimate]]
    combined: Dict[str, Variant]
    id_pred: np.ndarray
    diffusion: object
    repeats: int
    test_current: bool = True

    def test_scores(self) -> Dict[str, Dict[str, np.ndarray]]:
        """Scores on the test sets (and the misclassified set) of every reported row, by row name."""
        names = [s.name for s in [*self.suite.test_sets(), self.sets.misclassified]]
        rows = {"chosen": self.chosen, **{f"chosen+{n}": v for n, v in self.combined.items()},
                **({"current": self.current} if self.test_current else {})}
        out = {f"{v.name}": v.scores(self.val, self.suite.id_val.name, self.test, names) for v in rows.values()}
        return {**out, **{m: self.test[1][m] for m in self.test[1]}}

    def cost(self, row: str) -> str:
        v = next((v for v in [self.chosen, self.current, *self.combined.values()] if v.name == row), None)
        return str(v.evaluations(self.repeats, self.diffusion)) if v else "1 (classifier pass)"


def _groups(suite: Suite) -> Dict[str, List[List[str]]]:
    near, far = [s.name for s in suite.near], [s.name for s in suite.far]
    return {"mean near/far": [near, far], "near": [near], "far": [far]}


def _table3(study: Study, s: Mapping[str, np.ndarray]) -> stats.Estimate:
    correct = study.id_pred == study.suite.id_test.labels
    return stats.metric("AUROC", s[study.suite.id_test.name][correct], s["misclassified"])


def test_table(study: Study, scores: Mapping[str, Mapping[str, np.ndarray]]) -> Tuple[str, dict]:
    id_name, groups = study.suite.id_test.name, _groups(study.suite)
    ood = [s.name for s in [*study.suite.near, *study.suite.far]]
    rows, payload = [], {}
    for name, s in scores.items():
        per_set = {o: stats.auroc(s[id_name], s[o]) for o in ood}
        near = stats.mean_of_means("AUROC", s, id_name, groups["near"], {k: np.arange(len(v)) for k, v in s.items()})
        far = stats.mean_of_means("AUROC", s, id_name, groups["far"], {k: np.arange(len(v)) for k, v in s.items()})
        mean = stats.grouped("AUROC", s, id_name, groups["mean near/far"])
        fpr = {g: np.mean([stats.fpr95(s[id_name], s[o]) for o in groups[g][0]]) for g in ("near", "far")}
        t3 = _table3(study, s)
        rows.append([name, *[f"{per_set[o]:.1f}" for o in ood], f"{near:.1f}", f"{far:.1f}", f"**{mean.cell()}**",
                     f"{fpr['near']:.1f}", f"{fpr['far']:.1f}", t3.cell(), study.cost(name)])
        payload[name] = {"auroc": per_set, "near": near, "far": far, "mean": mean.as_list(),
                         "fpr95": fpr, "table3_auroc": t3.as_list(), "evaluations": study.cost(name)}
    header = ["method", *ood, "near", "far", "mean near/far [95 % CI]", "near FPR@95", "far FPR@95",
              "Table 3 AUROC [95 % CI]", "network evaluations / image"]
    return format_table(header, rows, markdown=True), payload


def differences(study: Study, scores: Mapping[str, Mapping[str, np.ndarray]]) -> Tuple[str, dict]:
    """Paired differences of the chosen variant (and its combinations) against KNN, ViM and the earlier choice."""
    id_name, groups = study.suite.id_test.name, _groups(study.suite)
    pairs = [(study.chosen.name, b) for b in ("knn", "vim", *([study.current.name] if study.test_current else []))
             if b != study.chosen.name]
    pairs += [(v.name, v.combine) for v in study.combined.values()]
    rows, payload = [], {}
    for a, b in pairs:
        est = {g: stats.paired_difference("AUROC", scores[a], scores[b], id_name, gr) for g, gr in groups.items()}
        rows.append([f"{a} minus {b}", *[e.cell() for e in est.values()]])
        payload[f"{a} - {b}"] = {g: e.as_list() for g, e in est.items()}
    return format_table(["AUROC points [paired 95 % CI]", *groups], rows, markdown=True), payload


def correlations(study: Study, scores: Mapping[str, Mapping[str, np.ndarray]]) -> Tuple[str, dict]:
    """Spearman rank correlation of each DiffOOD row with each baseline, on the ID test set and each OOD set."""
    sets = [s.name for s in study.suite.test_sets()]
    ours = [n for n in scores if n.startswith("diffood")]
    rows, payload = [], {}
    for n in ours:
        for b in ("knn", "vim", "msp"):
            rho = {s: float(spearmanr(scores[n][s], scores[b][s])[0]) for s in sets}
            rows.append([n, b, *[f"{rho[s]:.2f}" for s in sets]])
            payload[f"{n} ~ {b}"] = rho
    return format_table(["DiffOOD score", "baseline", *sets], rows, markdown=True), payload


def validation_tables(study: Study) -> Tuple[List[str], dict]:
    top = sorted(study.aurocs, key=lambda v: -study.aurocs[v].value)[:TOP]
    if study.current not in top:
        top.append(study.current)
    sets = [study.suite.id_val.name, study.suite.val_near[0].name]
    knn = study.val[1].get("knn")

    def rho(v: Variant) -> List[str]:
        if knn is None:
            return []
        sc = v.scores(study.val, sets[0], study.val, sets)
        return [f"{spearmanr(sc[s], knn[s])[0]:.2f}" for s in sets]
    rows = [[("**{}**" if v == study.chosen else "{}").format(v.name), study.aurocs[v].cell(), study.costs[v],
             *rho(v)] for v in top]
    ts = sorted({v.timesteps[0] for v in study.aurocs if len(v.timesteps) == 1})
    ws = sorted({v.guidance for v in study.aurocs})
    spaces = list(dict.fromkeys(v.spaces[0] for v in study.aurocs if len(v.spaces) == 1))
    cell = lambda v: study.aurocs[v].cell() if v in study.aurocs else "-"  # noqa: E731
    grid = {sp: [[f"t = {t}", *[cell(Variant((t,), w, (sp,))) for w in ws]] for t in ts] for sp in spaces}
    combo_rows = [[v.name, e.cell()] for a in study.combos.values() for v, e in a.items()]
    lines = [f"Every candidate's validation AUROC (cifar10_val vs tin_val); the best {TOP} and the earlier choice "
             f"(of {len(study.aurocs)}):", "",
             format_table(["variant", "validation AUROC [95 % CI]", "evaluations / image",
                           *([f"Spearman with knn on {s}" for s in sets] if knn is not None else [])],
                          rows, markdown=True), ""]
    for sp, g in grid.items():
        lines += [f"t x w in {sp} (validation AUROC):", "",
                  format_table(["", *[f"w = {w:g}" for w in ws]], g, markdown=True), ""]
    lines += ["The chosen variant combined with each postprocessor, weight on validation:", "",
              format_table(["variant", "validation AUROC [95 % CI]"], combo_rows, markdown=True), ""]
    payload = {"candidates": {v.name: [*study.aurocs[v].as_list(), study.costs[v]] for v in study.aurocs},
               "chosen": study.chosen.name, "combined": {n: v.name for n, v in study.combined.items()},
               "combos": {v.name: e.as_list() for a in study.combos.values() for v, e in a.items()}}
    return lines, payload


def figure(path: Path, study: Study, test: Mapping[str, dict]) -> None:
    """Validation t x w heat map (logits) and the test mean near/far AUROC of every row with its interval."""
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.2), gridspec_kw={"width_ratios": [1, 1.6]})
    ts = sorted({v.timesteps[0] for v in study.aurocs if len(v.timesteps) == 1})
    ws = sorted({v.guidance for v in study.aurocs})
    grid = np.array([[study.aurocs[Variant((t,), w)].value if Variant((t,), w) in study.aurocs else np.nan
                      for w in ws] for t in ts])
    im = axes[0].imshow(grid, cmap="viridis", origin="lower", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            bold = Variant((ts[i],), ws[j]) == study.chosen
            axes[0].text(j, i, f"{value:.1f}" + ("\n(chosen)" if bold else ""), ha="center", va="center",
                         color="white" if value < np.nanmean(grid) else "black", fontsize=9,
                         fontweight="bold" if bold else "normal")
    axes[0].set_xticks(range(len(ws)), [f"{w:g}" for w in ws])
    axes[0].set_yticks(range(len(ts)), [str(t) for t in ts])
    axes[0].set(xlabel="guidance w", ylabel="timestep t")
    axes[0].set_title(f"validation AUROC, logits, R = {study.repeats}", fontsize=10)
    fig.colorbar(im, ax=axes[0], label="AUROC (%)")
    names = list(test)
    mean = np.array([test[n]["mean"] for n in names])
    y = np.arange(len(names))[::-1]
    axes[1].errorbar(mean[:, 0], y, xerr=[mean[:, 0] - mean[:, 1], mean[:, 2] - mean[:, 0]], fmt="o", capsize=3)
    axes[1].set_yticks(y, names, fontsize=7)
    axes[1].set_xlabel("test AUROC (%), mean of near and far, 95 % CI")
    axes[1].set_title("test sets (cifar100, tin | mnist)", fontsize=10)
    axes[1].grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, tag: str, study: Study, meta: Mapping) -> Path:
    scores = study.test_scores()
    table, test_payload = test_table(study, scores)
    diff, diff_payload = differences(study, scores)
    corr, corr_payload = correlations(study, scores)
    val_lines, val_payload = validation_tables(study)
    png = out / f"cifar10_variants_{tag}.png"
    out.mkdir(parents=True, exist_ok=True)
    sizes = ", ".join(f"{s.name} {len(s.images)}" for s in [*study.suite.test_sets(), study.sets.misclassified,
                                                            *study.suite.val_sets()])
    lines = [*results_header(f"DiffOOD variants on CIFAR-10 ({tag})", "cifar10_variants",
                             f"cifar10_variants_{tag}_findings.md", meta, png.name),
             f"Images per set: {sizes}. DiffOOD: DDIM stride 20, R = {study.repeats}, seed 0, round trips in "
             f"{PRECISION_NAMES[meta['precision']]}. Every choice on the validation sets only (cifar10_val vs "
             f"tin_val); several columns are z-normalised on cifar10_val and summed. Intervals: {stats.RESAMPLES} "
             "bootstrap resamples, percentile 95 %.", "",
             f"Validation choice: **{study.chosen.name}**; combinations: "
             + ", ".join(v.name for v in study.combined.values()) + ".", "",
             "## Test sets (AUROC %)", "", table, "",
             "Table 3: the correctly classified ID test images against the misclassified ones.", "",
             "## Paired differences on the test sets", "", diff, "",
             "## Rank correlation with the baselines (Spearman, test sets)", "", corr, "",
             "## Validation", "", *val_lines]
    md = out / f"cifar10_variants_{tag}.md"
    md.write_text("\n".join(lines))
    write_json(out / f"cifar10_variants_{tag}.json", {"meta": meta, "test": test_payload, "differences": diff_payload,
                                                      "correlations": corr_payload, "validation": val_payload})
    figure(png, study, test_payload)
    return md
