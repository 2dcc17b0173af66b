"""Score cache: an interrupted run resumes with identical scores and recomputes nothing that finished."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import DictDataset, TinyNet
from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.evaluate.runners import SetStore
from openood_diffood.runtime.cache import KeyedStore, ScoreCache, atomic_write, image_digests, module_fingerprint
from openood_diffood.runtime.distributed import score_loader

SETTINGS = dict(timestep=100, stride=50, repeats=2, guidance=2.0)  # 2 network calls per micro-batch


class Interrupt(Exception):
    pass


def _counting_engine(net, model_dir, fail_after=None, **overrides):
    """An engine whose network calls are counted (and which raises at call number ``fail_after + 1``)."""
    engine = DiffOOD(net, load_diffusion(model_dir), batch_size=4, **{**SETTINGS, **overrides})
    calls, network = [], engine.diffusion.network

    def counted(z, t, labels):
        if fail_after is not None and len(calls) == fail_after:
            raise Interrupt("killed mid-run")
        calls.append(z.shape[0])
        return network(z, t, labels)

    engine.diffusion.network = counted
    return engine, calls


@pytest.fixture()
def loader(images):
    x = torch.cat([images, images.flip(-1)[:2]])  # 10 images: micro-batches of 4, 4, 2
    return DataLoader(DictDataset(x, torch.arange(10) % 3), batch_size=3)


def test_interrupted_run_resumes_without_recomputing(tmp_path, tiny_net, tiny_diffusion_dir, loader):
    reference, _ = _counting_engine(tiny_net, tiny_diffusion_dir)
    expected = score_loader(reference, loader, progress=False)

    engine, calls = _counting_engine(tiny_net, tiny_diffusion_dir, fail_after=5, cache_dir=tmp_path)  # dies in batch 3
    with pytest.raises(Interrupt):
        score_loader(engine, loader, progress=False)
    (key_dir,) = [p for p in tmp_path.iterdir()]
    assert len(list(key_dir.glob("unit-*.npz"))) == 2 and not list(key_dir.glob("*.tmp"))

    engine, calls = _counting_engine(tiny_net, tiny_diffusion_dir, cache_dir=tmp_path)  # as a fresh process would
    resumed = score_loader(engine, loader, progress=False)
    assert calls == [2 * 2 * 2] * 2  # only the unfinished batch (2 images x 2 repeats x guidance pair), 2 steps
    for a, b in zip(resumed, expected):
        np.testing.assert_array_equal(a, b)

    engine, calls = _counting_engine(tiny_net, tiny_diffusion_dir, cache_dir=tmp_path)
    again = score_loader(engine, loader, progress=False)
    assert calls == []  # a finished dataset is never recomputed
    for a, b in zip(again, expected):
        np.testing.assert_array_equal(a, b)
    # images are found whatever the batching or order
    engine, calls = _counting_engine(tiny_net, tiny_diffusion_dir, cache_dir=tmp_path)
    batches = [{"data": torch.stack([loader.dataset[i]["data"] for i in idx]), "label": torch.zeros(len(idx))}
               for idx in ([9, 0, 1], [5, 4, 3, 2, 8, 7, 6])]
    scores, _, _ = score_loader(engine, batches, progress=False)
    assert calls == []
    np.testing.assert_array_equal(scores, expected[0][[9, 0, 1, 5, 4, 3, 2, 8, 7, 6]])


def test_cache_key_covers_settings_and_both_models(tmp_path, tiny_net, tiny_diffusion_dir):
    def key_dir(engine):
        return ScoreCache(tmp_path, engine.identity()).dir

    base = key_dir(DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **SETTINGS))
    # the same models and settings, loaded again and run differently: the same scores, the same key
    assert key_dir(DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), batch_size=2, **SETTINGS)) == base
    changed = [DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **{**SETTINGS, "guidance": 3.0}),
               DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **{**SETTINGS, "seed": 1}),
               DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **{**SETTINGS, "solver": "plms"}),
               DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **{**SETTINGS, "precision": "bf16"})]
    other_net = TinyNet()
    other_net.load_state_dict(tiny_net.state_dict())
    with torch.no_grad():
        other_net.head.bias[0] += 1e-3
    changed.append(DiffOOD(other_net, load_diffusion(tiny_diffusion_dir), **SETTINGS))
    diffusion = load_diffusion(tiny_diffusion_dir)
    with torch.no_grad():
        next(diffusion.parameters()).view(-1)[0] += 1e-3
    changed.append(DiffOOD(tiny_net, diffusion, **SETTINGS))
    other_null = load_diffusion(tiny_diffusion_dir, null_class=0)
    changed.append(DiffOOD(tiny_net, other_null, **SETTINGS))
    dirs = [key_dir(e) for e in changed]
    assert base not in dirs and len(set(dirs)) == len(dirs)


def test_fingerprint_sees_buffers_and_configs(tiny_diffusion_dir):
    a, b = load_diffusion(tiny_diffusion_dir), load_diffusion(tiny_diffusion_dir)
    assert module_fingerprint(a) == module_fingerprint(b)
    b.alphas_cumprod[500] += 1e-6  # a non-persistent buffer: not in the state_dict
    assert module_fingerprint(a) != module_fingerprint(b)
    c = load_diffusion(tiny_diffusion_dir)
    c.unet.register_to_config(attention_head_dim=2)  # a config change that leaves every weight as it is
    assert module_fingerprint(a) != module_fingerprint(c)


def test_fingerprint_ignores_where_the_model_was_loaded_from(tiny_diffusion_dir, tmp_path):
    """A copy of the model elsewhere is the same model: its cached scores are found (the fingerprint once hashed
    diffusers' ``_name_or_path``, so a moved checkout scored everything again)."""
    copy = shutil.copytree(tiny_diffusion_dir, tmp_path / "elsewhere")
    assert module_fingerprint(load_diffusion(tiny_diffusion_dir)) == module_fingerprint(load_diffusion(copy))


def test_one_keyed_store_under_every_store(tmp_path, tiny_net, tiny_diffusion_dir):
    key = {"method": "msp", "values": [1.5, None]}
    store = KeyedStore(tmp_path, key)
    assert json.loads((store.dir / "key.json").read_text()) == key and store.load("x") is None
    store.save("unit-a", {"score": np.arange(3.0)})
    np.testing.assert_array_equal(KeyedStore(tmp_path, key).load("unit-a")["score"], np.arange(3.0))
    assert store.names("unit-") == ["unit-a"] and KeyedStore.keys(tmp_path) == [key]
    assert not list(store.dir.glob("*.tmp"))
    # the score cache and eval's set store are keyed stores: the same folder for the same key
    engine = DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **SETTINGS)
    assert ScoreCache(tmp_path, engine.identity()).dir == KeyedStore(tmp_path, engine.identity()).dir
    assert SetStore(tmp_path, key).dir == KeyedStore(tmp_path / "sets", key).dir
    # a key.json that does not hold its folder's key is read back and refused
    (store.dir / "key.json").write_text(json.dumps({"method": "knn"}))
    with pytest.raises(ValueError, match="remove"):
        KeyedStore(tmp_path, key)


def test_image_digests_are_exact():
    x = torch.rand(3, 3, 4, 4)
    y = x.clone()
    y[1, 0, 0, 0] = torch.nextafter(y[1, 0, 0, 0], torch.tensor(2.0))
    dx, dy = image_digests(x), image_digests(y)
    assert dx[0] == dy[0] and dx[2] == dy[2] and dx[1] != dy[1] and len(set(dx)) == 3
    assert image_digests(x.view(3, 3, 2, 8))[0] != dx[0]  # the shape is part of the digest


def testatomic_write_leaves_nothing_when_interrupted(tmp_path):
    def dies(f):
        f.write(b"half a unit")
        raise Interrupt()

    with pytest.raises(Interrupt):
        atomic_write(tmp_path / "unit-x.npz", dies)
    assert os.listdir(tmp_path) == []


def test_identity_is_computed_once_per_engine(tiny_net, tiny_diffusion_dir, monkeypatch):
    """The models' fingerprints (gigabytes of hashing for a DiT-XL) are taken once, not per set or APS step."""
    from openood_diffood.runtime import engine as engine_module

    hashed = []
    fingerprint = engine_module.module_fingerprint
    monkeypatch.setattr(engine_module, "module_fingerprint", lambda m: hashed.append(m) or fingerprint(m))
    engine = DiffOOD(tiny_net, load_diffusion(tiny_diffusion_dir), **SETTINGS)
    first = engine.identity()
    for view in (engine, engine.replace(guidance=1.0), engine.replace(timestep=50).replace(repeats=1)):
        view.identity()
    assert len(hashed) == 2  # the classifier and the diffusion model, once
    assert engine.replace(guidance=1.0).identity()["settings"]["guidance"] == 1.0
    assert engine.identity() == first


def test_postprocessor_inference_uses_the_cache_dir(tmp_path, tiny_diffusion_dir, tiny_net, loader, monkeypatch):
    from openood_diffood import register

    register()
    from openood.evaluation_api.postprocessor import get_postprocessor

    monkeypatch.setenv("DIFFOOD_DIFFUSION", str(tiny_diffusion_dir))
    monkeypatch.setenv("DIFFOOD_CACHE_DIR", str(tmp_path / "cache"))
    pp = get_postprocessor(str(tmp_path / "no_configs_here"), "diffood", "cifar10")
    pp.set_hyperparam([])  # no sweep keys: nothing changes
    pp.settings = pp.settings.replace(**SETTINGS)
    first = pp.inference(tiny_net, loader, progress=False)
    assert len(list((tmp_path / "cache").glob("*/unit-*.npz"))) > 0
    calls, network = [], pp.engine.diffusion.network
    pp.engine.diffusion.network = lambda z, t, labels: calls.append(1) or network(z, t, labels)
    again = pp.inference(tiny_net, loader, progress=False)
    assert calls == []
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
