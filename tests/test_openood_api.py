"""The OpenOOD side as a user meets it: the README's Evaluator snippet on a CPU-only machine (no test shims), the
data-root check against what OpenOOD's Evaluator really opens, the one OpenOOD CSV writer, and provenance."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import REPO, TinyNet, write_openood_data_root, write_tiny_diffusion
from openood_diffood.evaluate.metrics import MethodResult, write_openood_csv
from openood_diffood.openood.registry import config_path

COLUMNS = ["FPR@95", "AUROC", "AUPR_IN", "AUPR_OUT", "ACC"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("openood_data") / "data"
    write_openood_data_root(root)
    return root


def test_readme_evaluator_snippet_runs_to_its_metrics_on_cpu_without_shims(tmp_path, data_root):
    """The README's snippet as written (net, ./data, ./configs, batch_size=200), in a fresh process with only the
    package registered: no test shim, no CUDA. The CPU note comes once and the shim ends with the Evaluator's call."""
    shutil.copytree(data_root, tmp_path / "data")
    # cheap settings through the config_root the snippet names (the Evaluator reads diffood.yml there)
    cfg = yaml.safe_load(open(config_path("diffood")))
    cfg["postprocessor"]["postprocessor_args"].update(timestep=40, stride=20, repeats=1)
    (tmp_path / "configs" / "postprocessors").mkdir(parents=True)
    (tmp_path / "configs" / "postprocessors" / "diffood.yml").write_text(yaml.safe_dump(cfg))
    model = write_tiny_diffusion(tmp_path / "diffusion", num_classes=10, sample_size=32)
    code = textwrap.dedent("""
        import torch
        from openood.networks import ResNet18_32x32
        torch.manual_seed(0)
        net = ResNet18_32x32(num_classes=10)

        import openood_diffood; openood_diffood.register()   # not needed when the start-up hook is installed
        from openood.evaluation_api import Evaluator

        evaluator = Evaluator(net, id_name="cifar10", data_root="./data", config_root="./configs",
                              postprocessor_name="diffood", batch_size=200)
        metrics = evaluator.eval_ood()

        try:
            torch.ones(1).cuda()
            print("cuda() outside the Evaluator: kept")
        except (AssertionError, RuntimeError):
            print("cuda() outside the Evaluator: raises")
        print(metrics.to_csv())
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DIFFOOD_DIFFUSION": str(model)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("CUDA is not available") == 1
    assert "cuda() outside the Evaluator: raises" in res.stdout
    rows = {line.split(",")[0]: line.split(",")[1:] for line in res.stdout.strip().splitlines()[-9:]}
    for name in ("cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"):
        assert len(rows[name]) == 5 and all(np.isfinite(float(v)) for v in rows[name]), res.stdout[-2000:]


def _image_lists(id_name: str):
    from openood_diffood.openood.compat import require_openood

    found = []

    def walk(node):
        if isinstance(node, dict):
            if "imglist_path" in node:
                found.append(node["imglist_path"])
            for value in node.values():
                walk(value)

    walk(require_openood("openood.evaluation_api.datasets").DATA_INFO[id_name])
    return found


def _evaluator_opens(root: Path) -> bool:
    """Whether OpenOOD's Evaluator (MSP) sets up on ``root`` without a missing file."""
    import openood_diffood

    openood_diffood.register()
    from openood.evaluation_api import Evaluator

    try:
        Evaluator(TinyNet(num_classes=10), id_name="cifar10", data_root=str(root), config_root=str(REPO / "none"),
                  postprocessor=_msp(), batch_size=4, num_workers=0)
    except FileNotFoundError:
        return False
    return True


def _msp():
    from openood.postprocessors import BasePostprocessor
    from openood.utils import Config

    msp = BasePostprocessor(Config(postprocessor={"APS_mode": False}))
    msp.APS_mode = msp.hyperparam_search_done = False
    return msp


def test_data_root_check_accepts_exactly_what_openood_evaluator_opens(tmp_path, data_root):
    """Each image list of DATA_INFO removed in turn: the check refuses the root exactly when OpenOOD's own Evaluator
    cannot set up on it (cinic10's list is in DATA_INFO, but no loader reads it)."""
    from openood_diffood.config import ConfigError
    from openood_diffood.openood.leaderboard import check_data_root

    lists = _image_lists("cifar10")
    assert "benchmark_imglist/cifar10/val_cinic10.txt" in lists
    check_data_root(str(data_root), "cifar10")
    verdicts = {}
    for listed in lists:
        root = tmp_path / Path(listed).stem
        shutil.copytree(data_root, root)
        (root / listed).unlink()
        try:
            check_data_root(str(root), "cifar10")
            accepted = True
        except ConfigError as exc:
            assert listed in str(exc) and "lacks 1 of" in str(exc)
            accepted = False
        verdicts[listed] = accepted
        assert accepted == _evaluator_opens(root), listed
        shutil.rmtree(root)
    assert verdicts["benchmark_imglist/cifar10/val_cinic10.txt"]
    assert not verdicts["benchmark_imglist/cifar10/test_cifar10c.txt"]  # opened even without --fsood


def test_data_root_check_wants_the_csid_images_only_with_fsood(tmp_path, data_root):
    """OpenOOD reads the covariate-shifted ID images only for full-spectrum OOD; a benchmark folder OpenOOD's
    data_setup would download is required either way."""
    from openood_diffood.config import ConfigError
    from openood_diffood.openood.leaderboard import check_data_root

    root = tmp_path / "data"
    shutil.copytree(data_root, root)
    shutil.rmtree(root / "images_classic" / "cifar10c")  # its list stays: the images it names are not there
    check_data_root(str(root), "cifar10")
    with pytest.raises(ConfigError, match="with --fsood .*images_classic/cifar10c/"):
        check_data_root(str(root), "cifar10", fsood=True)
    assert _evaluator_opens(root)
    for name in ("svhn",):
        shutil.rmtree(root / "images_classic" / name)
        with pytest.raises(ConfigError, match=f"images_classic/{name}/"):
            check_data_root(str(root), "cifar10")


def _openood_metrics(seed: int) -> pd.DataFrame:
    """A metrics table shaped as OpenOOD's Evaluator.eval_ood returns it (percent)."""
    rng = np.random.default_rng(seed)
    index = ["cifar100", "tin", "nearood", "mnist", "svhn", "texture", "places365", "farood"]
    return pd.DataFrame(rng.uniform(0, 100, (len(index), 5)), index=index, columns=COLUMNS)


def test_one_csv_writer_writes_what_openood_scripts_write(tmp_path):
    """Byte for byte what scripts/eval_ood.py (mean ± std over runs) and eval_ood_imagenet.py (one run) write with
    pandas, from the same metrics."""
    frames = [_openood_metrics(seed) for seed in range(3)]
    stacked = np.stack([f.to_numpy() for f in frames])
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    cells = [["{:.2f} \u00B1 {:.2f}".format(mean[i, j], std[i, j]) for j in range(mean.shape[1])]
             for i in range(len(mean))]
    pd.DataFrame(cells, index=frames[0].index, columns=frames[0].columns).to_csv(tmp_path / "script.csv")
    runs = [MethodResult("m", f.to_dict(orient="index")) for f in frames]
    ours = write_openood_csv(str(tmp_path / "ood" / "m.csv"), runs)
    assert Path(ours).read_bytes() == (tmp_path / "script.csv").read_bytes()
    frames[0].to_csv(tmp_path / "imagenet.csv", float_format="{:.2f}".format)
    ours = write_openood_csv(str(tmp_path / "ood" / "one.csv"), runs[:1], spread=False)
    assert Path(ours).read_bytes() == (tmp_path / "imagenet.csv").read_bytes()


def test_csv_writer_never_silently_replaces_another_result(tmp_path, capfd):
    path = tmp_path / "ood" / "diffood.csv"
    first = [MethodResult("diffood", _openood_metrics(0).to_dict(orient="index"))]
    second = [MethodResult("diffood", _openood_metrics(1).to_dict(orient="index"))]
    write_openood_csv(str(path), first)
    old = path.read_bytes()
    write_openood_csv(str(path), first)  # the same result again: nothing to keep, nothing said
    assert capfd.readouterr().err == "" and not (tmp_path / "ood" / "diffood.csv.1").exists()
    write_openood_csv(str(path), second)
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and str(path) + ".1" in err[0]
    assert (tmp_path / "ood" / "diffood.csv.1").read_bytes() == old and path.read_bytes() != old
    write_openood_csv(str(path), first)
    assert (tmp_path / "ood" / "diffood.csv.2").exists() and path.read_bytes() == old


def test_benchmark_networks_are_one_table():
    """compat.NETWORKS names the classes OpenOOD's scripts build; eval's DEFAULT_ARCH has the same modules."""
    from openood_diffood.models.classifiers import build_classifier
    from openood_diffood.openood.compat import BENCHMARKS, DEFAULT_ARCH, NETWORKS, require_openood

    assert set(NETWORKS) == set(BENCHMARKS) == set(DEFAULT_ARCH)
    networks = require_openood("openood.networks")
    for name in ("cifar10", "imagenet200"):
        classes = BENCHMARKS[name][0]
        openood_net = getattr(networks, NETWORKS[name])(num_classes=classes)
        ours = build_classifier(DEFAULT_ARCH[name], classes)
        ours.load_state_dict(openood_net.state_dict())  # strict: the same parameters and buffers
    assert NETWORKS["imagenet200"] == "ResNet18_224x224"


def test_postprocessor_records_its_diffusion_model_and_fingerprint(tmp_path, monkeypatch):
    """DIFFOOD_DIFFUSION (relative here) is recorded resolved, with the fingerprint the score cache keys on, in the
    config OpenOOD's main.py saves; another model gives another fingerprint."""
    import openood_diffood
    from openood_diffood.openood.registry import postprocessor_from_config

    openood_diffood.register()
    write_tiny_diffusion(tmp_path / "model_a")
    write_tiny_diffusion(tmp_path / "model_b", seed=1)
    monkeypatch.chdir(tmp_path)
    net = TinyNet()
    seen = {}
    for name in ("model_a", "model_b"):
        monkeypatch.setenv("DIFFOOD_DIFFUSION", name)
        pp = postprocessor_from_config("diffood", None, "cifar10")
        pp.setup(net)
        recorded = pp.config.postprocessor["provenance"]
        assert recorded["diffusion"] == str(tmp_path / name) and recorded["diffusion_from"] == "DIFFOOD_DIFFUSION"
        independent = openood_diffood.DiffOOD(net, str(tmp_path / name)).identity()["diffusion"]
        assert recorded["diffusion_fingerprint"] == independent
        assert recorded["settings"]["timestep"] == 300 and pp.provenance() == recorded
        seen[name] = independent
    assert seen["model_a"] != seen["model_b"]


def test_leaderboard_writes_provenance_next_to_the_csv(tmp_path):
    import argparse

    from openood_diffood.openood.leaderboard import _write

    args = argparse.Namespace(postprocessor="diffood", save_csv=True, fsood=False)
    runs = [MethodResult("diffood", _openood_metrics(seed).to_dict(orient="index")) for seed in (0, 1)]
    record = {"diffusion": "/models/a", "diffusion_fingerprint": "f" * 32}
    path = _write(runs, {"s0": record, "s1": record}, str(tmp_path), args, spread=True)
    assert path == str(tmp_path / "ood" / "diffood.csv") and Path(path).is_file()
    saved = json.loads((tmp_path / "ood" / "diffood.json").read_text())
    assert saved == {"postprocessor": "diffood", "runs": {"s0": record, "s1": record}}
    args.postprocessor = "msp"
    msp = [MethodResult("msp", run.rows) for run in runs]
    assert _write(msp, {"s0": None, "s1": None}, str(tmp_path), args, spread=True).endswith("msp.csv")
    assert not (tmp_path / "ood" / "msp.json").exists()  # nothing to record for a postprocessor without a model
    args.postprocessor = "diffood_knn"  # the files carry the results' name: what was combined
    combined = [MethodResult("diffood+knn", run.rows) for run in runs]
    assert _write(combined, {"s0": record, "s1": record}, str(tmp_path), args, spread=True).endswith("diffood+knn.csv")


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def test_make_puts_the_start_up_hook_next_to_an_editable_install(tmp_path):
    """The Makefile's own recipe (`make startup-hook`) on a fresh venv holding an editable install of this package:
    `python -m openood.main --help` then works without PYTHONPATH (the .pth files run in name order, setuptools'
    __editable__ one first)."""
    from openood_diffood.openood.compat import openood_checkout

    venv = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    here = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (_site_packages(venv) / "zz_test_dependencies.pth").write_text(f"{here}\n{openood_checkout()}\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    python = str(venv / "bin" / "python")
    res = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(REPO)],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    before = subprocess.run([python, "-m", "openood.main", "--help"], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=300)
    assert before.returncode != 0 and "No module named openood.main" in before.stderr  # editable: no hook
    res = subprocess.run(["make", "-C", str(REPO), "startup-hook", f"VENV={venv}"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in _site_packages(venv).glob("*.pth"))[-2:] == ["openood_diffood.pth",
                                                                               "zz_test_dependencies.pth"]
    after = subprocess.run([python, "-m", "openood.main", "--help"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
    assert "main.py mode" in after.stdout and "eval_ood.py mode" in after.stdout


def test_the_venv_running_the_tests_has_openood_main():
    """`make test` runs the tests in a venv that has the start-up hook: `python -m openood.main` with no
    PYTHONPATH (a venv built by the Makefile before the hook step gets it on the next `make test`)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-m", "openood.main", "--help"], capture_output=True, text=True, env=env,
                         cwd=Path(sys.prefix), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
