"""benchmarks/dm_quality.py end to end at tiny sizes, and the trainer's checkpoint export it relies on."""
import argparse
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import REPO
from openood_diffood import load_diffusion
from openood_diffood.train.arguments import add_train_arguments
from openood_diffood.train.data import DEMO_DATA
from openood_diffood.train.trainer import export_checkpoint, train_main

TINY = ["--block-out-channels", "8", "16", "--norm-groups", "4", "--layers-per-block", "1", "--attention-levels",
        "--steps", "5", "--batch-size", "16", "--checkpoint-every", "2", "--keep-checkpoints", "0",
        "--max-timestep", "300", "--warmup-steps", "1", "--ema-decay", "0.9", "--no-flip", "--no-progress"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def unet_weights(model_dir) -> dict:
    return load_file(os.path.join(model_dir, "unet", "diffusion_pytorch_model.safetensors"))


def test_export_checkpoint_writes_the_ema_weights_of_that_step(tmp_path):
    args = parse(DEMO_DATA, "-o", tmp_path / "run", *TINY)
    train_main(args)
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000002", "step_000004", "step_000005"]
    # the last checkpoint exports exactly what the run wrote at its end
    export_checkpoint(args, str(ckpts / "step_000005"), str(tmp_path / "at5"))
    final, at5 = unet_weights(tmp_path / "run"), unet_weights(tmp_path / "at5")
    assert final.keys() == at5.keys() and all(torch.equal(final[k], at5[k]) for k in final)
    # an earlier one: its EMA shadow weights, in the UNet's parameter order, and a model card naming its step
    out = export_checkpoint(args, str(ckpts / "step_000002"), str(tmp_path / "at2"))
    backend = load_diffusion(out)
    state = torch.load(ckpts / "step_000002" / "trainer_state.pt", weights_only=True)
    params = list(backend.unet.parameters())
    assert len(params) == len(state["ema"]["shadow_params"])
    assert all(torch.equal(p, s) for p, s in zip(params, state["ema"]["shadow_params"]))
    assert not all(torch.equal(p, s) for p, s in zip(params, load_diffusion(str(tmp_path / "at5")).unet.parameters()))
    assert backend.max_timestep == 300
    assert "Optimizer steps: 2." in (tmp_path / "at2" / "README.md").read_text()


def run_dm_quality(tmp_path, *extra):
    cmd = [sys.executable, "-m", "benchmarks.dm_quality", "--lengths", "2,4", "--channels", "8", "16",
           "--train-extra=--batch-size 16 --norm-groups 4", "--limit", "4", "--work", str(tmp_path / "work"),
           "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "--tag", "t", "--threads", "2",
           "--resamples", "200", *extra]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / "out" / "dm_quality_t.json").read_text())


def test_dm_quality_runs_end_to_end_with_every_cell_finite(tmp_path):
    payload = run_dm_quality(tmp_path)
    assert list(payload["rows"]) == ["base 2", "base 4", "wide 4"]
    assert payload["parameters"]["wide 4"] > 3 * payload["parameters"]["base 4"]  # twice the channels
    assert set(payload["baselines"]) == {"msp", "vim", "knn"}
    cells = ("near AUROC", "far AUROC", "near FPR@95", "far FPR@95")
    for name, row in {**payload["rows"], **payload["baselines"]}.items():
        assert set(cells) <= set(row), name
        for cell, (value, low, high) in row.items():
            assert all(math.isfinite(v) for v in (value, low, high)) and low <= value <= high, (name, cell)
    assert len(payload["sweep"]["cells"]) == 9
    meta = payload["meta"]
    assert meta["compute_seconds_total"] > 0 and len(meta["git_commit"]) >= 40
    assert meta["trained_now_seconds"] > 0
    assert (tmp_path / "out" / "dm_quality_t.png").stat().st_size > 10_000
    assert "| base 4 " in (tmp_path / "out" / "dm_quality_t.md").read_text()
    # a rerun trains nothing and computes no round trip
    chunks = sorted(p.name for p in (tmp_path / "cache").rglob("chunk-*.npz"))
    again = run_dm_quality(tmp_path)
    assert again["meta"]["trained_now_seconds"] == 0
    assert sorted(p.name for p in (tmp_path / "cache").rglob("chunk-*.npz")) == chunks
    assert again["rows"] == payload["rows"]


@pytest.mark.parametrize("bad", ["--lengths=4,x"])
def test_dm_quality_rejects_bad_lengths(bad):
    res = subprocess.run([sys.executable, "-m", "benchmarks.dm_quality", bad], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "--lengths" in res.stderr
