"""ImageNet-200 and ImageNet-1K, end to end on this CPU, as OpenOOD users run them: OpenOOD's own scripts/eval_ood.py
(``--id-data imagenet200``) and scripts/eval_ood_imagenet.py (``--ckpt-path``), ``python -m openood.main`` in the
same two forms and the Evaluator API, all with ``--postprocessor diffood_imagenet`` and nothing written in Python.

The data root is built in OpenOOD's layout (``benchmark_imglist/imagenet200/`` and ``benchmark_imglist/imagenet/``,
images under ``images_largescale/`` and ``images_classic/``; ID image paths ``imagenet_1k/train/n0.../n0..._k.JPEG``
with made-up WordNet ids whose sorted order is ImageNet-1K's label order; ImageNet-200's class i is the 1000-class
id 5 i + 3). The diffusion model is a tiny DiT conditioned on 1000 classes, written as DiTPipeline saves it; the
classifiers are OpenOOD's ResNet18_224x224 (200 classes) and ResNet50, randomly initialised.
"""
import pickle
import shutil
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch

from conftest import copy_openood_checkout, write_openood_data_root, write_tiny_dit
from convert_helpers import one_thread  # noqa: F401  (an autouse fixture: tiny networks run fastest on one thread)
from openood_diffood.openood.compat import require_openood
from test_cifar100 import means, one_thread_subprocesses, read_csv  # noqa: F401  (an autouse fixture)
from test_openood_main import _env, _eval_ood_py, _openood_main, installed  # noqa: F401  (a fixture)

N = 2  # images per val / test image list
CHEAP = dict(timestep=40, stride=20, repeats=1, guidance=3.0, batch_size=8)
#: APS over one setting: eval_ood.py pickles the postprocessor only after APS (for ImageNet-200; ImageNet-1K: off).
SWEEP = {"timestep_list": [40], "guidance_list": [3.0], "repeats_list": [1]}
OOD_SETS = ("ssb_hard", "ninco", "inaturalist", "textures", "openimage_o")
EXPECTED_MAP = [5 * i + 3 for i in range(200)]


def wnid(k: int) -> str:
    """The made-up WordNet id of ImageNet-1K class k (increasing in k, as ImageNet-1K's labels sort them)."""
    return f"n{1440764 + 37 * k:08d}"


def imagenet_lists(imglist_path: str, n: int):
    """``images`` for :func:`conftest.write_openood_data_root`: small random images; a training list names every
    class of its benchmark once, a val / test list ``n`` images of spread classes."""
    benchmark = imglist_path.split("/")[1]
    classes = 200 if benchmark == "imagenet200" else 1000
    rng = np.random.default_rng(zlib.crc32(imglist_path.encode()))  # every list its own images
    count = classes if "/train_" in imglist_path else n
    labels = np.arange(count) if count == classes else (np.arange(count) * 37 + 11) % classes
    pixels = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    if "/val_openimage_o" in imglist_path:  # APS picks a setting only at an AUROC above 0: one tie guarantees it
        pixels[0] = imagenet_lists(f"benchmark_imglist/{benchmark}/val_{benchmark}.txt", n)[0][0]
    return pixels, labels


def imagenet_path(imglist_path: str, i: int, label: int):
    """OpenOOD's ImageNet ID paths, imagenet_1k/<split>/<wnid>/<file>.JPEG; <set>/<split>/<file>.JPEG for others."""
    benchmark, name = imglist_path.split("/")[1:]
    split, dataset = name[:-len(".txt")].split("_", 1)
    if dataset != benchmark:
        return f"{dataset}/{split}/{benchmark}_{i:04d}.JPEG"
    w = wnid(5 * label + 3 if benchmark == "imagenet200" else label)
    file = f"{w}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{i + 1 + 50 * label:08d}.JPEG"
    return f"imagenet_1k/{split}/{w}/{file}"


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    """A copy of OpenOOD's scripts/ and configs/ (diffood_imagenet.yml: cheap settings, APS on), its data/ with both
    ImageNet benchmarks, an ImageNet-200 run s0/best.ckpt, a tiny 1000-class DiT, and a second copy (APS off,
    the same data/) holding an ImageNet-1K ResNet50 checkpoint."""
    root = copy_openood_checkout(tmp_path_factory.mktemp("inet") / "OpenOOD", CHEAP, SWEEP, name="diffood_imagenet")
    no_aps = copy_openood_checkout(root.parent / "OpenOOD-1k", CHEAP, SWEEP, name="diffood_imagenet", aps=False)
    (no_aps / "data").symlink_to(root / "data")
    for benchmark in ("imagenet200", "imagenet"):
        write_openood_data_root(root / "data", N, id_data=benchmark, images=imagenet_lists, path_of=imagenet_path)
    networks = require_openood("openood.networks")
    torch.manual_seed(0)
    (root / "runs" / "s0").mkdir(parents=True)
    torch.save(networks.ResNet18_224x224(num_classes=200).state_dict(), root / "runs" / "s0" / "best.ckpt")
    (no_aps / "resnet50").mkdir()
    half = {k: v.half() if v.is_floating_point() else v for k, v in networks.ResNet50().state_dict().items()}
    torch.save(half, no_aps / "resnet50" / "best.ckpt")  # half the bytes; load_state_dict casts back to float32
    return {"root": root, "no_aps": no_aps, "diffusion": write_tiny_dit(root / "dit", classes=1000)}


def finite_table(path, names=OOD_SETS) -> dict:
    """OpenOOD's CSV at ``path``, after checking every OOD set's metrics are finite numbers."""
    table = read_csv(path)
    assert list(table) == ["ssb_hard", "ninco", "nearood", "inaturalist", "textures", "openimage_o", "farood"]
    for name in names:
        assert all(np.isfinite(means(table, name))), table[name]
    return table


@pytest.fixture(scope="module")
def script(inet, tmp_path_factory):
    """The runs after OpenOOD's scripts/eval_ood.py --id-data imagenet200 scored them with diffood_imagenet."""
    runs = tmp_path_factory.mktemp("script") / "runs"
    shutil.copytree(inet["root"] / "runs", runs)
    res = _eval_ood_py(inet, runs, "--id-data", "imagenet200", "--postprocessor", "diffood_imagenet", "--save-csv",
                       "--save-score")
    assert res.returncode == 0, res.stdout[-1000:] + res.stderr[-3000:]
    return runs, res


@pytest.mark.slow
def test_eval_ood_py_imagenet200_finds_the_class_map_itself(script):
    runs, res = script
    assert res.stdout.count("diffood: class_map: 200 ID classes mapped to the diffusion model's 1000 classes") == 1
    finite_table(runs / "ood" / "diffood_imagenet.csv")
    scores = pickle.loads((runs / "s0" / "scores" / "diffood_imagenet.pkl").read_bytes())
    assert all(len(scores["ood"][k][name][1]) == N for k in ("near", "far") for name in scores["ood"][k])
    pkl = runs / "s0" / "postprocessors" / "diffood_imagenet.pkl"
    assert pkl.stat().st_size < 100_000  # the settings and the map, never the models
    pp = pickle.loads(pkl.read_bytes())
    assert pp.engine is None and pp.hyperparam_search_done and list(pp.settings.class_map) == EXPECTED_MAP
    assert (pp.settings.space, pp.settings.threshold, pp.settings.resize) == ("feature", 0.3, True)


@pytest.mark.slow
def test_openood_main_imagenet200_rescores_from_the_pickle_identically(installed, inet, script, tmp_path):
    """``python -m openood.main --root RUNS --id-data imagenet200`` on eval_ood.py's runs (its pickle, not its
    scores): no APS and no map derived again, and the very CSV and scores eval_ood.py wrote."""
    done = script[0]
    runs = tmp_path / "runs"
    shutil.copytree(done, runs, ignore=shutil.ignore_patterns("scores", "ood"))
    root = inet["root"]
    res = _openood_main(installed, "--root", str(runs), "--id-data", "imagenet200", "--postprocessor",
                        "diffood_imagenet", "--data-root", str(root / "data"), "--config-root", str(root / "configs"),
                        "--num-workers", "0", "--save-csv", "--save-score", env=_env(inet), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Hyperparam:" not in res.stdout and "class_map:" not in res.stdout  # both came from the pickle
    assert (runs / "ood" / "diffood_imagenet.csv").read_text() == (done / "ood" / "diffood_imagenet.csv").read_text()
    ours, theirs = (pickle.loads((r / "s0" / "scores" / "diffood_imagenet.pkl").read_bytes()) for r in (runs, done))
    for k in ("near", "far"):
        for name in theirs["ood"][k]:
            np.testing.assert_array_equal(ours["ood"][k][name][1], theirs["ood"][k][name][1])


@pytest.mark.slow
def test_evaluator_api_imagenet200(inet, script):
    """Evaluator(id_name="imagenet200", postprocessor_name="diffood_imagenet"): the map found from the loaders, and
    eval_ood.py's metrics."""
    root = inet["root"]
    code = textwrap.dedent(f"""
        import openood_shims; openood_shims.install()
        import openood_diffood; openood_diffood.register()
        import torch
        from openood.evaluation_api import Evaluator
        from openood.networks import ResNet18_224x224
        net = ResNet18_224x224(num_classes=200)
        net.load_state_dict(torch.load({str(root / "runs" / "s0" / "best.ckpt")!r}, weights_only=True))
        ev = Evaluator(net.eval(), id_name="imagenet200", data_root={str(root / "data")!r},
                       config_root={str(root / "configs")!r}, postprocessor_name="diffood_imagenet", num_workers=0)
        metrics = ev.eval_ood(fsood=False, progress=False)
        print("map", list(ev.postprocessor.settings.class_map) == {EXPECTED_MAP!r})
        print(metrics.to_csv())
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=_env(inet))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "map True" in res.stdout
    rows = {line.split(",")[0]: [float(v) for v in line.split(",")[1:]]
            for line in res.stdout[res.stdout.index("\n,") + 2:].splitlines()[1:] if line}
    expected = read_csv(script[0] / "ood" / "diffood_imagenet.csv")
    for name in OOD_SETS:
        assert np.allclose(rows[name], means(expected, name), atol=0.006), (rows[name], expected[name])


@pytest.mark.slow
def test_openood_main_imagenet_1k_with_a_resnet50_checkpoint(installed, inet, tmp_path):
    """``python -m openood.main --id-data imagenet --arch resnet50 --ckpt-path ...``: 1000 classes on both sides (no
    map), finite metrics for every OOD set."""
    root = inet["no_aps"]
    ckpt = tmp_path / "main" / "best.ckpt"
    ckpt.parent.mkdir()
    shutil.copy(root / "resnet50" / "best.ckpt", ckpt)
    res = _openood_main(installed, "--id-data", "imagenet", "--arch", "resnet50", "--ckpt-path", str(ckpt),
                        "--postprocessor", "diffood_imagenet", "--data-root", str(root / "data"), "--config-root",
                        str(root / "configs"), "--num-workers", "0", "--save-csv", env=_env(inet), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "class_map:" not in res.stdout
    finite_table(ckpt.parent / "ood" / "diffood_imagenet.csv")


@pytest.mark.slow
def test_eval_ood_imagenet_py_with_a_resnet50_checkpoint(inet):
    """OpenOOD's scripts/eval_ood_imagenet.py, unmodified, with ``--ckpt-path`` and ``--postprocessor
    diffood_imagenet``: OpenOOD's CSV next to the checkpoint, finite for every OOD set."""
    root = inet["no_aps"]
    script = root / "scripts" / "eval_ood_imagenet.py"
    code = textwrap.dedent(f"""
        import runpy, sys, openood_shims, openood_diffood
        openood_shims.install(); openood_diffood.register()
        sys.argv = [{str(script)!r}, "--arch", "resnet50", "--ckpt-path", {str(root / "resnet50" / "best.ckpt")!r},
                    "--postprocessor", "diffood_imagenet", "--save-csv", "--batch-size", "8"]
        runpy.run_path({str(script)!r}, run_name="__main__")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=_env(inet),
                         cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "class_map:" not in res.stdout
    finite_table(root / "resnet50" / "ood" / "diffood_imagenet.csv")
