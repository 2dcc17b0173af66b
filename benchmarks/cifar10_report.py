"""Tables, figures and the results file of ``benchmarks/cifar10.py`` (markdown + JSON + PNGs)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple

import numpy as np

from openood_diffood import DiffOOD
from openood_diffood.evaluate.metrics import COLUMNS, MethodResult, method_table, ood_metrics
from openood_diffood.evaluate.tables import format_table

from . import stats
from .cifar10_analysis import analysis_section, validation_figure
from .cifar10_choices import best_candidate, best_space, improvement_candidates, space_rows
from .cifar10_data import PRECISION_NAMES, Sets
from .common import results_header, write_json
from .roundtrips import RoundTripStore
from .suite import SetScores, Suite, mean_scores
from .sweep import Sweep

Changes = Dict[str, Dict[str, np.ndarray]]


@dataclass
class Inputs:
    """Everything the report is computed from: ``changes[setting][set][space]`` (N, R) on the test sets (with
    the misclassified set), ``val_changes[setting]`` on the validation sets, ``baselines[method][set]``."""

    sets: Sets
    suite: Suite
    store: RoundTripStore
    engines: Dict[str, DiffOOD]
    sweep: Sweep
    changes: Dict[str, Changes]
    val_changes: Dict[str, Changes]
    baselines: Dict[str, SetScores]
    val_energy: SetScores
    id_pred: np.ndarray
    spaces: Sequence[str]

    def label(self, setting: str) -> str:
        s = self.engines[setting].settings
        return f"t = {s.timestep}, w = {s.guidance:g}"


def variants(inp: Inputs) -> Tuple[Dict[str, SetScores], Dict[str, SetScores], dict]:
    """(DiffOOD rows of the main table, every improvement candidate on the test sets, the validation choices)."""
    r = 4
    last = "chosen" if "chosen" in inp.changes else "paper"
    v_id, v_ood = inp.suite.id_val.name, inp.suite.val_near[0].name
    rows = {f"diffood (paper: {inp.label('paper')}, logit)": mean_scores(inp.changes["paper"], "logit", r)}
    if last == "chosen":
        rows[f"diffood (val-chosen {inp.label('chosen')}, logit)"] = mean_scores(inp.changes["chosen"], "logit", r)
    spaces = {k: best_space({sp: (mean_scores(v, sp, r)[v_id], mean_scores(v, sp, r)[v_ood])
                             for sp in inp.spaces}, "logit") for k, v in inp.val_changes.items()}
    space = spaces[last][0]
    if space != "logit":
        rows[f"diffood (val-chosen {inp.label(last)}, {space})"] = mean_scores(inp.changes[last], space, r)
    plain_val = mean_scores(inp.val_changes[last], space, r)
    val_pred = inp.store.get(inp.engines[last], inp.suite.id_val.images, compute=False).pred.numpy()
    val_ood_pred = inp.store.get(inp.engines[last], inp.suite.val_near[0].images, compute=False).pred.numpy()
    cands = improvement_candidates({"id": plain_val[v_id]}, inp.val_energy[v_id], val_pred, 10)
    chosen, kept, cand_val = best_candidate(cands, (plain_val[v_id], plain_val[v_ood]),
                                            (inp.val_energy[v_id], inp.val_energy[v_ood]), (val_pred, val_ood_pred))
    test_plain = mean_scores(inp.changes[last], space, r)
    energy = inp.baselines["ebo"]
    preds = {s.name: inp.store.get(inp.engines[last], s.images, compute=False).pred.numpy()
             for s in [*inp.suite.test_sets(), inp.sets.misclassified]}
    all_cands = {f"diffood {inp.label(last)}, {space}: {name}": {n: f(test_plain[n], energy[n], preds[n])
                                                                  for n in test_plain}
                 for name, f in cands.items()}
    if kept:
        rows[f"diffood {inp.label(last)}, {space}: {chosen} (val-chosen)"] = \
            all_cands[f"diffood {inp.label(last)}, {space}: {chosen}"]
    choices = {"space": space, "space_val": {k: v[1] for k, v in spaces.items()}, "candidate": chosen,
               "kept": kept, "candidates_val": cand_val, "plain_val": stats.metric("AUROC", plain_val[v_id],
                                                                                     plain_val[v_ood])}
    return rows, all_cands, choices


def results_of(inp: Inputs, scores: Mapping[str, SetScores]) -> Dict[str, MethodResult]:
    id_name, (near, far) = inp.suite.test_groups()
    acc = float((inp.id_pred == inp.suite.id_test.labels).mean())
    return {m: method_table(m, sc[id_name], {"near": {n: sc[n] for n in near}, "far": {n: sc[n] for n in far}},
                            acc) for m, sc in scores.items()}


def summary_table(inp: Inputs, scores: Mapping[str, SetScores], first: str = "method") -> str:
    id_name, groups = inp.suite.test_groups()
    results = results_of(inp, scores)
    names = [n for g in groups for n in g]
    rows = []
    for m, r in results.items():
        mean = stats.grouped("AUROC", scores[m], id_name, groups)
        rows.append([m, *[f"{r.rows[n]['AUROC']:.1f}" for n in names], f"{r.rows['nearood']['AUROC']:.1f}",
                     f"{r.rows['farood']['AUROC']:.1f}", f"**{mean.cell()}**", f"{r.rows['nearood']['FPR@95']:.1f}",
                     f"{r.rows['farood']['FPR@95']:.1f}", f"{r.rows[names[0]]['ACC']:.1f}"])
    return format_table([first, *names, "near", "far", "mean near/far [95 % CI]", "near FPR@95", "far FPR@95",
                         "ID acc"], rows, markdown=True)


def losses(inp: Inputs, scores: Mapping[str, SetScores], method: str) -> List[str]:
    """Where ``method`` loses to a baseline, set by set and on the near / far means."""
    results = results_of(inp, scores)
    lines = []
    for row in results[method].rows:
        mine = results[method].rows[row]["AUROC"]
        better = [f"{m} {r.rows[row]['AUROC']:.1f}" for m, r in results.items()
                  if not m.startswith("diffood") and r.rows[row]["AUROC"] > mine]
        lines.append(f"- on {row}, {method} ({mine:.1f}) " + ("loses to " + ", ".join(better) if better
                                                              else "beats every baseline"))
    return lines


def chosen_minus_paper(inp: Inputs, rows: Mapping[str, SetScores]) -> Dict[str, stats.Estimate]:
    """The validation-chosen setting's test AUROC minus the paper's (mean near/far, near, far), paired bootstrap
    intervals; empty when the sweep chose the paper's setting."""
    if "chosen" not in inp.changes:
        return {}
    paper, chosen = list(rows.values())[:2]
    id_name, groups = inp.suite.test_groups()
    return {what: stats.paired_difference("AUROC", chosen, paper, id_name, g)
            for what, g in (("mean near/far", groups), ("near", groups[:1]), ("far", groups[1:]))}


def difference_line(inp: Inputs, diff: Mapping[str, stats.Estimate]) -> List[str]:
    """The markdown line of :func:`chosen_minus_paper` (none when it is empty)."""
    if not diff:
        return []
    return [f"Validation-chosen ({inp.label('chosen')}) minus the paper's setting ({inp.label('paper')}) on the "
            "test sets, AUROC points [paired 95 % CI, the same resampled images for both]: "
            + "; ".join(f"{k} {v.cell(1)}" for k, v in diff.items()) + ".", ""]


def table3(inp: Inputs, scores: Mapping[str, SetScores]) -> Tuple[str, dict]:
    """Correctly classified ID test images against the misclassified ones."""
    correct = inp.id_pred == inp.suite.id_test.labels
    id_name = inp.suite.id_test.name
    out, rows = {}, []
    for m, sc in scores.items():
        i, o = sc[id_name][correct], sc["misclassified"]
        metrics = {k: 100 * v for k, v in ood_metrics(i, o).items()}
        out[m] = {**metrics, "AUROC_CI": stats.metric("AUROC", i, o).as_list()}
        rows.append([m, stats.metric("AUROC", i, o).cell(), *[f"{metrics[k]:.1f}"
                                                               for k in ("FPR@95", "AUPR_IN", "AUPR_OUT")]])
    text = format_table(["method", "AUROC [95 % CI]", "FPR@95", "AUPR_IN", "AUPR_OUT"], rows, markdown=True)
    return (f"The {int(correct.sum())} correctly classified of the {len(correct)} ID test images against "
            f"{len(inp.sets.misclassified.images)} misclassified ID test images.\n\n" + text), out


def openood_tables(results: Mapping[str, MethodResult]) -> str:
    return "\n\n".join(f"**{m}**\n\n" + format_table(["set", *COLUMNS], [[row, *[f"{v[k]:.2f}" for k in COLUMNS]]
                                                                          for row, v in r.rows.items()],
                                                      markdown=True) for m, r in results.items())


def write_report(out: Path, tag: str, inp: Inputs, meta: dict) -> Path:
    """Build every table and figure; returns the markdown path."""
    fig_dir = out / f"cifar10_{tag}"
    fig_dir.mkdir(parents=True, exist_ok=True)
    rows, cands, choices = variants(inp)
    diff = chosen_minus_paper(inp, rows)
    scores = {**rows, **inp.baselines}
    plain = next(iter(rows))
    t3_text, t3 = table3(inp, scores)
    validation_figure(fig_dir / "validation.png", inp.sweep, choices["space_val"], inp.spaces,
                      {k: inp.label(k) for k in inp.val_changes}, repeats_val(inp))
    analysis_md, analysis = analysis_section(inp, scores, plain, fig_dir)
    sizes = ", ".join(f"{s.name} {len(s.images)}" for s in [*inp.suite.test_sets(), inp.sets.misclassified,
                                                            *inp.suite.val_sets()])
    precision = inp.engines["paper"].settings.precision
    cand_lines = ", ".join(f"{k} {v.value:.1f}" for k, v in choices["candidates_val"].items())
    lines = [
        *results_header(f"CIFAR-10 on the shared real data ({tag})", "cifar10", f"cifar10_{tag}_findings.md", meta,
                        f"{fig_dir.name}/validation.png"),
        f"Images per set: {sizes}; ViM / KNN / ReAct fitted on {len(inp.sets.fit.images)} images of "
        f"cifar10_train_10k. DiffOOD: DDIM stride 20, R = 4, seed 0, round trips in **{PRECISION_NAMES[precision]}** "
        "(bf16 is the package's default on GPU; on 40 CIFAR images its scores had Spearman 0.9996 with fp32). "
        "Validation (every choice): "
        "cifar10_val (a fixed hold-out of 1,000 cifar10_test images, outside the test pool) and tin_val (Tiny "
        f"ImageNet's openood_cifar10_val_tin). Intervals: {stats.RESAMPLES} bootstrap resamples, percentile 95 %.",
        "", "## OpenOOD table (AUROC %, test sets)", "", summary_table(inp, scores), "",
        *difference_line(inp, diff),
        "Where DiffOOD loses:", "", *[x for m in rows for x in losses(inp, scores, m)], "",
        "## Paper's Table 3: misclassified ID test images as the OOD set", "", t3_text, "",
        "## Choices on validation", "",
        "Joint sweep of t and w (AUROC cifar10_val vs tin_val, DDIM-20, R = 4, logits):", "",
        format_table(inp.sweep.header(), inp.sweep.rows(), markdown=True), "",
        "Feature space (validation AUROC at each setting):", "",
        format_table(["space", *[inp.label(k) for k in choices["space_val"]]],
                     space_rows(choices["space_val"], inp.spaces), markdown=True), "",
        f"Chosen: **{choices['space']}**. Improvements over the plain change in that space, each fitted on "
        f"cifar10_val only (validation AUROC; plain {choices['plain_val'].value:.1f}): {cand_lines}. " +
        (f"Chosen: **{choices['candidate']}**." if choices["kept"] else "None beats the plain change: none is used."),
        "", "Every candidate on the test sets (reported whether chosen or not):", "",
        summary_table(inp, {**cands, **{k: v for k, v in inp.baselines.items() if k == "knn"}}, "candidate"), "",
        *analysis_md, "",
        "## OpenOOD's full tables", "", openood_tables(results_of(inp, scores)), ""]
    path = out / f"cifar10_{tag}.md"
    path.write_text("\n".join(lines))
    write_json(out / f"cifar10_{tag}.json", {
        "meta": meta, "settings": {k: e.settings.as_dict() for k, e in inp.engines.items()},
        "results": {m: r.rows for m, r in results_of(inp, scores).items()}, "table3": t3,
        "chosen_minus_paper": {k: v.as_list() for k, v in diff.items()},
        "candidates_test": {m: r.rows for m, r in results_of(inp, cands).items()},
        "choices": {"space": choices["space"], "candidate": choices["candidate"], "kept": choices["kept"],
                    "candidates_val": {k: v.as_list() for k, v in choices["candidates_val"].items()},
                    "space_val": {k: {sp: e.as_list() for sp, e in v.items()}
                                  for k, v in choices["space_val"].items()}},
        "sweep": inp.sweep.as_dict(), "repeats_val": repeats_val(inp), "analysis": analysis})
    print("\n".join(lines[:40]))
    return path


def repeats_val(inp: Inputs) -> Dict[str, Dict[int, List[float]]]:
    """Validation AUROC of R = 1, 2, 4 (the first repeats of the R = 4 round trips) at each setting."""
    v_id, v_ood = inp.suite.id_val.name, inp.suite.val_near[0].name
    return {inp.label(k): {r: list(stats.metric("AUROC", *(mean_scores(v, "logit", r)[n] for n in (v_id, v_ood)))
                                   .as_list()) for r in (1, 2, 4)} for k, v in inp.val_changes.items()}
