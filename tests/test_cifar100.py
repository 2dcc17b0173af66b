"""CIFAR-100, the fourth OpenOOD v1.5 benchmark, end to end on this CPU: OpenOOD's own scripts/eval_ood.py, ``python
-m openood.main`` in both modes and the Evaluator API run DiffOOD with ``--id-data cifar100`` on a data root in
OpenOOD's exact CIFAR-100 layout, with a 100-class ResNet18_32x32 and a 101-embedding (100 classes + null)
diffusion model; and ``train`` writes such a model from CIFAR-100 images.

The data root holds a few real images per list (CIFAR-100, CIFAR-10, Tiny ImageNet with OpenOOD's cifar100 masks,
MNIST from ../shared/data) and small generated images for SVHN, Textures and Places365, of which no real copies are
stored here. The classifier is randomly initialised, its head centred on these images' mean feature so that its
predictions spread over the 100 classes: a model conditioned on 10 classes could not pass.
"""
import csv
import io
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import copy_openood_checkout, write_openood_data_root, write_tiny_diffusion
from convert_helpers import one_thread  # noqa: F401  (an autouse fixture: tiny networks run fastest on one thread)
from openood_diffood import DiffOOD, cli, load_diffusion
from openood_diffood.method.normalization import DATASET_STATS
from openood_diffood.openood.compat import require_openood
from test_openood_main import _env, _eval_ood_py, _openood_main, installed  # noqa: F401  (a fixture)
from test_training import TINY

N = 4  # images per image list
OOD_SETS = ("cifar10", "tin", "mnist", "svhn", "texture", "places365")
CHEAP = dict(timestep=40, stride=20, repeats=2, guidance=3.0, batch_size=8)
SWEEP = {"timestep_list": [20, 40], "guidance_list": [3.0], "repeats_list": [2]}
#: list -> (real .npz of ../shared/data, boolean mask of OpenOOD's list in it); None: generated images
SOURCES = {"train_cifar100": ("cifar100_test.npz", None), "val_cifar100": ("cifar100_test.npz", None),
           "test_cifar100": ("cifar100_test.npz", None), "test_cifar10": ("cifar10_test.npz", None),
           "val_tin": ("tin_val_32.npz", "openood_cifar100_val_tin"),
           "test_tin": ("tin_val_32.npz", "openood_cifar100_test_tin"), "test_mnist": ("mnist_test_32.npz", None),
           "test_svhn": None, "test_texture": None, "test_places365": None}


class BenchmarkImages:
    """``images(imglist_path, n)`` for :func:`conftest.write_openood_data_root`: distinct real images per list (the
    three CIFAR-100 lists draw disjoint ones), generated stripes for the sets not stored here; remembers them all."""

    def __init__(self, data):
        self.data, self.drawn, self.used = data, [], {}

    def __call__(self, imglist_path, n):
        name = imglist_path.rsplit("/", 1)[-1][:-len(".txt")]
        source = SOURCES[name]
        if source is None:
            images, labels = self.generated(len(self.drawn), n), np.full(n, -1)
        else:
            with np.load(self.data / source[0], allow_pickle=False) as f:
                pool = np.flatnonzero(f[source[1]]) if source[1] else np.arange(len(f["labels"]))
                order = np.random.default_rng(len(source[0])).permutation(pool)
                start = self.used.get(source[0], 0)
                idx = np.sort(order[start:start + n])
                self.used[source[0]] = start + n
                images, labels = f["images"][idx], f["labels"][idx]
        self.drawn.append(images)
        return images, labels

    @staticmethod
    def generated(seed, n):
        """Coloured stripes of random frequency, angle and phase with pixel noise."""
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[:32, :32] / 32.0
        out = []
        for _ in range(n):
            f, a, p = rng.uniform(1, 6), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
            wave = np.sin(2 * np.pi * f * (xx * np.cos(a) + yy * np.sin(a)) + p)
            colour = rng.uniform(40, 215, 3)
            out.append(colour + 40 * wave[..., None] + rng.normal(0, 10, (32, 32, 3)))
        return np.clip(out, 0, 255).astype(np.uint8)


def centred_resnet(images: np.ndarray) -> torch.nn.Module:
    """OpenOOD's ResNet18_32x32 with 100 classes, randomly initialised; its head a random projection of the
    features minus their mean over ``images`` (uint8 NHWC), so that its predictions spread over the classes."""
    torch.manual_seed(0)
    net = require_openood("openood.networks").ResNet18_32x32(num_classes=100).eval()
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DATASET_STATS["cifar100"])
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    with torch.no_grad():
        _, features = net(x, return_feature=True)
        weight = torch.randn(100, features.shape[1], generator=torch.Generator().manual_seed(0))
        net.fc.weight.copy_(weight)
        net.fc.bias.copy_(-weight @ features.mean(0))
    return net


@pytest.fixture(scope="module", autouse=True)
def one_thread_subprocesses():
    """The subprocesses on one thread too (on a loaded 2-core machine two threads slow tiny networks tenfold)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def c100(tmp_path_factory, shared_data):
    """A copy of OpenOOD's scripts/ and configs/ (diffood.yml: cheap settings, APS on), its data/ in the CIFAR-100
    layout, one run s0/best.ckpt and a tiny 100-class (101-embedding) diffusion model."""
    root = copy_openood_checkout(tmp_path_factory.mktemp("c100") / "OpenOOD", CHEAP, SWEEP)
    images = BenchmarkImages(shared_data)
    write_openood_data_root(root / "data", N, id_data="cifar100", images=images)
    (root / "runs" / "s0").mkdir(parents=True)
    torch.save(centred_resnet(np.concatenate(images.drawn)).state_dict(), root / "runs" / "s0" / "best.ckpt")
    return {"root": root, "diffusion": write_tiny_diffusion(root / "diffusion", num_classes=100, sample_size=32)}


@pytest.fixture(scope="module")
def script(c100, tmp_path_factory):
    """The runs after OpenOOD's scripts/eval_ood.py --id-data cifar100 scored them with diffood (APS on)."""
    runs = tmp_path_factory.mktemp("script") / "runs"
    shutil.copytree(c100["root"] / "runs", runs)
    res = _eval_ood_py(c100, runs, "--id-data", "cifar100", "--postprocessor", "diffood", "--save-csv",
                       "--save-score")
    assert res.returncode == 0, res.stderr[-3000:]
    return runs, res


def read_csv(path) -> dict:
    """OpenOOD's CSV: dataset -> {metric: cell}."""
    return {row[""]: {k: v for k, v in row.items() if k} for row in csv.DictReader(io.StringIO(path.read_text()))}


def means(table: dict, name: str) -> list:
    """The mean of each metric of a "mean ± std" row."""
    return [float(cell.split("\u00b1")[0]) for cell in table[name].values()]


def spread_over_classes(scores: dict) -> set:
    """The classes DiffOOD predicted on the ID test set and every OOD test set of OpenOOD's saved scores."""
    sets = [scores["id"]["test"]] + [scores["ood"][k][name] for k in ("near", "far") for name in scores["ood"][k]]
    return {int(p) for pred, _, _ in sets for p in pred}


def test_eval_ood_py_scores_every_cifar100_set_with_100_classes(script):
    runs, res = script
    assert res.stdout.count("Hyperparam:") == len(SWEEP["timestep_list"])  # APS on the cifar100 val sets
    table = read_csv(runs / "ood" / "diffood.csv")
    assert list(table) == ["cifar10", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"]
    for name in OOD_SETS:
        assert all(np.isfinite(means(table, name))), table[name]
    scores = pickle.loads((runs / "s0" / "scores" / "diffood.pkl").read_bytes())
    assert sorted(scores["ood"]["near"]) == ["cifar10", "tin"]
    assert sorted(scores["ood"]["far"]) == ["mnist", "places365", "svhn", "texture"]
    assert all(len(scores["ood"][k][name][1]) == N for k in ("near", "far") for name in scores["ood"][k])
    predicted = spread_over_classes(scores)
    assert len(predicted) > 10 and max(predicted) < 100, predicted
    pp = pickle.loads((runs / "s0" / "postprocessors" / "diffood.pkl").read_bytes())
    assert pp.hyperparam_search_done and pp.settings.timestep in SWEEP["timestep_list"]
    assert (pp.settings.normalization.mean, pp.settings.normalization.std) == DATASET_STATS["cifar100"]


@pytest.mark.slow
def test_openood_main_eval_mode_rescores_from_the_pickle_identically(installed, c100, script, tmp_path):
    """``python -m openood.main --root RUNS --id-data cifar100`` on eval_ood.py's runs (its postprocessor pickle,
    not its scores): no APS again, and the very scores and CSV eval_ood.py wrote."""
    root, (done, _) = c100["root"], script
    runs = tmp_path / "runs"
    shutil.copytree(done, runs, ignore=shutil.ignore_patterns("scores", "ood"))
    res = _openood_main(installed, "--root", str(runs), "--id-data", "cifar100", "--postprocessor", "diffood",
                        "--data-root", str(root / "data"), "--config-root", str(root / "configs"), "--num-workers",
                        "0", "--save-csv", "--save-score", env=_env(c100), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Hyperparam:" not in res.stdout  # APS's choice came from the pickle
    assert (runs / "ood" / "diffood.csv").read_text() == (done / "ood" / "diffood.csv").read_text()
    ours, theirs = (pickle.loads((r / "s0" / "scores" / "diffood.pkl").read_bytes()) for r in (runs, done))
    for k in ("near", "far"):
        for name in theirs["ood"][k]:
            for a, b in zip(ours["ood"][k][name], theirs["ood"][k][name]):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ours["id"]["test"][1], theirs["id"]["test"][1])


def test_evaluator_api_with_id_name_cifar100(c100, script):
    """OpenOOD's Evaluator(id_name="cifar100", postprocessor_name="diffood"): the engine holds the 100-class head
    and the 100-class model, and the metrics equal eval_ood.py's."""
    root = c100["root"]
    code = textwrap.dedent(f"""
        import openood_shims; openood_shims.install()
        import openood_diffood; openood_diffood.register()
        import torch
        from openood.evaluation_api import Evaluator
        from openood.networks import ResNet18_32x32
        net = ResNet18_32x32(num_classes=100)
        net.load_state_dict(torch.load({str(root / "runs" / "s0" / "best.ckpt")!r}, weights_only=True))
        ev = Evaluator(net, id_name="cifar100", data_root={str(root / "data")!r},
                       config_root={str(root / "configs")!r}, postprocessor_name="diffood", num_workers=0)
        metrics = ev.eval_ood(fsood=False, progress=False)
        engine = ev.postprocessor.engine
        print("classes", engine.classifier.num_classes, engine.diffusion.num_classes, engine.diffusion.null_class)
        print(metrics.to_csv())
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env=_env(c100))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "classes 100 100 100" in res.stdout
    table = {row[""]: row for row in csv.DictReader(io.StringIO(res.stdout[res.stdout.index("\n,") + 1:]))}
    expected = read_csv(script[0] / "ood" / "diffood.csv")
    for name in OOD_SETS:
        got = [float(table[name][k]) for k in expected[name]]
        assert all(np.isfinite(got)) and np.allclose(got, means(expected, name), atol=0.006), (got, expected[name])


@pytest.mark.slow
def test_openood_main_pipeline_mode_runs_the_cifar100_configs(installed, c100, tmp_path):
    """main.py mode: OpenOOD's cifar100 dataset configs and its test_ood pipeline, with --postprocessor diffood."""
    root = c100["root"]
    for folder in ("configs", "data"):
        (tmp_path / folder).symlink_to(root / folder)
    configs = ["configs/datasets/cifar100/cifar100.yml", "configs/datasets/cifar100/cifar100_ood.yml",
               "configs/networks/resnet18_32x32.yml", "configs/pipelines/test/test_ood.yml",
               "configs/preprocessors/base_preprocessor.yml"]  # OpenOOD's scripts/ood/*/cifar100_test_ood_*.sh
    res = _openood_main(installed, "--config", *configs, "--postprocessor", "diffood", "--num_workers", "0",
                        "--network.checkpoint", str(root / "runs" / "s0" / "best.ckpt"),
                        env=_env(c100), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Completed!" in res.stdout
    out = next(tmp_path.glob("results/cifar100_*diffood*/s0/ood"))
    table = {row["dataset"]: row for row in csv.DictReader(io.StringIO((out / "ood.csv").read_text()))}
    for name in OOD_SETS:
        assert all(np.isfinite(float(v)) for k, v in table[name].items() if k != "dataset"), table[name]
    predicted = set()
    for name in ("cifar100",) + OOD_SETS:
        with np.load(out / "scores" / f"{name}.npz") as f:
            assert len(f["conf"]) == N and np.isfinite(f["conf"]).all()
            predicted |= set(f["pred"].tolist())
    assert len(predicted) > 10 and max(predicted) < 100, predicted


@pytest.mark.parametrize("layout", ["npz", "folder"])
def test_train_on_cifar100_images_writes_a_100_class_model_the_engine_loads(shared_data, tmp_path, layout):
    """``train`` on real CIFAR-100 images, an .npz with the class names or an ImageFolder with one folder per
    class (a few images each): 100 classes + the null class, and DiffOOD scores with a 100-class classifier."""
    with np.load(shared_data / "cifar100_test.npz", allow_pickle=False) as f:
        classes = f["classes"]
        idx = np.arange(0, 10000, 625) if layout == "npz" else np.arange(0, 10000, 100)  # 16 / 100 images
        images, labels = f["images"][idx], f["labels"][idx]
    if layout == "npz":
        np.savez(tmp_path / "cifar100_train.npz", images=images, labels=labels, classes=classes)
        data = tmp_path / "cifar100_train.npz"
    else:
        from PIL import Image

        data = tmp_path / "cifar100" / "train"
        for i, (image, label) in enumerate(zip(images, labels)):
            (data / classes[label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(data / classes[label] / f"{i:04d}.png")
    assert cli.main(["train", str(data), "-o", str(tmp_path / "model"), *TINY, "--steps", "2"]) == 0
    backend = load_diffusion(tmp_path / "model")
    assert (backend.num_classes, backend.null_class, backend.sample_size) == (100, 100, 32)
    card = (tmp_path / "model" / "README.md").read_text()
    assert "100 classes plus the null class 100" in card and "99: worm" in card
    net = require_openood("openood.networks").ResNet18_32x32(num_classes=100).eval()
    engine = DiffOOD(net, backend, dataset="cifar100", timestep=20, stride=10, repeats=1)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DATASET_STATS["cifar100"])
    x = (torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 255 - mean) / std
    out = engine.score(x)
    assert torch.isfinite(out.score).all() and (out.score > 0).all()
