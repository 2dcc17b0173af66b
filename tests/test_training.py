"""The ``train`` command (exact resume, loadable output, model card, clear errors), image sources and the demo."""
import argparse
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.utils import load as accelerate_load
from safetensors.torch import load_file

from conftest import TinyNet, openood_spec
from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.evaluate.images import load_images
from openood_diffood.train.arguments import add_train_arguments
from openood_diffood.train.trainer import train_main

#: A tiny UNet trained for a few steps; dropout on, so the restored global RNG state matters too.
TINY = ["--block-out-channels", "8", "16", "--norm-groups", "4", "--layers-per-block", "1", "--attention-levels", "1",
        "--dropout", "0.1", "--steps", "5", "--batch-size", "8", "--checkpoint-every", "2", "--max-timestep", "50",
        "--warmup-steps", "2", "--lr-schedule", "cosine", "--ema-decay", "0.9", "--crop-padding", "1", "--no-progress"]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def write_npz(path: Path, n: int = 24, size: int = 8, num_classes: int = 3, seed: int = 0, **extra) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {"images": rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8),
              "labels": np.arange(n) % num_classes, **extra}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def state(folder: Path) -> dict:
    """Everything a checkpoint holds: Accelerate's model, optimizer and LR scheduler files and the trainer state
    (step, settings, EMA), each loaded as plain tensors and data (``weights_only=True``)."""
    return {"model": load_file(folder / "model.safetensors"),
            **{k: torch.load(folder / f"{k}.bin", weights_only=True) for k in ("optimizer", "scheduler")},
            **torch.load(folder / "trainer_state.pt", weights_only=True)}


def assert_same_tensors(a, b) -> None:
    """Recursively: equal structure, torch.equal on every tensor, == on everything else."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same_tensors(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_tensors(x, y)
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    else:
        assert a == b


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and the same run stopped after 3 of 5 steps and resumed."""
    root = tmp_path_factory.mktemp("train")
    data = write_npz(root / "data.npz")
    full = train_main(parse(data, "-o", root / "full", *TINY))
    stopped = train_main(parse(data, "-o", root / "resumed", "--stop-after", "3", *TINY))
    unet_after_stop = (root / "resumed" / "unet").exists()
    resumed = train_main(parse(data, "-o", root / "resumed", "--resume", *TINY))
    return {"root": root, "data": data, "full": Path(full), "stopped": Path(stopped), "resumed": Path(resumed),
            "unet_after_stop": unet_after_stop}


def test_resume_gives_bit_identical_weights(runs):
    assert runs["stopped"] == runs["root"] / "resumed" / "checkpoints" / "step_000003"
    assert not runs["unet_after_stop"]  # stopping early writes a checkpoint, not a model
    weights = [load_file(runs[k] / "unet" / "diffusion_pytorch_model.safetensors") for k in ("full", "resumed")]
    assert_same_tensors(*weights)
    final = [state(runs[k] / "checkpoints" / "step_000005") for k in ("full", "resumed")]
    assert_same_tensors(*final)  # model, EMA, optimizer, LR scheduler, step, settings
    rng = [accelerate_load(runs[k] / "checkpoints" / "step_000005" / "random_states_0.pkl")  # weights_only=True
           for k in ("full", "resumed")]
    assert torch.equal(rng[0]["torch_manual_seed"], rng[1]["torch_manual_seed"])  # Accelerate's RNG states
    assert final[0]["ema"]["optimization_step"] == 5
    initial = state(runs["full"] / "checkpoints" / "step_000004")["model"]
    assert not all(torch.equal(initial[k], final[0]["model"][k]) for k in initial)  # training moved the weights


def test_different_seed_gives_different_weights(runs):
    other = Path(train_main(parse(runs["data"], "-o", runs["root"] / "seed1", "--seed", "1", *TINY)))
    a, b = (load_file(d / "unet" / "diffusion_pytorch_model.safetensors") for d in (runs["full"], other))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_output_loads_and_scores(runs):
    backend = load_diffusion(runs["full"])
    assert (backend.num_classes, backend.null_class, backend.sample_size) == (3, 3, 8)
    assert backend.num_train_timesteps == 1000
    torch.manual_seed(0)
    net = TinyNet(num_classes=3, channels=1).eval()
    x = (torch.rand(4, 1, 8, 8) - 0.5) / 0.5
    out = DiffOOD(net, runs["full"], mean=(0.5,), std=(0.5,), timestep=20, stride=10, repeats=2).score(x)
    assert out.score.shape == (4,) and torch.isfinite(out.score).all() and (out.score > 0).all()


def test_model_card_and_grids(runs):
    card = (runs["full"] / "README.md").read_text()
    sha = hashlib.sha256(runs["data"].read_bytes()).hexdigest()
    for text in (sha, str(runs["data"]), "| images | `24` |", "| p_uncond | `0.1` |", "| max_timestep | `50` |",
                 "| block_out_channels | `[8, 16]` |", "| lr_schedule | `cosine` |", "openood-diffood 0.1.0",
                 "Optimizer steps: 5"):
        assert text in card
    assert (runs["full"] / "checkpoints" / "step_000004" / "reconstructions.png").stat().st_size > 0
    assert not (runs["full"] / "checkpoints" / "step_000002").exists()  # only the newest two are kept


def test_resume_errors(runs, tmp_path):
    with pytest.raises(ValueError, match="settings differ.*lr"):
        train_main(parse(runs["data"], "-o", runs["root"] / "resumed", "--resume", *TINY, "--lr", "1e-3"))
    with pytest.raises(FileExistsError, match="--resume"):
        train_main(parse(runs["data"], "-o", runs["full"], *TINY))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_main(parse(runs["data"], "-o", tmp_path / "new", "--resume", *TINY))


def test_bad_training_data(tmp_path):
    def run(data):
        return train_main(parse(data, "-o", tmp_path / "out", *TINY))

    with pytest.raises(FileNotFoundError, match="does not exist"):
        run(tmp_path / "missing.npz")
    np.savez(tmp_path / "noimages.npz", pixels=np.zeros((4, 8, 8, 1), np.uint8))
    with pytest.raises(ValueError, match="no 'images' array"):
        run(tmp_path / "noimages.npz")
    with pytest.raises(ValueError, match="out of range"):
        run(write_npz(tmp_path / "range.npz", num_classes=4, classes=np.array(["a", "b", "c"])))
    with pytest.raises(ValueError, match="no labels"):
        run(write_npz(tmp_path / "nolabels.npz", labels=None))
    with pytest.raises(ValueError, match="p-uncond"):
        train_main(parse(write_npz(tmp_path / "ok.npz"), "-o", tmp_path / "o2", *TINY, "--p-uncond", "1.5"))


def test_image_folder_and_imglist(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    for i, (cls, size) in enumerate([("cat", 8), ("cat", 8), ("dog", 8)]):
        (root / "images_classic" / "set" / cls).mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8))
        image.save(root / "images_classic" / "set" / cls / f"{i}.png")
    images, labels, classes = load_images(str(root / "images_classic" / "set"))
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 0, 1] and classes == ["cat", "dog"]
    assert images[2, 0, 0, 0] == 80

    listfile = root / "benchmark_imglist" / "set" / "test.txt"
    listfile.parent.mkdir(parents=True)
    listfile.write_text("set/dog/2.png 1\nset/cat/0.png 0\n")
    found, found_labels, _ = load_images(str(listfile))  # image root inferred from the OpenOOD layout
    assert found_labels.tolist() == [1, 0] and np.array_equal(found[0], images[2])
    same, _, _ = load_images(openood_spec(str(listfile), str(root / "images_classic")))
    assert np.array_equal(same, found)

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "images_classic" / "set" / "dog" / "big.png")
    with pytest.raises(ValueError, match="mixed sizes"):
        load_images(str(root / "images_classic" / "set"))
    resized, _, _ = load_images(str(root / "images_classic" / "set"), size=8)
    assert resized.shape == (4, 8, 8, 3)


# --------------------------------------------------------------------------------------------------- the demo
@pytest.fixture(scope="module")
def demo():
    from openood_diffood.evaluate.demo_data import demo_sets

    return demo_sets()


def test_demo_sets(demo):
    from openood_diffood.models.demo import DEMO_MEAN, DEMO_STD

    for split, per_class in (("train", None), ("val", 25), ("test", 50)):
        images, labels = demo[split]
        assert images.dtype == np.uint8 and images.shape[1:] == (16, 16, 1) and labels.dtype == np.int64
        assert set(labels.tolist()) == set(range(6))
        if per_class:
            assert np.bincount(labels).tolist() == [per_class] * 6
    assert sum(len(demo[s][0]) for s in ("train", "val", "test")) == 1083  # every digit 0-5 of load_digits, once
    assert demo["near"]["digits_6-9"].shape == (300, 16, 16, 1)
    assert demo["far"]["photo_patches"].shape == (300, 16, 16, 1)
    assert demo["val_near"]["digits_6-9"].shape == demo["val_far"]["photo_patches"].shape == (100, 16, 16, 1)
    pixels = demo["train"][0] / 255.0
    assert pixels.mean() == pytest.approx(DEMO_MEAN[0], abs=1e-3)
    assert pixels.std() == pytest.approx(DEMO_STD[0], abs=1e-3)
    far = demo["far"]["photo_patches"] / 255.0
    assert abs(far.mean() - pixels.mean()) < 0.05  # intensity-matched to the digits


def test_demo_assets_load_and_classify(demo):
    from openood_diffood.models.demo import DEMO_MEAN, DEMO_STD, load_demo_models

    net, diffusion_dir = load_demo_models()
    assert not net.training
    images, labels = demo["test"]
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - DEMO_MEAN[0]) / DEMO_STD[0]
    with torch.no_grad():
        accuracy = (net(x).argmax(1).numpy() == labels).mean()
    assert accuracy > 0.95
    backend = load_diffusion(diffusion_dir)
    assert (backend.num_classes, backend.null_class, backend.sample_size) == (6, 6, 16)
    assert os.path.isfile(os.path.join(diffusion_dir, "README.md"))
