"""benchmarks/cifar10_variants.py (issue 21's study): the variants' scores and costs by hand, and the study end to
end on the shared real data at a small N."""
import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from benchmarks.variants import Variant, best, candidates
from benchmarks import stats
from conftest import REPO


def _family(rng):
    sets = ("id_val", "ood_val")
    changes = {(t, 6.0): {s: {sp: rng.gamma(2.0, size=(20, 2)) for sp in ("logit", "feature")} for s in sets}
               for t in (25, 100)}
    return changes, {"knn": {s: rng.normal(size=20) for s in sets}}


def test_variant_scores_are_the_z_sum_fitted_on_id_validation_by_hand():
    changes, base = _family(np.random.default_rng(0))
    v = Variant((25, 100), 6.0, ("logit",), "knn", 0.5)
    got = v.scores((changes, base), "id_val", (changes, base), ["id_val", "ood_val"])
    cols = lambda s: [changes[25, 6.0][s]["logit"].mean(1), changes[100, 6.0][s]["logit"].mean(1),  # noqa: E731
                      base["knn"][s]]
    ref = cols("id_val")
    for s in ("id_val", "ood_val"):
        want = sum(wt * (c - r.mean()) / r.std(ddof=1) for c, r, wt in zip(cols(s), ref, (1, 1, 0.5)))
        np.testing.assert_allclose(got[s], want, rtol=1e-5, atol=1e-5)
    single = Variant((100,), 6.0, ("feature",))
    plain = single.scores((changes, base), "id_val", (changes, base), ["ood_val"])["ood_val"]
    np.testing.assert_allclose(plain, changes[100, 6.0]["ood_val"]["feature"].mean(1))


def test_variant_cost_is_the_package_cost_rule_counted_by_hand():
    model = SimpleNamespace(conditional=True)
    # DDIM stride 20: t = 25 -> steps at 25, 5; t = 100 -> 5 steps; guidance pair x R = 2 -> 4 samples per step
    assert Variant((25,), 6.0).evaluations(2, model) == 2 * 4
    assert Variant((100,), 6.0).evaluations(2, model) == 5 * 4
    assert Variant((25, 100), 6.0).evaluations(2, model) == (2 + 5) * 4
    assert Variant((100,), 1.0).evaluations(2, model) == 5 * 2  # w = 1: the conditional branch only


def test_candidates_and_the_choice():
    cands = candidates([(25, 6.0), (100, 6.0), (25, 9.0), (100, 9.0)], ("logit", "feature"))
    # 8 single (t, w, space), 4 logit+feature sums (one per t, w), 4 timestep pairs (one per w, space)
    assert len(cands) == len(set(cands)) == 16
    assert Variant((25, 100), 9.0, ("feature",)) in cands and Variant((25,), 6.0, ("logit", "feature")) in cands
    # a cell beyond the grid (where the validation trend points) brings its own singles, sums and lists
    more = candidates([(25, 6.0), (100, 6.0), (10, 6.0)], ("logit",))
    assert {v.timesteps for v in more} == {(10,), (25,), (100,), (10, 25), (10, 100), (25, 100), (10, 25, 100)}
    est = lambda v: stats.Estimate(v, v - 1, v + 1)  # noqa: E731
    a, b = Variant((25,), 6.0), Variant((100,), 6.0)
    assert best({a: est(80.0), b: est(81.0)}, {a: 8, b: 20}) == b
    assert best({a: est(80.0), b: est(80.0)}, {a: 8, b: 20}) == a  # a tie goes to the cheaper one


def test_study_runs_end_to_end_and_chooses_on_validation(shared_data, tiny_cifar10_diffusion, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "benchmarks.cifar10_variants", "--n", "6", "--val-n", "6", "--misclassified", "4",
           "--fit-n", "120", "--diffusion", str(tiny_cifar10_diffusion), "--timesteps", "20,40", "--guidances", "3,6",
           "--spaces", "logit,feature", "--extra", "60,6", "--combine", "knn", "--current", "40,3",
           "--precision", "fp32",
           "--resamples", "50", "--threads", "2", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
           "--tag", "t"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO,
                         env={**os.environ, "DIFFOOD_DATA": str(shared_data)})
    assert res.returncode == 0, res.stderr[-3000:]
    payload = json.loads((out / "cifar10_variants_t.json").read_text())
    val = payload["validation"]
    # 5 cells x (logit, feature, their sum) + timestep lists x 2 spaces: w = 3 one pair, w = 6 three pairs, a triple
    assert len(val["candidates"]) == 5 * 3 + 2 * (1 + 3 + 1)
    chosen = val["chosen"]
    assert val["candidates"][chosen][0] == max(c[0] for c in val["candidates"].values())
    knn = val["combined"]["knn"]
    assert knn.startswith("diffood+knn (") and val["combos"][knn][0] == max(c[0] for c in val["combos"].values())
    test = payload["test"]
    assert {chosen, knn, "diffood (t = 40, w = 3, logit)", "knn", "vim"} <= set(test)
    for name, row in test.items():
        assert all(math.isfinite(v) for v in [*row["auroc"].values(), *row["mean"], *row["table3_auroc"]]), name
    diff = payload["differences"][f"{chosen} - knn"]["mean near/far"]
    assert abs(diff[0] - (test[chosen]["mean"][0] - test["knn"]["mean"][0])) < 1e-6
    assert set(payload["correlations"][f"{chosen} ~ knn"]) == {"cifar10", "cifar100", "tin", "mnist"}
    md = (out / "cifar10_variants_t.md").read_text()
    assert "round trips in fp32" in md and f"**{chosen}**" in md
    assert (out / "cifar10_variants_t.png").stat().st_size > 10_000
