"""DiffOOD inside the real OpenOOD v1.5 (installed by ``make test``; these tests never skip) and the no-OpenOOD
fallback."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, TinyNet, write_openood_data_root, write_tiny_diffusion

TESTS = Path(__file__).resolve().parent


def _run(code: str, env_extra=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          timeout=300)


def test_packaged_configs_hold_the_paper_defaults():
    from openood_diffood.openood.registry import config_path

    cifar = yaml.safe_load(open(config_path("diffood")))["postprocessor"]
    imnet = yaml.safe_load(open(config_path("diffood_imagenet")))["postprocessor"]
    assert cifar["name"] == "diffood" and imnet["name"] == "diffood_imagenet"
    a = cifar["postprocessor_args"]
    assert (a["timestep"], a["guidance"], a["repeats"], a["stride"], a["space"]) == (300, 3.0, 4, 20, "logit")
    b = imnet["postprocessor_args"]
    assert (b["timestep"], b["guidance"], b["repeats"], b["space"], b["threshold"]) == (600, 6.0, 4, "feature", 0.3)
    for args in (a, b):
        assert {"diffusion", "timestep", "guidance", "repeats", "stride", "space", "threshold", "seed",
                "batch_size"} <= set(args)
    assert set(cifar["postprocessor_sweep"]) == {"timestep_list", "guidance_list", "repeats_list"}
    # APS searches at least the grid the benchmarks' joint validation sweep chooses from
    from benchmarks.sweep import GUIDANCES, PAPER, TIMESTEPS

    sweep = cifar["postprocessor_sweep"]
    timesteps = [tuple(t) if isinstance(t, list) else t for t in sweep["timestep_list"]]
    assert set(TIMESTEPS) <= set(timesteps) and set(GUIDANCES) <= set(sweep["guidance_list"])
    # and the validation choice of benchmarks/cifar10_variants.py, which held on the test sets (its results file)
    assert (20, 25, 100) in timesteps and 12.0 in sweep["guidance_list"]
    assert (a["timestep"], a["guidance"]) == PAPER
    # the repository's configs/postprocessors are the packaged ones
    assert Path(config_path("diffood")).read_text() == (REPO / "configs/postprocessors/diffood.yml").read_text()


def test_without_openood_the_engine_imports_and_openood_entry_points_explain():
    res = _run("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "openood" or name.startswith("openood."):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, Block())
        import openood_diffood
        from openood_diffood import DiffOOD
        for call in (lambda: openood_diffood.DiffOODPostprocessor, openood_diffood.register):
            try:
                call()
            except ImportError as e:
                print("ERR", e)
    """)
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if l.startswith("ERR")]
    assert len(lines) == 2 and all("git clone https://github.com/Jingkang50/OpenOOD" in l for l in lines)


def diffood_postprocessor(config_root: Path, diffusion_dir: Path):
    """OpenOOD's get_postprocessor('diffood') for CIFAR-10 with the model from DIFFOOD_DIFFUSION."""
    import openood_diffood

    openood_diffood.register()
    from openood.evaluation_api.postprocessor import get_postprocessor

    os.environ["DIFFOOD_DIFFUSION"] = str(diffusion_dir)
    try:
        return get_postprocessor(str(config_root), "diffood", "cifar10")
    finally:
        del os.environ["DIFFOOD_DIFFUSION"]


def test_postprocessor_contract(tmp_path, tiny_diffusion_dir):
    import openood_diffood

    pp = diffood_postprocessor(tmp_path / "no_configs_here", tiny_diffusion_dir)
    assert not (tmp_path / "no_configs_here").exists()  # nothing was written or downloaded
    assert pp.APS_mode is False and pp.hyperparam_search_done is False
    net = TinyNet().train()
    g = torch.Generator().manual_seed(0)
    data = [{"data": torch.randn(5, 3, 8, 8, generator=g) * 0.5, "label": torch.arange(5) % 3} for _ in range(2)]
    pp.setup(net, {"train": data, "val": data}, {"val": data})
    assert not net.training  # setup puts the net in eval mode
    pp.set_hyperparam([100, 1.0, 2])
    assert pp.get_hyperparam() == [100, 1.0, 2]
    pred, conf, label = pp.inference(net, data, progress=False)
    assert pred.dtype.kind == "i" and conf.dtype.kind == "f" and pred.shape == conf.shape == label.shape == (10,)
    engine = openood_diffood.DiffOOD(net, pp.engine.diffusion, pp.settings)
    expected = engine.score(torch.cat([b["data"] for b in data]))
    np.testing.assert_allclose(conf, -expected.score.numpy(), atol=1e-6)
    p, c = pp.postprocess(net, data[0]["data"])
    np.testing.assert_allclose(c.numpy(), conf[:5], atol=1e-6)
    with pytest.raises(ValueError, match="empty data loader"):
        pp.inference(net, [], progress=False)


def test_pickled_postprocessor_keeps_its_settings_only_and_scores_the_same(tmp_path, tiny_diffusion_dir):
    """scripts/eval_ood.py pickles the postprocessor after APS and reloads it on the next run."""
    import pickle

    pp = diffood_postprocessor(tmp_path, tiny_diffusion_dir)
    pp.args_dict = {"timestep_list": [40, 60], "repeats_list": [2]}
    net = TinyNet()
    g = torch.Generator().manual_seed(0)
    data = [{"data": torch.randn(5, 3, 8, 8, generator=g) * 0.5, "label": torch.arange(5) % 3}]
    pp.setup(net, {"train": data, "val": data}, {"val": data})
    pp.set_hyperparam([60, 2])  # as APS leaves it
    pp.hyperparam_search_done = True
    _, conf, _ = pp.inference(net, data, progress=False)
    blob = pickle.dumps(pp, pickle.HIGHEST_PROTOCOL)
    assert len(blob) < 100_000 and b"UNet2DModel" not in blob and b"TinyNet" not in blob  # no model, no loader
    again = pickle.loads(blob)
    assert again.engine is None and again.get_hyperparam() == [60, 2] and again.hyperparam_search_done
    os.environ["DIFFOOD_DIFFUSION"] = str(tiny_diffusion_dir)
    try:
        again.setup(net, {"train": data, "val": data}, {"val": data})  # loads the diffusion model again
    finally:
        del os.environ["DIFFOOD_DIFFUSION"]
    np.testing.assert_array_equal(again.inference(net, data, progress=False)[1], conf)


def test_real_evaluator_drives_diffood_by_name(tmp_path):
    """OpenOOD's own Evaluator, with postprocessor_name='diffood', on a small data root written here."""
    model_dir = write_tiny_diffusion(tmp_path / "diffusion", num_classes=10, sample_size=32)
    data_root = tmp_path / "data"
    write_openood_data_root(data_root)
    # a diffood.yml in config_root takes precedence over the packaged one: cheap settings, APS on
    from openood_diffood.openood.registry import config_path

    cfg = yaml.safe_load(open(config_path("diffood")))
    cfg["postprocessor"]["APS_mode"] = True
    cfg["postprocessor"]["postprocessor_args"].update(timestep=40, stride=20, repeats=2)
    cfg["postprocessor"]["postprocessor_sweep"] = {"timestep_list": [20, 40], "guidance_list": [1.0, 3.0],
                                                   "repeats_list": [1]}
    (tmp_path / "configs" / "postprocessors").mkdir(parents=True)
    (tmp_path / "configs" / "postprocessors" / "diffood.yml").write_text(yaml.safe_dump(cfg))
    res = _run(f"""
        import openood_shims; openood_shims.install()
        import openood_diffood; openood_diffood.register()
        import torch
        from openood.evaluation_api import Evaluator
        from openood.networks import ResNet18_32x32
        torch.manual_seed(0)
        net = ResNet18_32x32(num_classes=10)
        ev = Evaluator(net, id_name="cifar10", data_root={str(data_root)!r},
                       config_root={str(tmp_path / "configs")!r}, postprocessor_name="diffood",
                       batch_size=4, num_workers=0)
        metrics = ev.eval_ood(fsood=False, progress=False)
        print("chosen", ev.postprocessor.get_hyperparam(), ev.postprocessor.hyperparam_search_done)
        print(metrics.to_csv())
    """, {"DIFFOOD_DIFFUSION": str(model_dir)})
    assert res.returncode == 0, res.stderr[-3000:]
    chosen = next(l for l in res.stdout.splitlines() if l.startswith("chosen"))
    assert chosen.endswith("True") and chosen.count("Hyperparam") == 0  # APS ran over the 4 combinations
    assert res.stdout.count("Hyperparam:") == 4
    rows = {line.split(",")[0]: line.split(",")[1:] for line in res.stdout.strip().splitlines()[-9:]}
    for name in ("cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"):
        assert name in rows, res.stdout
        assert all(np.isfinite(float(v)) for v in rows[name])


@pytest.mark.parametrize("switch", ["1", "0"])
def test_startup_hook_registers_on_openood_import(switch):
    """The .pth start-up hook (here imported by hand, as the .pth line does) and its off switch."""
    res = _run("""
        import openood_shims; openood_shims.install()
        import openood_diffood.openood.hook
        from openood.evaluation_api import Evaluator  # noqa: F401  (imports the evaluator's lookup)
        import openood.evaluation_api.evaluator as ev
        from openood.evaluation_api.postprocessor import postprocessors
        from openood.pipelines import test_ood_pipeline
        from openood.utils import Config
        from openood_diffood.openood.registry import config_path
        print("dict", "diffood" in postprocessors)
        try:
            pp = test_ood_pipeline.get_postprocessor(Config(config_path("diffood_imagenet")))
            print("pipeline", type(pp).__name__, pp.settings.threshold)
        except KeyError:
            print("pipeline missing")
        print("evaluator", getattr(ev.get_postprocessor, "__openood_diffood__", False))
    """, {"OPENOOD_DIFFOOD_AUTOREGISTER": switch})
    assert res.returncode == 0, res.stderr[-3000:]
    if switch == "1":
        assert "dict True" in res.stdout and "pipeline DiffOODPostprocessor 0.3" in res.stdout
        assert "evaluator True" in res.stdout
    else:
        assert "dict False" in res.stdout and "pipeline missing" in res.stdout and "evaluator False" in res.stdout


def test_wheel_ships_the_startup_hook_and_configs(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist()
    assert "openood_diffood.pth" in names and "openood_diffood/openood/hook.py" in names
    assert "openood_diffood/configs/postprocessors/diffood.yml" in names
    assert "openood_diffood/configs/postprocessors/diffood_imagenet.yml" in names
