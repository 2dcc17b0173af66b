"""OOD metrics against hand computation, sklearn and OpenOOD's own metrics file; tables and result files."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from openood_diffood.evaluate import metrics

# 4 ID and 4 OOD scores (higher = more OOD); the OOD image at 0.35 ranks below the ID image at 0.4
ID = np.array([0.1, 0.2, 0.3, 0.4])
OOD = np.array([0.35, 0.5, 0.6, 0.7])


def test_metrics_by_hand():
    m = metrics.ood_metrics(ID, OOD)
    # AUROC: 15 of the 16 (OOD, ID) pairs are ordered correctly
    assert m["AUROC"] == pytest.approx(15 / 16)
    # detecting >= 95% of OOD needs the threshold at 0.35, which also flags the ID image at 0.4: FPR 1/4
    assert m["FPR@95"] == pytest.approx(0.25)
    # PR curves (trapezoid like OpenOOD): precision 1 up to recall 0.75, then the point (recall 1, precision 0.8)
    expected = 0.75 + 0.25 * (0.75 + 0.8) / 2
    assert m["AUPR_IN"] == pytest.approx(expected)
    assert m["AUPR_OUT"] == pytest.approx(expected)


def test_perfect_and_uninformative_scores():
    perfect = metrics.ood_metrics(np.zeros(5), np.ones(7))
    assert perfect == pytest.approx({"FPR@95": 0.0, "AUROC": 1.0, "AUPR_IN": 1.0, "AUPR_OUT": 1.0})
    flat = metrics.ood_metrics(np.zeros(5), np.zeros(5))
    assert flat["AUROC"] == pytest.approx(0.5)
    assert flat["FPR@95"] == pytest.approx(1.0)
    reversed_ = metrics.ood_metrics(np.ones(5), np.zeros(5))
    assert reversed_["AUROC"] == pytest.approx(0.0) and reversed_["FPR@95"] == pytest.approx(1.0)


def test_auroc_matches_sklearn_on_random_scores():
    rng = np.random.default_rng(0)
    s_id, s_ood = rng.normal(0, 1, 300), rng.normal(0.7, 1.3, 200)
    labels = np.r_[np.zeros(300), np.ones(200)]
    assert metrics.ood_metrics(s_id, s_ood)["AUROC"] == pytest.approx(roc_auc_score(labels, np.r_[s_id, s_ood]))


def test_identical_to_openood_compute_all_metrics():
    from openood_diffood.openood.compat import require_openood

    oo = require_openood("openood.evaluators.metrics")
    rng = np.random.default_rng(1)
    s_id, s_ood = rng.normal(0, 1, 257), np.round(rng.normal(1, 1, 131), 1)  # rounding makes ties
    conf = -np.r_[s_id, s_ood]
    label = np.r_[rng.integers(0, 10, 257), -np.ones(131, int)]
    fpr, auroc, aupr_in, aupr_out, _ = oo.compute_all_metrics(conf, label, np.zeros_like(label))
    ours = metrics.ood_metrics(s_id, s_ood)
    assert ours == pytest.approx({"FPR@95": fpr, "AUROC": auroc, "AUPR_IN": aupr_in, "AUPR_OUT": aupr_out},
                                 abs=1e-12)


def test_bad_scores_are_errors():
    with pytest.raises(ValueError, match="NaN or inf"):
        metrics.ood_metrics(np.array([0.1, np.nan]), OOD)
    with pytest.raises(ValueError, match="empty"):
        metrics.ood_metrics(ID, np.array([]))
    with pytest.raises(ValueError, match="as many predictions as labels"):
        metrics.accuracy(np.zeros(3), np.zeros(4))


def _table(shift=0.0):
    ood = {"near": {"a": OOD + shift, "b": OOD - 0.3}, "far": {"c": OOD + 1}}
    return metrics.method_table("m", ID, ood, id_accuracy=0.75)


def test_method_table_rows_means_and_accuracy():
    t = _table()
    assert list(t.rows) == ["a", "b", "nearood", "c", "farood"]
    assert t.splits == {"a": "near", "b": "near", "nearood": "near", "c": "far", "farood": "far"}
    a, b = metrics.ood_metrics(ID, OOD), metrics.ood_metrics(ID, OOD - 0.3)
    assert t.rows["nearood"]["AUROC"] == pytest.approx(100 * (a["AUROC"] + b["AUROC"]) / 2)
    assert t.rows["farood"]["AUROC"] == pytest.approx(100.0)
    assert all(row["ACC"] == pytest.approx(75.0) for row in t.rows.values())
    with pytest.raises(ValueError, match="no OOD sets"):
        metrics.method_table("m", ID, {"near": {}, "far": {}}, 1.0)


def test_aggregate_tables_and_files(tmp_path):
    runs = [_table(0.0), _table(-0.2)]
    agg = metrics.aggregate(runs)
    values = [r.rows["a"]["AUROC"] for r in runs]
    assert agg["a"]["AUROC"] == pytest.approx({"mean": np.mean(values), "std": np.std(values)})
    text = metrics.format_method_table("m", runs)
    assert "nearood" in text and "farood" in text and "\u00b1" in text and "AUPR_OUT" in text
    summary = metrics.format_summary({"m": runs, "other": runs[:1]})
    assert summary.splitlines()[0].split()[:3] == ["method", "near", "AUROC"] and len(summary.splitlines()) == 3

    csv_path, json_path = metrics.write_results(str(tmp_path), {"m": runs}, ["s0", "s1"], {"note": "x"})
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 3 * 5  # s0, s1 and their mean, 5 rows each
    assert {r["run"] for r in rows} == {"s0", "s1", "mean"}
    payload = json.load(open(json_path))
    assert payload["note"] == "x" and payload["methods"]["m"]["per_run"]["s1"]["c"]["AUROC"] == pytest.approx(100)
    openood_csv = metrics.write_openood_csv(str(tmp_path / "ood" / "m.csv"), runs)
    lines = Path(openood_csv).read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",FPR@95,AUROC,AUPR_IN,AUPR_OUT,ACC" and lines[1].startswith("a,")
