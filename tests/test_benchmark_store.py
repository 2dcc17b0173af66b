"""The benchmarks' round-trip store (format 2) and their bootstrap statistics."""
import gc
import json
import shutil
import subprocess
import sys
import weakref
from typing import Optional

import numpy as np
import pytest
import torch

from benchmarks import stats
from benchmarks.roundtrips import CHUNK, RoundTripStore, changes_by_space, scores
from conftest import REPO
from openood_diffood import DiffOOD
from openood_diffood.evaluate.metrics import ood_metrics
from openood_diffood.hashing import digest
from openood_diffood.method.scoring import repeat_changes
from openood_diffood.models.demo import DEMO_MEAN, DEMO_STD, load_demo_models

#: The folder of the stored CIFAR-10 round trips of t = 300, w = 3, R = 4, DDIM-20, bf16: the code must keep
#: naming it identically, wherever the checkout and the shared data lie, or those round trips are lost.
PAPER_FOLDER = "f2be5fddce4471588cfeb568d4d87aef"


def demo_engine(diffusion: Optional[str] = None, **settings) -> DiffOOD:
    net, demo_diffusion = load_demo_models()
    base = dict(timestep=60, stride=20, repeats=3, guidance=3.0, space="feature", mean=DEMO_MEAN, std=DEMO_STD)
    return DiffOOD(net, diffusion or demo_diffusion, **{**base, **settings}, batch_size=16)


def digits(n: int) -> np.ndarray:
    from openood_diffood.evaluate.demo_data import demo_sets

    return demo_sets(0)["test"][0][:n]


def test_store_key_is_format_2_and_names_the_pre_restructuring_folder(shared_data, tmp_path):
    from benchmarks.cifar10_data import cifar_engine, load_models

    net, backend = load_models(shared_data)
    store = RoundTripStore(tmp_path)
    identity = store.identity(cifar_engine(net, backend))
    assert identity["format"] == 2 and set(identity) == {"format", "round_trip", "classifier", "diffusion"}
    assert identity["round_trip"] == {"timestep": 300, "guidance": 3.0, "repeats": 4, "stride": 20, "solver": "ddim",
                                      "seed": 0, "precision": "bf16", "resize": False, "class_map": None,
                                      "mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616]}
    folder = store.folder(identity)
    assert folder.name == PAPER_FOLDER
    assert json.loads((folder / "key.json").read_text()) == identity


def test_a_copy_of_the_model_elsewhere_finds_the_same_round_trips(tmp_path):
    diffusion = load_demo_models()[1]
    copy = shutil.copytree(diffusion, tmp_path / "elsewhere" / "diffusion")
    store = RoundTripStore(tmp_path / "store")
    here, there = (store.identity(demo_engine(diffusion=str(d))) for d in (diffusion, copy))
    assert here == there
    moved = demo_engine(diffusion=str(copy))
    with torch.no_grad():
        next(moved.diffusion.parameters()).add_(1e-3)
    assert store.identity(moved)["diffusion"] != here["diffusion"]


def test_chunks_are_computed_once_and_fewer_repeats_read_the_first_ones(tmp_path, monkeypatch):
    store = RoundTripStore(tmp_path)
    engine = demo_engine()
    images = digits(CHUNK + 5)
    first = store.get(engine, images)
    assert first.recs.shape == (CHUNK + 5, 3, 1, 16, 16) and first.pred.shape == (CHUNK + 5,)
    folder = store.folder(store.identity(engine))
    names = sorted(p.name for p in folder.glob("chunk-*.npz"))
    assert names == sorted(f"chunk-{digest(np.ascontiguousarray(images[i:i + CHUNK]).tobytes())}.npz"
                           for i in (0, CHUNK))
    seconds = store.compute_seconds()
    assert seconds > 0

    def no_compute(*args, **kwargs):
        raise AssertionError("a stored round trip was recomputed")

    monkeypatch.setattr(DiffOOD, "reconstruct", no_compute)
    again = RoundTripStore(tmp_path).get(engine, images)
    np.testing.assert_array_equal(again.recs, first.recs)
    fewer = RoundTripStore(tmp_path)
    two = fewer.get(engine.replace(repeats=2), images)
    np.testing.assert_array_equal(two.recs, first.recs[:, :2])
    assert fewer.compute_seconds() == pytest.approx(seconds)  # the R = 3 chunks' stored compute time
    assert not list(fewer.folder(fewer.identity(engine.replace(repeats=2))).glob("chunk-*.npz"))
    with pytest.raises(FileNotFoundError, match="not stored"):
        store.get(engine.replace(guidance=1.0), images, compute=False)
    # the stored reconstructions score exactly as the engine does
    monkeypatch.undo()
    changes = scores(store, engine, images[:4])["feature"].mean(1)
    direct = engine.score(engine.settings.normalization.from_uint8(images[:4])).score.numpy()
    np.testing.assert_allclose(changes, direct, rtol=1e-5, atol=1e-6)


def test_a_fingerprinted_model_stays_alive_so_its_id_cannot_pass_to_the_next(tmp_path):
    """The store keys fingerprints by the models' id(); a model freed after it was fingerprinted could hand its
    id() to the next one loaded, which would then read the freed model's round trips (dm_quality once scored its
    4,800-step model with the 1,200-step model's reconstructions). So the store keeps every model it fingerprinted
    alive, and a second model gets its own fingerprint."""
    store = RoundTripStore(tmp_path)
    engine = demo_engine()
    first = store.identity(engine)["diffusion"]
    alive = weakref.ref(engine.diffusion)
    del engine
    gc.collect()
    assert alive() is not None
    other = demo_engine()
    with torch.no_grad():
        next(other.diffusion.parameters()).add_(0.01)
    assert store.identity(other)["diffusion"] != first


def test_every_space_scores_as_the_engine_defines_it(tmp_path):
    engine = demo_engine()
    images = digits(6)
    recs = RoundTripStore(tmp_path).get(engine, images).recs
    spaces = ["image", "layer1", "layer2", "feature", "logit"]
    fast = changes_by_space(engine, images, recs, spaces, batch=4)
    norm = engine.settings.normalization
    x, rec = norm.from_uint8(images), norm.normalize(torch.from_numpy(recs).flatten(0, 1))
    for sp in spaces:
        settings = engine.settings.replace(space=sp)
        direct = repeat_changes(engine.features(x, settings)[1], engine.features(rec, settings)[1].view(6, 3, -1))
        np.testing.assert_allclose(fast[sp], direct.numpy(), rtol=1e-5, atol=1e-6, err_msg=sp)


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
