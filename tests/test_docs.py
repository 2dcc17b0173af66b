"""The README is tested: every command block of README.md and docs/*.md, read from the docs at test time, runs
small on the shared data (tests/docs_commands.py says how), with ``python`` the non-editable install that has the
start-up hook. A block the tests cannot classify fails with what to do; blocks that need a GPU or a download say
so in the docs and are skipped with that reason."""
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, shared_data_dir, write_openood_data_root_from_shared
from docs_commands import (Block, DocsError, command_kind, logical_lines, outputs_of, python_script, read_blocks,
                           shell_script, split)
from openood_diffood.openood.compat import openood_checkout
from openood_diffood.openood.registry import config_path
from test_openood_main import installed  # noqa: F401  (the non-editable install, start-up hook included)
from test_convert_ddim import official_config as ddim_config, write_checkpoint as write_ddim
from test_convert_iddpm import ARCH as IDDPM_ARCH, official_config as iddpm_config
from test_convert_ldm import SCALE, ldm_yaml, reference_ldm

BLOCKS = read_blocks(REPO)
RUNNABLE = [b for b in BLOCKS if b.marker != "output"]
#: Cheap settings of the config root's diffood.yml (eval_ood.py mode and the Evaluator read it from there).
CHEAP = dict(timestep=100, stride=50, repeats=1, guidance=3.0)


def _lines(block: Block):
    return [split(line) for line in logical_lines(block.text)]


def _param(block: Block):
    """Blocks that run a command are slow; those that only check (pip, make test) are not."""
    light = block.lang != "python" and all(command_kind(t) in ("comment", "pip", "shell") or t == ["make", "test"]
                                           for t in _lines(block))
    return pytest.param(block, id=block.where, marks=() if light else pytest.mark.slow)


def test_every_block_is_classified():
    """A new block is a shell or Python block whose every line the tests know, or it carries a marker."""
    problems = []
    for block in BLOCKS:
        if block.marker:
            if block.marker == "skip" and not any(w in block.reason for w in ("GPU", "download")):
                problems.append(f"{block.where}: a skip must say it needs a GPU or a download, not {block.reason!r}")
            continue
        if block.lang not in ("bash", "sh", "python"):
            problems.append(f"{block.where}: a ```{block.lang} block without a docs-test marker: if it is output, "
                            "put `<!-- docs-test: output (COMMAND) -->` before it; if commands, say ```bash")
        elif block.lang != "python":
            problems += [f"{block.where}: no docs-test rule for {' '.join(t)!r}" for t in _lines(block)
                         if command_kind(t) == "unknown"]
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def site(shared_data, tiny_cifar10_diffusion, tmp_path_factory):
    """What the commands' placeholders stand for: the shared data and classifier, small stand-ins of the paper's
    checkpoints and of the diffusion model (a tiny random 10-class UNet: these tests check that the commands run;
    the reference model's scores are tested in test_real_data.py and the benchmarks), and (with OpenOOD) a data
    root of real images in OpenOOD's layout and OpenOOD's configs with a cheap diffood.yml."""
    root = tmp_path_factory.mktemp("docs")
    sources = root / "sources"
    sources.mkdir()
    for classes in (10, 100):
        _, ckpt, cfg = write_ddim(sources, classes)
        os.replace(ckpt, sources / f"ddim{classes}.ckpt")
        os.replace(cfg, sources / f"ddim{classes}.yml")
    _write_iddpm(sources)
    _write_ldm(sources)
    world = {"repo": str(REPO), "data": str(shared_data), "ckpt": str(shared_data / "weights" /
                                                                       "cifar10_resnet18_32x32.pt"),
             "diffusion": str(tiny_cifar10_diffusion), "sources": str(sources)}
    checkout = openood_checkout()
    if checkout is not None:
        write_openood_data_root_from_shared(root / "data", shared_data)
        _write_cifar100_train_folder(root / "data" / "images_classic" / "cifar100" / "train", shared_data)
        shutil.copytree(checkout / "configs", root / "configs")
        cfg = yaml.safe_load(open(config_path("diffood")))
        cfg["postprocessor"]["postprocessor_args"].update(CHEAP)
        (root / "configs" / "postprocessors" / "diffood.yml").write_text(yaml.safe_dump(cfg))
    return {"root": root, "world": world, "openood": checkout is not None}


def _write_cifar100_train_folder(folder: Path, shared: Path, classes: int = 3, per_class: int = 4) -> None:
    """OpenOOD's ``images_classic/cifar100/train/<class>/`` (an ImageFolder), a few real CIFAR-100 images."""
    from PIL import Image

    with np.load(shared / "cifar100_test.npz", allow_pickle=False) as f:
        images, labels, names = f["images"], f["labels"], f["classes"]
    for label in range(classes):
        (folder / str(names[label])).mkdir(parents=True)
        for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
            Image.fromarray(images[index]).save(folder / str(names[label]) / f"{i}.png")


def _write_iddpm(folder: Path) -> None:
    import torch
    from reference_nets import random_weights
    from reference_nets.openai import UNetModel

    net = random_weights(UNetModel(**IDDPM_ARCH, num_classes=3, learned_sigma=True), seed=7)
    torch.save(net.state_dict(), folder / "iddpm.ckpt")
    (folder / "iddpm.yml").write_text(yaml.safe_dump(iddpm_config()))


def _write_ldm(folder: Path) -> None:
    from reference_nets.ldm import save_lightning_checkpoint

    save_lightning_checkpoint(reference_ldm(scale_factor=SCALE), folder / "ldm.ckpt")
    (folder / "ldm.yaml").write_text(yaml.safe_dump(ldm_yaml()))


def _workdir(site, tmp_path: Path) -> dict:
    """A user's folder: data/ and configs/ (OpenOOD's), results/runs/s0/best.ckpt (an OpenOOD training run)."""
    for name in ("data", "configs"):
        if (site["root"] / name).exists():
            (tmp_path / name).symlink_to(site["root"] / name)
    run = tmp_path / "results" / "runs" / "s0"
    run.mkdir(parents=True)
    (run / "best.ckpt").symlink_to(site["world"]["ckpt"])
    return {**site["world"], "runs": str(run.parent)}


_RESULTS = {}


def run_block(block: Block, site, installed, tmp_path: Path):  # noqa: F811
    """(the finished process, the script run): the block, run small in ``tmp_path`` by bash (shell) or the
    installed Python (snippets); cached per block."""
    if block.where in _RESULTS:
        return _RESULTS[block.where]
    if not site["openood"] and ("openood" in block.text.replace("openood_diffood", "") or "Evaluator" in block.text):
        pytest.skip("OpenOOD is not installed (make test installs it)")
    world = _workdir(site, tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DIFFOOD_DIFFUSION")}
    env.update(PATH=f"{installed.parent}{os.pathsep}{env['PATH']}", DIFFOOD_DATA=world["data"], MPLBACKEND="Agg")
    if block.lang == "python":
        env["DIFFOOD_DIFFUSION"] = world["diffusion"]  # the section's `export DIFFOOD_DIFFUSION`
        script = python_script(block, world, tmp_path)
        cmd = [str(installed), "-c", script]
    else:
        script = shell_script(block, world, tmp_path)
        cmd = ["bash", "-c", script]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    _RESULTS[block.where] = res, script, tmp_path
    return _RESULTS[block.where]


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE])
def test_block_runs_small(block, site, installed, tmp_path):  # noqa: F811
    if block.marker == "skip":
        pytest.skip(f"{block.where}: {block.reason}")
    res, script, cwd = run_block(block, site, installed, tmp_path)
    assert res.returncode == 0, f"{block.where} failed, as run:\n{script}\n--- stderr:\n{res.stderr[-4000:]}"
    if block.lang == "python":
        assert "docs-test: snippet finished" in res.stdout
    for line in logical_lines(block.text):  # every output the block names was written
        for out in outputs_of(line):
            assert (cwd / out).is_dir() and any((cwd / out).iterdir()), f"{block.where}: {line!r} wrote no {out}"


@pytest.mark.slow
@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in BLOCKS if b.marker == "output"])
def test_output_block_is_what_its_command_prints(block, site, installed, tmp_path):  # noqa: F811
    """An output block's header and first column are those its command prints (run small)."""
    source = next((b for b in RUNNABLE if b.doc == block.doc and block.reason in logical_lines(b.text)
                   or any(line.split("#")[0].strip() == block.reason for line in logical_lines(b.text))), None)
    assert source is not None, f"{block.where}: no block of {block.doc} has the line {block.reason!r}"
    res = run_block(source, site, installed, tmp_path)[0]
    assert res.returncode == 0, res.stderr[-3000:]
    shown = [line.split() for line in block.text.splitlines() if line.strip()]
    printed = [line.split() for line in res.stdout.strip().split("\n\n")[-1].splitlines()]
    assert printed[0] == shown[0], f"{block.where}: the header printed is {printed[0]}"
    assert [row[0] for row in printed[1:]] == [row[0] for row in shown[1:]]
    assert [len(row) for row in printed[1:]] == [len(row) for row in shown[1:]]  # the same columns per row


def test_unknown_paths_and_commands_fail_with_what_to_do(tmp_path):
    """The harness itself: a path or a command no table knows is an error naming the fix."""
    world = {"repo": str(REPO), "data": str(shared_data_dir()), "ckpt": "c", "diffusion": "d", "sources": "s",
             "runs": "r"}
    with pytest.raises(DocsError, match="path 'my_model.ckpt' is not in tests/docs_commands.py PATHS"):
        shell_script(Block("X.md", 1, "bash", "python -m openood_diffood eval --ckpt my_model.ckpt"), world, tmp_path)
    with pytest.raises(DocsError, match="no docs-test rule runs 'rm -rf x'"):
        shell_script(Block("X.md", 1, "bash", "rm -rf x"), world, tmp_path)
    with pytest.raises(DocsError, match="mark it `<!-- docs-test: downloads"):
        shell_script(Block("X.md", 1, "bash", "wget http://x/y.ckpt"), world, tmp_path)
    with pytest.raises(DocsError, match="'torch==2.0' is not what the Makefile installs"):
        shell_script(Block("X.md", 1, "bash", "pip install torch==2.0"), world, tmp_path)
    with pytest.raises(DocsError, match="keeps a `...` placeholder"):
        python_script(Block("X.md", 1, "python", "model = ..."), world, tmp_path)
    script = shell_script(Block("X.md", 1, "bash", "python -m openood_diffood eval --ckpt best.ckpt \\\n"
                                                   "    --limit 1000 --out runs/x  # small"), world, tmp_path)
    assert shlex.split(script.splitlines()[1]) == [
        "python", "-m", "openood_diffood", "eval", "--ckpt", "c", "--limit", "12", "--out", "runs/x",
        "--fit-limit", "60", "--timestep", "100", "--stride", "50", "--repeats", "1", "--no-progress"]
