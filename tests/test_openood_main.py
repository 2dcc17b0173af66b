"""Where OpenOOD's users run DiffOOD: OpenOOD's own scripts/eval_ood.py (unmodified, leaderboard pickles and all)
and ``python -m openood.main`` in both of its modes, from a non-editable install, on this CPU-only machine."""
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, write_openood_data_root, write_tiny_diffusion
from openood_diffood.openood.compat import openood_checkout, require_openood
from openood_diffood.openood.registry import config_path

TESTS = Path(__file__).resolve().parent
#: Cheap DiffOOD settings, APS on over two timesteps (OpenOOD picks one on its val sets).
CHEAP = dict(timestep=40, stride=20, repeats=2, guidance=3.0, batch_size=8)
SWEEP = {"timestep_list": [20, 40], "guidance_list": [3.0], "repeats_list": [2]}


@pytest.fixture(scope="module")
def openood_copy(tmp_path_factory):
    """A copy of the pinned OpenOOD checkout's scripts/ and configs/ (eval_ood.py reads data/ and configs/ next to
    itself), a small data root, two training runs s0/s1 of OpenOOD's ResNet18_32x32, a tiny 10-class diffusion
    model, and a diffood.yml with APS on."""
    root = tmp_path_factory.mktemp("openood") / "OpenOOD"
    checkout = openood_checkout()
    assert checkout is not None, "OpenOOD must be installed from its checkout (make test does it)"
    shutil.copytree(checkout / "scripts", root / "scripts")
    shutil.copytree(checkout / "configs", root / "configs")
    write_openood_data_root(root / "data")
    net = require_openood("openood.networks").ResNet18_32x32
    for seed in (0, 1):
        torch.manual_seed(seed)
        (root / "runs" / f"s{seed}").mkdir(parents=True)
        torch.save(net(num_classes=10).state_dict(), root / "runs" / f"s{seed}" / "best.ckpt")
    cfg = yaml.safe_load(open(config_path("diffood")))
    cfg["postprocessor"]["APS_mode"] = True
    cfg["postprocessor"]["postprocessor_args"].update(CHEAP)
    cfg["postprocessor"]["postprocessor_sweep"] = SWEEP
    (root / "configs" / "postprocessors" / "diffood.yml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "diffusion": write_tiny_diffusion(root / "diffusion", num_classes=10, sample_size=32)}


def _env(openood_copy, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO)]),
            "DIFFOOD_DIFFUSION": str(openood_copy["diffusion"]), **extra}


def _eval_ood_py(openood_copy, runs: Path, *args: str) -> subprocess.CompletedProcess:
    """OpenOOD's scripts/eval_ood.py itself, run unmodified (the test shims make .cuda() a no-op on this CPU)."""
    script = openood_copy["root"] / "scripts" / "eval_ood.py"
    code = textwrap.dedent(f"""
        import runpy, sys, openood_shims, openood_diffood
        openood_shims.install(); openood_diffood.register()
        sys.argv = [{str(script)!r}, "--root", {str(runs)!r}, *{list(args)!r}]
        runpy.run_path({str(script)!r}, run_name="__main__")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env=_env(openood_copy), cwd=openood_copy["root"])


@pytest.fixture(scope="module")
def script_runs(openood_copy, tmp_path_factory):
    """The runs after OpenOOD's eval_ood.py scored them with diffood (APS on), and its output."""
    runs = tmp_path_factory.mktemp("script") / "runs"
    shutil.copytree(openood_copy["root"] / "runs", runs)
    return runs, _eval_ood_py(openood_copy, runs, "--postprocessor", "diffood", "--save-csv")


@pytest.mark.slow
def test_openood_eval_ood_py_runs_diffood_twice_the_second_time_from_its_pickle(openood_copy, script_runs, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(script_runs[0], runs)
    first = script_runs[1]
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("Hyperparam:") == 2 * len(SWEEP["timestep_list"])  # APS in each run
    csv = (runs / "ood" / "diffood.csv").read_text(encoding="utf-8")
    assert "\u00b1" in csv and "nearood" in csv and "farood" in csv
    pkl = runs / "s0" / "postprocessors" / "diffood.pkl"
    assert pkl.stat().st_size < 1_000_000  # the settings, never the models
    pp = pickle.loads(pkl.read_bytes())
    assert pp.engine is None and pp.hyperparam_search_done and pp.settings.timestep in SWEEP["timestep_list"]
    (runs / "ood" / "diffood.csv").unlink()
    second = _eval_ood_py(openood_copy, runs, "--postprocessor", "diffood", "--save-csv")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Hyperparam:" not in second.stdout  # APS was not run again: the pickle holds its choice
    assert (runs / "ood" / "diffood.csv").read_text(encoding="utf-8") == csv


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh virtual environment with this package installed non-editably (its .pth start-up hook included);
    torch, OpenOOD and the rest come from the test environment through a path file."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(site), str(REPO)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    here = next(p for p in sys.path if p.endswith("site-packages") and Path(p, "torch").is_dir())
    (site / "zz_test_dependencies.pth").write_text(f"{here}\n{openood_checkout()}\n")
    assert (site / "openood_diffood.pth").is_file()
    return venv / "bin" / "python"


def _openood_main(python, *args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "openood.main", *args], capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in env.items() if k != "PYTHONPATH"}, cwd=cwd)


def test_openood_main_exists_only_through_the_start_up_hook(installed, openood_copy, tmp_path):
    env = _env(openood_copy)
    res = _openood_main(installed, "--help", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "main.py mode" in res.stdout and "eval_ood.py mode" in res.stdout
    off = _openood_main(installed, "--help", env={**env, "OPENOOD_DIFFOOD_AUTOREGISTER": "0"}, cwd=tmp_path)
    assert off.returncode != 0 and "No module named openood.main" in off.stderr


@pytest.mark.slow
def test_openood_main_eval_mode_writes_what_eval_ood_py_writes(installed, openood_copy, script_runs, tmp_path):
    """The same CSV as OpenOOD's own script on the same runs, and OpenOOD's baselines by name."""
    root = openood_copy["root"]
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    script = script_runs[0]
    common = ["--data-root", str(root / "data"), "--config-root", str(root / "configs"), "--num-workers", "0",
              "--save-csv"]
    res = _openood_main(installed, "--root", str(runs), "--postprocessor", "diffood", *common,
                        env=_env(openood_copy), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stderr.count("CUDA is not available") == 1  # the CPU path says so once
    assert (runs / "ood" / "diffood.csv").read_text() == (script / "ood" / "diffood.csv").read_text()
    assert (runs / "s1" / "postprocessors" / "diffood.pkl").is_file()
    for name in ("msp", "knn"):
        res = _openood_main(installed, "--root", str(runs), "--postprocessor", name, *common,
                            env=_env(openood_copy), cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
        assert "\u00b1" in (runs / "ood" / f"{name}.csv").read_text()
    # dotted overrides of the postprocessor's config: APS off, one repeat (a run without a saved pickle)
    fresh = tmp_path / "fresh"
    shutil.copytree(root / "runs", fresh, ignore=shutil.ignore_patterns("s1"))
    res = _openood_main(installed, "--root", str(fresh), "--postprocessor", "diffood", *common[:-1],
                        "--postprocessor.APS_mode", "false", "--postprocessor.postprocessor_args.repeats", "1",
                        env=_env(openood_copy), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Hyperparam:" not in res.stdout and not (fresh / "s0" / "postprocessors").exists()  # no APS, no pickle
    # the shipped combination config as it ships (timestep list, KNN fitted on ID train), one repeat
    res = _openood_main(installed, "--root", str(fresh), "--postprocessor", "diffood_knn", *common,
                        "--postprocessor.postprocessor_args.repeats", "1", env=_env(openood_copy), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "AUROC" in (fresh / "ood" / "diffood+knn.csv").read_text()  # named for what it combines


@pytest.mark.slow
def test_openood_main_pipeline_mode_runs_openood_test_ood(installed, openood_copy, tmp_path):
    """main.py mode: OpenOOD's config merging and its test_ood pipeline, with --postprocessor diffood."""
    root = openood_copy["root"]
    for folder in ("configs", "data"):
        (tmp_path / folder).symlink_to(root / folder)
    configs = ["configs/datasets/cifar10/cifar10.yml", "configs/datasets/cifar10/cifar10_ood.yml",
               "configs/networks/resnet18_32x32.yml", "configs/pipelines/test/test_ood.yml",
               "configs/preprocessors/base_preprocessor.yml"]  # OpenOOD's scripts/ood/*/cifar10_test_ood_*.sh
    res = _openood_main(installed, "--config", *configs, "--postprocessor", "diffood", "--num_workers", "0",
                        "--network.checkpoint", str(root / "runs" / "s0" / "best.ckpt"),
                        "--postprocessor.postprocessor_args.timestep", "20", "--dataset.test.batch_size", "4",
                        env=_env(openood_copy), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Completed!" in res.stdout and res.stderr.count("CUDA is not available") == 1
    assert list(tmp_path.glob("results/*diffood*/s0/ood/ood.csv"))


@pytest.mark.parametrize("args,match", [
    (["--root", "{tmp}/empty"], "has no s\\* run folders"),
    (["--root", "{runs}", "--postprocessor", "nosuch"], "unknown --postprocessor 'nosuch'"),
    (["--root", "{runs}", "--data-root", "{tmp}"], "lacks .* image lists"),
    (["--config", "{configs}/networks/resnet18_32x32.yml"], "name no pipeline"),
    (["--root", "{runs}", "--postprocessor", "diffood", "--postprocessor.postprocessor_args.timesteps", "3"],
     "unknown postprocessor.postprocessor_args key 'timesteps' \\(did you mean 'timestep'\\?\\)"),
    ([], "nothing to run"),
    (["--root", "{runs}", "--id-data", "imagenet200", "--postprocessor", "diffood_imagenet"],
     "lacks .* Evaluator reads for imagenet200 \\(e.g. benchmark_imglist/imagenet200/"),
    (["--id-data", "imagenet"], "evaluates one checkpoint: give --ckpt-path"),
    (["--id-data", "imagenet", "--ckpt-path", "{tmp}/none.pth", "--arch", "swin-t"], "never downloads"),
])
def test_bad_input_is_one_error_line_before_any_scoring(installed, openood_copy, tmp_path, args, match):
    import re

    root = openood_copy["root"]
    (tmp_path / "empty").mkdir()
    fill = dict(tmp=tmp_path, runs=root / "runs", configs=root / "configs")
    args = [a.format(**fill) for a in args]
    if "--data-root" not in args:
        args += ["--data-root", str(root / "data"), "--config-root", str(root / "configs")]
    res = _openood_main(installed, *args, env=_env(openood_copy), cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and re.search(match, last), res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "Performing inference" not in res.stdout
