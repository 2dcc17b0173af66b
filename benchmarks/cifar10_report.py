"""Tables, plots and findings of ``benchmarks/cifar10.py`` (markdown + JSON + PNGs)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from common import bootstrap_std  # noqa: E402
from openood_diffood import DiffOODSettings, __version__  # noqa: E402
from openood_diffood.calibration import Calibration  # noqa: E402
from openood_diffood.evaluation import RunScores  # noqa: E402
from openood_diffood.metrics import COLUMNS, MethodResult, accuracy, method_table, ood_metrics  # noqa: E402
from openood_diffood.plots import reconstruction_grid, score_histograms  # noqa: E402
from reconstructions import settings_label  # noqa: E402

Changes = Callable[[DiffOODSettings, object, Sequence[str]], Dict[str, np.ndarray]]
PLAIN = "diffood"


def _auroc(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    return 100 * ood_metrics(id_s, ood_s)["AUROC"]


def _cell(id_s: np.ndarray, ood_s: np.ndarray) -> str:
    return f"{_auroc(id_s, ood_s):.1f} ± {100 * bootstrap_std(id_s, ood_s, rounds=200):.1f}"


# ---------------------------------------------------------------------------------------------- improvements
def _rankfit(ref: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    ref = np.sort(ref)
    return lambda v: np.searchsorted(ref, v, side="right") / len(ref)


def _per_class_fit(ref: np.ndarray, pred: np.ndarray, classes: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Change minus its predicted class's ID-validation mean, over the pooled within-class std."""
    mu = np.array([ref[pred == c].mean() if (pred == c).any() else ref.mean() for c in range(classes)])
    sd = float(np.sqrt(np.mean((ref - mu[pred]) ** 2))) + 1e-12
    return lambda v, p: (v - mu[p]) / sd


def improvement_candidates(val_change: Mapping[str, np.ndarray], val_energy: np.ndarray, val_pred: np.ndarray,
                           classes: int) -> Dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]:
    """Score functions f(change, energy, pred) fitted on the ID validation set only."""
    c, e = val_change["id"], val_energy
    z = Calibration.fit(torch.from_numpy(c), torch.from_numpy(e))  # the library's combine: energy
    rc, re_ = _rankfit(c), _rankfit(e)
    per_class = _per_class_fit(c, val_pred, classes)
    return {
        "change + energy (z on ID val)": lambda ch, en, p: z.combine(torch.from_numpy(ch),
                                                                     torch.from_numpy(en)).numpy(),
        "change + energy (rank on ID val)": lambda ch, en, p: rc(ch) + re_(en),
        "change, per-class z (ID val)": lambda ch, en, p: per_class(ch, p),
    }


# ---------------------------------------------------------------------------------------------- formatting
def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _summary_table(first: str, results: Mapping[str, MethodResult], near: Sequence[str], far: Sequence[str]) -> str:
    return _md_table([first, *near, *far, "near", "far", "mean near/far", "near FPR@95", "far FPR@95", "ID acc"],
                     _summary_rows(results, near, far))


def _summary_rows(results: Mapping[str, MethodResult], near: Sequence[str], far: Sequence[str]) -> List[List[str]]:
    rows = []
    for m, r in results.items():
        au = [r.rows[s]["AUROC"] for s in [*near, *far]]
        mean = _mean_auroc(r)
        rows.append([m, *[f"{a:.2f}" for a in au], f"{r.rows['nearood']['AUROC']:.2f}",
                     f"{r.rows['farood']['AUROC']:.2f}", f"**{mean:.2f}**", f"{r.rows['nearood']['FPR@95']:.2f}",
                     f"{r.rows['farood']['FPR@95']:.2f}", f"{next(iter(r.rows.values()))['ACC']:.2f}"])
    return rows


def _openood_tables(results: Mapping[str, MethodResult]) -> str:
    out = []
    for m, r in results.items():
        out.append(f"**{m}**\n\n" + _md_table(["set", *COLUMNS],
                                               [[row, *[f"{v[k]:.2f}" for k in COLUMNS]] for row, v in r.rows.items()]))
    return "\n\n".join(out)


def _mean_auroc(r: MethodResult) -> float:
    return (r.rows["nearood"]["AUROC"] + r.rows["farood"]["AUROC"]) / 2


def _kept_line(results: Mapping[str, MethodResult], plain: str, kept: bool) -> List[str]:
    if not kept:
        return []
    improved = next(m for m in results if m.endswith("(val-chosen)") and ":" in m)
    a, b = _mean_auroc(results[improved]), _mean_auroc(results[plain])
    verdict = "raises" if a > b else "does not raise"
    return [f"On the test sets the validation-chosen improvement {verdict} the mean near/far AUROC: {a:.2f} against "
            f"{b:.2f} for the plain method" + ("." if a > b else "; so it is not kept.")]


def _losses(results: Mapping[str, MethodResult], method: str, rows: Sequence[str]) -> List[str]:
    lines = []
    for row in rows:
        mine = results[method].rows[row]["AUROC"]
        better = [f"{m} {r.rows[row]['AUROC']:.1f}" for m, r in results.items()
                  if not m.startswith(PLAIN) and r.rows[row]["AUROC"] > mine]
        if better:
            lines.append(f"- on {row}, {method} ({mine:.1f}) loses to " + ", ".join(better))
        else:
            lines.append(f"- on {row}, {method} ({mine:.1f}) beats every baseline")
    return lines


# ---------------------------------------------------------------------------------------------- plots
def _ablation_plot(path: Path, ablations: Mapping[str, List[Tuple[str, float, float]]]) -> None:
    fig, axes = plt.subplots(1, len(ablations), figsize=(3.6 * len(ablations), 3.0), squeeze=False)
    for ax, (name, points) in zip(axes[0], ablations.items()):
        labels, au, sd = zip(*points)
        ax.errorbar(range(len(au)), au, yerr=sd, marker="o", capsize=3)
        ax.set_xticks(range(len(au)), labels, rotation=45 if name == "feature space" else 0, fontsize=8)
        ax.set_title(name, fontsize=10)
        ax.set_ylabel("AUROC (%) ID val vs TIN val", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pred_histogram(path: Path, preds: Mapping[str, np.ndarray], classes: Sequence[str]) -> None:
    fig, ax = plt.subplots(figsize=(7, 3))
    width = 0.8 / len(preds)
    for i, (name, p) in enumerate(preds.items()):
        ax.bar(np.arange(len(classes)) + i * width, np.bincount(p, minlength=len(classes)) / len(p), width,
               label=name)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30, fontsize=8)
    ax.set_ylabel("share of the set")
    ax.set_title("classifier's predicted CIFAR-10 class", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


# ---------------------------------------------------------------------------------------------- report
def write_report(args, sets, main: DiffOODSettings, plan, changes: Changes,
                 recs: Mapping[Tuple[str, str], Tuple[np.ndarray, np.ndarray]], base: RunScores,
                 val_base: RunScores, meta: dict) -> Path:
    """Build every table and plot; returns the markdown path."""
    from cifar10 import SPACES  # the benchmark's list of spaces

    out_dir = args.out / f"cifar10_{args.tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    r_main = main.repeats
    val_settings = main.replace(repeats=max(args.ablation_repeats, r_main))
    key = lambda s: json.dumps(s.as_dict(), sort_keys=True)  # noqa: E731  (the benchmark's engine key)
    near, far = [s.name for s in sets.near], [s.name for s in sets.far]
    test_named = {s.name: s for s in sets.test_sets()}

    # -- DiffOOD changes: every space, every repeat
    test_ch = {name: changes(main, s, SPACES) for name, s in test_named.items()}
    val_ch = {role: changes(val_settings, s, SPACES) for role, s in (("id", sets.id_val), ("ood", sets.ood_val))}
    pred = {name: recs[key(main), name][1] for name in test_named}
    val_pred = recs[key(val_settings), sets.id_val.name][1]

    def score(ch: Mapping[str, np.ndarray], space: str, r: int = r_main) -> np.ndarray:
        return ch[space][:, :r].mean(1)

    # -- choices on validation: feature space, then an improvement
    space_val = {sp: _auroc(score(val_ch["id"], sp), score(val_ch["ood"], sp)) for sp in SPACES}
    best_space = max(SPACES, key=lambda sp: (space_val[sp], sp == main.space))  # ties: the paper's space
    id_name = sets.id_test.name
    energy = {id_name: base.id["ebo"], **{n: s for sp in base.ood["ebo"].values() for n, s in sp.items()}}
    val_energy = {"id": val_base.id["ebo"], "ood": val_base.ood["ebo"]["near"][sets.ood_val.name]}
    cands = improvement_candidates({"id": score(val_ch["id"], best_space)}, val_energy["id"], val_pred, 10)
    val_ood_pred = recs[key(val_settings), sets.ood_val.name][1]
    cand_val = {name: _auroc(f(score(val_ch["id"], best_space), val_energy["id"], val_pred),
                             f(score(val_ch["ood"], best_space), val_energy["ood"], val_ood_pred))
                for name, f in cands.items()}
    chosen = max(cand_val, key=cand_val.get)
    improve = cands[chosen] if cand_val[chosen] > space_val[best_space] else None

    # -- test scores of the DiffOOD variants
    variants: Dict[str, Dict[str, np.ndarray]] = {
        f"{PLAIN} ({main.space}, paper)": {n: score(test_ch[n], main.space) for n in test_named}}
    if best_space != main.space:
        variants[f"{PLAIN} ({best_space}, val-chosen)"] = {n: score(test_ch[n], best_space) for n in test_named}
    all_cands = {f"{PLAIN} {best_space}: {name}": {n: f(score(test_ch[n], best_space), energy[n], pred[n])
                                                  for n in test_named} for name, f in cands.items()}
    if improve is not None:
        variants[f"{PLAIN} {best_space}: {chosen} (val-chosen)"] = all_cands[f"{PLAIN} {best_space}: {chosen}"]

    acc = accuracy(base.id_pred, base.id_labels)
    results: Dict[str, MethodResult] = {}
    table3: Dict[str, Dict[str, float]] = {}
    correct = base.id_pred == base.id_labels
    methods_scores = {**variants, **{m: {id_name: base.id[m], **{n: s for sp in base.ood[m].values()
                                                                  for n, s in sp.items()}} for m in base.id}}
    for m, sc in methods_scores.items():
        results[m] = method_table(m, sc[id_name], {"near": {n: sc[n] for n in near}, "far": {n: sc[n] for n in far}},
                                  acc)
        table3[m] = {k: 100 * v for k, v in ood_metrics(sc[id_name][correct], sc["misclassified"]).items()}
    cand_results = {m: method_table(m, sc[id_name], {"near": {n: sc[n] for n in near}, "far": {n: sc[n] for n in far}},
                                    acc) for m, sc in all_cands.items()}

    # -- ablations on validation (AUROC ID val vs TIN val)
    def val_point(settings: DiffOODSettings) -> Tuple[float, float]:
        if settings.replace(repeats=val_settings.repeats) == val_settings:
            i, o = score(val_ch["id"], main.space, 1), score(val_ch["ood"], main.space, 1)
        else:
            i, o = (changes(settings, s, [main.space])[main.space].mean(1) for s in (sets.id_val, sets.ood_val))
        return _auroc(i, o), 100 * bootstrap_std(i, o, rounds=200)

    def pt(label: str, i: np.ndarray, o: np.ndarray) -> Tuple[str, float, float]:
        return label, _auroc(i, o), 100 * bootstrap_std(i, o, rounds=200)

    ablations: Dict[str, List[Tuple[str, float, float]]] = {
        "feature space": [pt(sp, score(val_ch["id"], sp), score(val_ch["ood"], sp)) for sp in SPACES],
        "repeats R": [pt(str(r), score(val_ch["id"], main.space, r), score(val_ch["ood"], main.space, r))
                      for r in (1, 2, 4, 8, 16) if r <= val_settings.repeats]}
    if args.ablations:
        one = main.replace(repeats=1)
        ablations["guidance w"] = [("uncond." if w == 0 else f"{w:g}", *val_point(one.replace(guidance=w)))
                                   for w in args.guidances]
        ablations["timestep t"] = [(str(t), *val_point(one.replace(timestep=t, stride=max(1, t * main.stride //
                                                                                            main.timestep))))
                                   for t in args.timesteps]
    _ablation_plot(out_dir / "ablations.png", ablations)

    # -- understanding the far-OOD case: predictions, flips, spaces per set, histograms, reconstructions
    analysis = _analysis(args, sets, main, test_ch, pred, recs, key, results, methods_scores, out_dir)

    md = _markdown(args, sets, main, val_settings, meta, results, table3, int(correct.sum()), space_val, best_space,
                   cand_val, chosen, improve is not None, cand_results, ablations, analysis, near, far, out_dir)
    path = args.out / f"cifar10_{args.tag}.md"
    path.write_text(md)
    payload = {"meta": meta, "settings": main.as_dict(), "n": args.n, "val_n": args.val_n,
               "results": {m: r.rows for m, r in results.items()}, "table3": table3,
               "candidates_test": {m: r.rows for m, r in cand_results.items()}, "candidates_val": cand_val,
               "space_val": space_val, "ablations": ablations, "analysis": analysis}
    (args.out / f"cifar10_{args.tag}.json").write_text(json.dumps(payload, indent=1, default=float))
    print(md)
    return path


@torch.no_grad()
def _analysis(args, sets, main, test_ch, pred, recs, key, results, methods_scores, out_dir: Path) -> dict:
    from cifar10 import SPACES

    id_name = sets.id_test.name
    names = [id_name, *[s.name for s in sets.near], *[s.name for s in sets.far]]
    spaces = {sp: {n: _auroc(test_ch[id_name][sp].mean(1), test_ch[n][sp].mean(1)) for n in names[1:]}
              for sp in SPACES}
    mean_change = {sp: {n: float(test_ch[n][sp].mean()) for n in names} for sp in SPACES}
    _pred_histogram(out_dir / "predicted_classes.png", {n: pred[n] for n in names}, CIFAR10_CLASSES)
    pred_share = {n: (np.bincount(pred[n], minlength=10) / len(pred[n])).round(3).tolist() for n in names}
    plain = next(iter(methods_scores))
    score_histograms(str(out_dir), {m: methods_scores[m][id_name] for m in (plain, "msp", "knn")},
                     {n: {m: methods_scores[m][n] for m in (plain, "msp", "knn")} for n in names[1:]})
    # reconstructions: 3 ID, 3 CIFAR-100, 3 TIN, then the 4 most ID-looking and 2 most OOD-looking MNIST digits
    grid_idx = [(id_name, [0, 1, 2]), (names[1], [0, 1, 2]), (names[2], [0, 1, 2])]
    far_scores = methods_scores[plain][names[-1]]
    order = np.argsort(far_scores)
    grid_idx.append((names[-1], [*order[:4].tolist(), *order[-2:].tolist()]))
    all_sets = {s.name: s for s in sets.test_sets()}
    imgs, rr, sc, titles = [], [], [], []
    for n, idx in grid_idx:
        idx = [i for i in idx if i < len(all_sets[n].images)]
        imgs.append(torch.from_numpy(all_sets[n].images[idx]).permute(0, 3, 1, 2).float() / 255)
        rr.append(torch.from_numpy(recs[key(main), n][0][idx]))
        sc += [float(methods_scores[plain][n][i]) for i in idx]
        titles += [f"{n} ({CIFAR10_CLASSES[pred[n][i]]})" for i in idx]
    reconstruction_grid(str(out_dir / "reconstructions.png"), torch.cat(imgs), torch.cat(rr), sc, titles)
    msp = {n: float(np.mean(-methods_scores["msp"][n])) for n in names}
    return {"auroc_by_space_test": spaces, "mean_change_by_space": mean_change, "predicted_class_share": pred_share,
            "mean_max_softmax": msp}


def _markdown(args, sets, main, val_settings, meta, results, table3, n_correct, space_val, best_space, cand_val,
              chosen, kept, cand_results, ablations, analysis, near, far, out_dir) -> str:
    rel = out_dir.name
    plain = next(iter(results))
    n_sets = {s.name: len(s.images) for s in [*sets.test_sets(), *sets.val_sets()]}
    lines = [
        f"# CIFAR-10 on the shared real data ({meta['device']})",
        "",
        f"Written by `python benchmarks/cifar10.py {' '.join(meta.get('argv', []))}` (openood-diffood {__version__}, "
        f"torch {meta['torch']}, {meta['machine']}). Wall time: {meta['wall_seconds_total'] / 60:.1f} min in all, "
        f"of which {meta['wall_seconds_diffusion'] / 60:.1f} min for the diffusion round trips not already stored "
        f"and {meta['wall_seconds_baselines']:.0f} s for the baselines.",
        "",
        "Images per set: " + ", ".join(f"{k} {v}" for k, v in n_sets.items()) +
        f"; ViM / KNN / ReAct fitted on {len(sets.fit.images)} images of cifar10_train_10k. Seed {args.seed}.",
        f"DiffOOD: {settings_label(main)}, space {main.space}. The paper's CIFAR settings are t = 300, w = 3, R = 4, "
        "logits with DDIM stride 20 (15 network evaluations per repeat); PLMS stride 75 reaches t = 0 in 5 "
        "evaluations and ranked images like DDIM-20 (Spearman 0.98, benchmarks/results/solvers_cpu.md).",
        "Validation (every choice below): cifar10_val = a fixed hold-out of 1,000 cifar10_test images, excluded from "
        "the test pool, and tin_val = Tiny ImageNet's openood_cifar10_val_tin. "
        f"The validation run uses {settings_label(val_settings)}.",
        "",
        "## OpenOOD table (AUROC %, test sets)",
        "",
        _summary_table("method", results, near, far),
        "",
        "Where DiffOOD loses:",
        "",
        *_losses(results, plain, [*near, *far, "nearood", "farood"]),
        "",
        "## Paper's Table 3: misclassified ID test images as the OOD set",
        "",
        f"The {n_correct} correctly classified of the {len(sets.id_test.images)} ID test images against "
        f"{len(sets.misclassified.images)} misclassified ID test images.",
        "",
        _md_table(["method", "AUROC", "FPR@95", "AUPR_IN", "AUPR_OUT"],
                  [[m, *[f"{v[k]:.2f}" for k in ("AUROC", "FPR@95", "AUPR_IN", "AUPR_OUT")]]
                   for m, v in table3.items()]),
        "",
        "## Choices on validation",
        "",
        "Feature space (AUROC cifar10_val vs tin_val): " +
        ", ".join(f"{sp} {v:.1f}" for sp, v in space_val.items()) + f". Chosen: **{best_space}**.",
        "",
        "Improvements over the plain change (in the chosen space), each fitted on cifar10_val only, AUROC on "
        "validation: " + ", ".join(f"{k} {v:.1f}" for k, v in cand_val.items()) +
        (f". Chosen: **{chosen}**." if kept else ". None beats the plain change on validation: none is used."),
        "",
        *_kept_line(results, plain, kept),
        "",
        "Every candidate on the test sets (reported whether chosen or not):",
        "",
        _summary_table("candidate", cand_results, near, far),
        "",
        "## Ablations (validation: cifar10_val vs tin_val, AUROC % ± bootstrap std)",
        "",
        f"![ablations]({rel}/ablations.png)",
        "",
    ]
    for name, points in ablations.items():
        lines += [f"**{name}**", "", _md_table([name, "AUROC"], [[p[0], f"{p[1]:.1f} ± {p[2]:.1f}"] for p in points]),
                  ""]
    sp = analysis["auroc_by_space_test"]
    names = list(next(iter(sp.values())))
    id_name = sets.id_test.name
    lines += [
        "## Understanding the sets (test sets; analysis only, no choice is made here)",
        "",
        "AUROC by feature space on each test set:",
        "",
        _md_table(["space", *names], [[s, *[f"{v[n]:.1f}" for n in names]] for s, v in sp.items()]),
        "",
        "Mean change per set and space (the score's raw scale):",
        "",
        _md_table(["space", id_name, *names],
                  [[s, *[f"{x:.3f}" for x in v.values()]] for s, v in analysis["mean_change_by_space"].items()]),
        "",
        "Mean max-softmax per set: " + ", ".join(f"{k} {v:.3f}" for k, v in analysis["mean_max_softmax"].items()),
        "",
        "Predicted class shares (airplane .. truck): ",
        "",
        _md_table(["set", *CIFAR10_CLASSES], [[n, *[f"{x:.2f}" for x in v]]
                                              for n, v in analysis["predicted_class_share"].items()]),
        "",
        f"![predicted classes]({rel}/predicted_classes.png)",
        "",
        f"![reconstructions]({rel}/reconstructions.png)",
        "",
        *[f"![histogram]({rel}/hist_{n}.png)" for n in names],
        "",
        "## OpenOOD's full tables",
        "",
        _openood_tables(results),
        "",
    ]
    return "\n".join(lines)
