"""benchmarks/cifar10.py end to end on the shared real data at a small N, and its score combinations by hand."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks.cifar10_choices import improvement_candidates
from conftest import REPO

BASELINES = ("msp", "ebo", "mls", "react", "vim", "knn")


def test_benchmark_runs_end_to_end_with_every_method_finite(shared_data, tiny_cifar10_diffusion, tmp_path):
    """Small, on the shared data and classifier; a tiny random UNet stands in for the reference diffusion model
    (the plumbing is under test here, the reference model's numbers in benchmarks/results)."""
    out, cache = tmp_path / "results", tmp_path / "cache"
    cmd = [sys.executable, "-m", "benchmarks.cifar10", "--n", "6", "--val-n", "6", "--misclassified", "4",
           "--diffusion", str(tiny_cifar10_diffusion),
           "--fit-n", "120", "--paper", "40,3", "--sweep-timesteps", "20,40", "--sweep-guidances", "1,3",
           "--out", str(out), "--cache-dir", str(cache), "--tag", "t", "--threads", "2", "--resamples", "200",
           "--precision", "fp32"]  # bf16 autocast is ~40x slower than fp32 on a CPU without bf16 instructions
    env = {"DIFFOOD_DATA": str(shared_data)}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO,
                         env={**os.environ, **env})
    assert res.returncode == 0, res.stderr[-3000:]
    payload = json.loads((out / "cifar10_t.json").read_text())
    methods = list(payload["results"])
    assert methods[0] == "diffood (paper: t = 40, w = 3, logit)" and set(BASELINES) <= set(methods)
    for m, rows in payload["results"].items():
        assert set(rows) == {"cifar100", "tin", "nearood", "mnist", "farood"}, m
        for row, metrics in rows.items():
            assert set(metrics) == {"FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"}
            assert all(math.isfinite(v) and 0 <= v <= 100 for v in metrics.values()), (m, row, metrics)
    assert set(payload["table3"]) == set(methods)
    assert all(math.isfinite(v) for t in payload["table3"].values() for v in [*t["AUROC_CI"], t["AUROC"], t["FPR@95"]])
    diff, res = payload["chosen_minus_paper"], payload["results"]
    chosen = [m for m in methods if m.startswith("diffood (val-chosen") and m.endswith(", logit)")]
    assert len(diff) == (3 if chosen else 0)
    if chosen:  # the paired difference's point estimate is the difference of the table's rows
        mean = {m: (res[m]["nearood"]["AUROC"] + res[m]["farood"]["AUROC"]) / 2 for m in (methods[0], chosen[0])}
        assert abs(diff["mean near/far"][0] - (mean[chosen[0]] - mean[methods[0]])) < 1e-6
        assert abs(diff["far"][0] - (res[chosen[0]]["farood"]["AUROC"] - res[methods[0]]["farood"]["AUROC"])) < 1e-6
        assert all(lo <= v <= hi for v, lo, hi in diff.values())
    assert len(payload["sweep"]["cells"]) == 4
    assert all(math.isfinite(v) for cell in payload["sweep"]["cells"].values() for v in cell)
    assert set(payload["repeats_val"][next(iter(payload["repeats_val"]))]) == {"1", "2", "4"}
    meta = payload["meta"]
    assert meta["compute_seconds_total"] > 0 and meta["baseline_backends"]["knn"] in ("openood", "pytorch-ood")
    assert any(p.endswith("cifar10_test.npz") for p in meta["sha256"])
    md = (out / "cifar10_t.md").read_text()
    assert all(f"| {m} " in md for m in methods) and "cifar10_t_findings.md" in md
    assert "round trips in **fp32**" in md
    for png in ("validation", "predicted_classes", "reconstructions", "hist_mnist"):
        assert (out / "cifar10_t" / f"{png}.png").stat().st_size > 1000
    # a second run finds every round trip in the store: none is recomputed
    files = sorted(p.name for p in cache.rglob("chunk-*.npz"))
    res = subprocess.run(cmd + ["--stage", "reconstruct"], capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, **env})
    assert res.returncode == 0 and sorted(p.name for p in cache.rglob("chunk-*.npz")) == files


def test_combinations_fitted_on_id_validation_by_hand():
    change = np.array([1.0, 2.0, 3.0, 4.0])
    energy = np.array([-10.0, -8.0, -6.0, -4.0])
    pred = np.array([0, 0, 1, 1])
    cands = improvement_candidates({"id": change}, energy, pred, classes=2)
    z = cands["change + energy (z on ID val)"](np.array([3.0]), np.array([-6.0]), np.array([0]))
    assert z == pytest.approx([(3.0 - 2.5) / np.std(change, ddof=1) + (-6.0 + 7.0) / np.std(energy, ddof=1)])
    rank = cands["change + energy (rank on ID val)"](np.array([2.0, 5.0]), np.array([-9.0, 0.0]), np.array([0, 1]))
    assert rank == pytest.approx([2 / 4 + 1 / 4, 1 + 1])
    # class means 1.5 and 3.5, pooled within-class std 0.5
    pc = cands["change, per-class z (ID val)"](np.array([2.5, 2.5]), np.zeros(2), np.array([0, 1]))
    assert pc == pytest.approx([2.0, -2.0])
