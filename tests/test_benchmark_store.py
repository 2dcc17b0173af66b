"""The benchmarks' round-trip store (format 3) and their bootstrap statistics."""
import json
import shutil
import subprocess
import sys
from typing import Optional

import numpy as np
import pytest
import torch

from benchmarks import stats
from benchmarks.roundtrips import CHUNK, RoundTripStore, identity, scores
from conftest import REPO
from openood_diffood import DiffOOD
from openood_diffood.evaluate.metrics import ood_metrics
from openood_diffood.hashing import digest
from openood_diffood.method.diffood import round_trip_settings
from openood_diffood.models.demo import DEMO_MEAN, DEMO_STD, load_demo_models
from openood_diffood.runtime.cache import KeyedStore


def demo_engine(diffusion: Optional[str] = None, **settings) -> DiffOOD:
    net, demo_diffusion = load_demo_models()
    base = dict(timestep=60, stride=20, repeats=3, guidance=3.0, space="feature", mean=DEMO_MEAN, std=DEMO_STD)
    return DiffOOD(net, diffusion or demo_diffusion, **{**base, **settings}, batch_size=16)


def digits(n: int) -> np.ndarray:
    from openood_diffood.evaluate.demo_data import demo_sets

    return demo_sets(0)["test"][0][:n]


def test_store_key_is_format_3_and_covers_the_protocol(tmp_path):
    """The key comes from the settings themselves: a round trip of protocol official is not the package
    protocol's (format 2's hand-written key left ``protocol`` out and reused the other protocol's round trips)."""
    engine = demo_engine()
    key = identity(engine)
    assert key == {"format": 3, "round_trip": {**round_trip_settings(engine.settings), "precision": "fp32"},
                   **engine.fingerprints()}
    assert identity(engine.replace(space="logit", threshold=None)) == key
    official = engine.replace(protocol="official")
    assert identity(official) != key
    store = RoundTripStore(tmp_path)
    images = digits(4)
    store.get(engine, images)
    assert store.missing(engine, images) == 0 and store.missing(official, images) == 1
    with pytest.raises(FileNotFoundError, match="not stored"):
        store.get(official, images, compute=False)
    assert json.loads((KeyedStore(tmp_path, key).dir / "key.json").read_text()) == key


def test_a_copy_of_the_model_elsewhere_finds_the_same_round_trips(tmp_path):
    diffusion = load_demo_models()[1]
    copy = shutil.copytree(diffusion, tmp_path / "elsewhere" / "diffusion")
    here, there = (identity(demo_engine(diffusion=str(d))) for d in (diffusion, copy))
    assert here == there
    moved = demo_engine(diffusion=str(copy))
    with torch.no_grad():
        next(moved.diffusion.parameters()).add_(1e-3)
    assert identity(moved)["diffusion"] != here["diffusion"]


def test_chunks_are_computed_once_and_fewer_repeats_read_the_first_ones(tmp_path, monkeypatch):
    store = RoundTripStore(tmp_path)
    engine = demo_engine(protocol="official")
    images = digits(CHUNK + 5)
    first = store.get(engine, images)
    assert first.reconstructions.shape == (CHUNK + 5, 3, 1, 16, 16) and first.pred.shape == (CHUNK + 5,)
    assert first.reference.shape == first.reconstructions.shape
    folder = KeyedStore(tmp_path, identity(engine)).dir
    names = sorted(p.name for p in folder.glob("chunk-*.npz"))
    assert names == sorted(f"chunk-{digest(np.ascontiguousarray(images[i:i + CHUNK]).tobytes())}.npz"
                           for i in (0, CHUNK))
    seconds = store.compute_seconds()
    assert seconds > 0

    def no_compute(*args, **kwargs):
        raise AssertionError("a stored round trip was recomputed")

    monkeypatch.setattr(DiffOOD, "round_trips", no_compute)
    again = RoundTripStore(tmp_path).get(engine, images)
    for a, b in zip(vars(again).values(), vars(first).values()):
        assert (a is None and b is None) or torch.equal(a, b)
    fewer = RoundTripStore(tmp_path)
    two = fewer.get(engine.replace(repeats=2), images)
    assert torch.equal(two.reconstructions, first.reconstructions[:, :2])
    assert torch.equal(two.reference, first.reference[:, :2])
    assert fewer.compute_seconds() == pytest.approx(seconds)  # the R = 3 chunks' stored compute time
    assert not list(KeyedStore(tmp_path, identity(engine.replace(repeats=2))).dir.glob("chunk-*.npz"))
    with pytest.raises(FileNotFoundError, match="not stored"):
        store.get(engine.replace(guidance=1.0), images, compute=False)


@pytest.mark.parametrize("protocol", ["package", "official"])
def test_stored_round_trips_score_as_the_engine_in_every_space(tmp_path, protocol):
    """benchmarks/ computes no score of its own: the package's score step on stored round trips gives the engine's
    scores, in every space (the engine's clipped feature space too) and under either protocol."""
    engine = demo_engine(protocol=protocol, threshold=0.5)
    images = digits(6)
    spaces = ["image", "layer1", "layer2", "feature", "logit"]
    stored = scores(RoundTripStore(tmp_path), engine, images, spaces=spaces)
    x = engine.settings.normalization.from_uint8(images)
    for sp in spaces:
        settings = engine.settings if sp == "feature" else engine.settings.replace(space=sp, threshold=None)
        e = DiffOOD(engine.classifier, engine.diffusion, settings, batch_size=4)
        np.testing.assert_allclose(stored[sp].mean(1), e.score(x).score.numpy(), rtol=1e-5, atol=1e-6, err_msg=sp)


def test_metrics_equal_openood_conventions_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        i = rng.integers(0, 8, rng.integers(5, 40)).astype(float)
        o = rng.integers(2, 10, rng.integers(5, 40)).astype(float)
        ref = ood_metrics(i, o)
        assert stats.auroc(i, o) == pytest.approx(100 * ref["AUROC"])
        assert stats.fpr95(i, o) == pytest.approx(100 * ref["FPR@95"])


def test_intervals_contain_the_estimate_and_pairing_cancels_shared_noise():
    rng = np.random.default_rng(1)
    base = {"id": rng.normal(0, 1, 80), "a": rng.normal(1, 1, 60), "b": rng.normal(2, 1, 70)}
    groups = [["a"], ["b"]]
    est = stats.grouped("AUROC", base, "id", groups)
    assert est.low < est.value < est.high
    assert est.value == pytest.approx((stats.auroc(base["id"], base["a"]) + stats.auroc(base["id"], base["b"])) / 2)
    same = stats.paired_difference("AUROC", base, base, "id", groups)
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    # a method that adds small noise to the same scores: the paired interval is far narrower than either
    # method's own interval
    noisy = {k: v + rng.normal(0, 0.05, len(v)) for k, v in base.items()}
    diff = stats.paired_difference("AUROC", noisy, base, "id", groups)
    assert diff.high - diff.low < 0.5 * (est.high - est.low)
    with pytest.raises(ValueError, match="same images"):
        stats.paired_difference("AUROC", {**base, "a": base["a"][:10]}, base, "id", groups)


def test_benchmarks_import_without_path_edits():
    code = ("import sys; before = list(sys.path); import benchmarks.cifar10, benchmarks.solver_frontier, "
            "benchmarks.dm_quality, benchmarks.speed, benchmarks.device_imagenet; print(sys.path == before)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "True"  # importing them put nothing on sys.path
    for path in (REPO / "benchmarks").glob("*.py"):
        assert len(path.read_text().splitlines()) <= 400, path
        assert "sys.path" not in path.read_text(), path


def test_bootstrap_is_scipy_and_seeded():
    x = torch.arange(50.0).numpy()
    a, b = stats.mean(x, seed=3), stats.mean(x, seed=3)
    assert a == b and a.value == pytest.approx(24.5) and a.low < 24.5 < a.high
