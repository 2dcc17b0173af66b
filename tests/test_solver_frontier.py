"""benchmarks/solver_frontier.py end to end at tiny sizes (digits and CIFAR-10), and its grid and cost counts."""
import json
import math
import os
import subprocess
import sys

from benchmarks import frontier
from benchmarks.frontier_report import default_decision
from conftest import REPO
from openood_diffood import DiffOODSettings, load_diffusion
from openood_diffood.method.diffood import network_evaluations
from openood_diffood.models.demo import load_demo_models


def test_evaluation_counts_and_grids():
    diffusion = load_diffusion(load_demo_models()[1])
    s = DiffOODSettings(mean=(0.5,), std=(0.5,))
    assert network_evaluations(s, diffusion) == 15 * 4 * 2   # the paper's 120
    assert network_evaluations(s.replace(solver="plms"), diffusion) == 16 * 4 * 2   # one extra warm-up evaluation
    assert network_evaluations(s.replace(solver="dpmpp2m", stride=100, repeats=1), diffusion) == 3 * 2
    assert network_evaluations(s.replace(guidance=1.0), diffusion) == 60  # one branch at w = 1
    assert network_evaluations(s.replace(guidance=0.0), diffusion) == 60  # and at w = 0 (the null class only)
    assert len(frontier.full_grid()) == 12 and all(r == 4 for *_, r in frontier.full_grid())
    reduced = frontier.reduced_grid()
    assert reduced[0] == frontier.REFERENCE
    assert reduced[1:] == [(s, 100, 4) for s in frontier.SOLVER_NAMES]
    assert frontier.reduced_grid((20, 50, 100))[1:] == reduced[1:] + [("ddim", 50, 4)]


def run_frontier(tmp_path, shared_data, diffusion, *extra):
    """The frontier, small: 3 images per set; on CIFAR-10 a tiny random UNet stands in for the reference model
    (the plumbing is under test here, the reference model's numbers in benchmarks/results)."""
    cmd = [sys.executable, "-m", "benchmarks.solver_frontier", "--limit", "3", "--n", "6", "--val-n", "6",
           "--diffusion", str(diffusion),
           "--strides", "20,40", "--cifar-strides", "20,40", "--paper", "40,3", "--sweep-timesteps", "20,40",
           "--sweep-guidances", "1,3",
           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--tag", "t", "--threads", "2",
           "--resamples", "200", "--precision", "fp32", *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "DIFFOOD_DATA": str(shared_data)})
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / "out" / "solver_frontier_t.json").read_text())


def test_solver_frontier_runs_end_to_end_with_every_cell_finite(shared_data, tiny_cifar10_diffusion, tmp_path):
    payload = run_frontier(tmp_path, shared_data, tiny_cifar10_diffusion)
    assert set(payload["studies"]) == {"digits", "cifar10"}
    for name, study in payload["studies"].items():
        assert len(study["sweep"]["cells"]) == 4
        assert "paper" in study["points"] and study["settings"]["paper"] == [40, 3.0]
        for setting, points in study["points"].items():
            refs = [p for p in points if p["delta_to_reference"] is None]
            assert [(p["solver"], p["stride"], p["repeats"]) for p in refs] == [("ddim", 20, 4)], (name, setting)
            for p in points:
                values = [*p["mean_auroc"], p["near_auroc"], p["far_auroc"], *(p["delta_to_reference"] or [])]
                assert all(math.isfinite(v) for v in values), (name, setting, p)
                assert p["evaluations"] > 0
        runs = {(p["solver"], p["stride"]) for p in study["points"]["paper"]}
        expected = 6 if name == "digits" else 4  # digits: every solver at both strides; CIFAR: ref + 3 at 40
        assert len(runs) == expected, (name, runs)
    assert payload["default_decision"]["reason"]
    md = (tmp_path / "out" / "solver_frontier_t.md").read_text()
    assert md.count("Fewest UNet evaluations per image") >= 2 and "## Defaults of diffood.yml" in md
    assert (tmp_path / "out" / "solver_frontier_t.png").stat().st_size > 10_000
    chunks = sorted(p.name for p in (tmp_path / "cache").rglob("chunk-*.npz"))
    again = run_frontier(tmp_path, shared_data, tiny_cifar10_diffusion, "--suites", "cifar10")
    assert sorted(p.name for p in (tmp_path / "cache").rglob("chunk-*.npz")) == chunks
    assert again["studies"]["cifar10"]["points"] == payload["studies"]["cifar10"]["points"]


def test_default_changes_only_with_the_interval_on_both_benchmarks():
    from benchmarks.frontier_report import Study
    from benchmarks.stats import Estimate

    def study(low: float) -> Study:
        ref = frontier.Point("ddim", 20, 4, 120, Estimate(90, 89, 91), 90, 90)
        cheap = frontier.Point("ddim", 50, 2, 24, Estimate(89.8, 88, 91), 90, 90, Estimate(-0.2, low, 0.3))
        return Study(None, None, {"paper": (300, 3.0)}, {"paper": [cheap, ref]}, 0.0)

    assert default_decision({"digits": study(-0.4), "cifar10": study(-0.3)})[0] == "ddim-50 R2"
    assert default_decision({"digits": study(-0.4), "cifar10": study(-0.6)})[0] is None
    assert default_decision({"digits": study(-0.4)})[0] is None
