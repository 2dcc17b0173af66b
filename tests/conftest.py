"""Shared fixtures: tiny diffusers models written to disk, tiny classifiers, and the shared real data."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, UNet2DModel
from torch import nn

from openood_diffood.method.normalization import DATASET_STATS
from openood_diffood.models.networks import cifar_resnet

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$DIFFOOD_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("DIFFOOD_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "cifar10_test.npz").is_file():
        pytest.skip(f"shared real data not found at {path} (set DIFFOOD_DATA to the folder holding cifar10_test.npz)")
    return path


def tiny_scheduler() -> DDIMScheduler:
    """The linear-beta scheduler of the tiny latent models."""
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                         clip_sample=False)


def _vae(latent_channels=4) -> AutoencoderKL:
    """Four resolution levels: downsampling factor 8, as the Stable Diffusion VAE of DiT."""
    return AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=(8, 8, 8, 8), latent_channels=latent_channels, norm_num_groups=4,
                         sample_size=256, scaling_factor=0.18215)


def _perturb(model, scale=0.05):
    """Random but not zero-initialised outputs (DiT zero-inits its final layer and adaLN gates)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    return model


def write_tiny_dit(path: Path, classes=10, seed=0) -> Path:
    """transformer/ + vae/ + scheduler/ + model_index.json, as DiTPipeline.save_pretrained writes them."""
    torch.manual_seed(seed)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=2, sample_size=32, patch_size=2, num_embeds_ada_norm=classes)
    DiTPipeline(transformer=_perturb(dit), vae=_vae(), scheduler=tiny_scheduler()).save_pretrained(path)
    return path


def write_tiny_latent_unet(path: Path, classes=3, in_channels=4, seed=0) -> Path:
    """unet/ (class-conditional UNet2DModel on 32x32 latents) + vae/ + scheduler/."""
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=32, in_channels=in_channels, out_channels=in_channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=classes + 1)
    _perturb(unet).save_pretrained(path / "unet")
    _vae().save_pretrained(path / "vae")
    tiny_scheduler().save_pretrained(path / "scheduler")
    return path


def imagenet_normalized(x01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] normalized with ImageNet's statistics."""
    mean, std = DATASET_STATS["imagenet"]
    return (x01 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def imagenet_images(n=2, size=224, seed=3) -> torch.Tensor:
    """``n`` random normalized ImageNet-size images."""
    return imagenet_normalized(torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)))


def write_tiny_diffusion(path: Path, num_classes=3, sample_size=8, channels=3, seed=0) -> Path:
    """A tiny randomly initialised UNet2DModel (+ DDPMScheduler) saved with save_pretrained.

    num_classes=None writes an unconditional model; otherwise num_class_embeds = num_classes + 1 (null last).
    """
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       num_class_embeds=None if num_classes is None else num_classes + 1)
    with torch.no_grad():  # random but not tiny outputs, so that denoising visibly moves the sample
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unet.save_pretrained(path / "unet")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02).save_pretrained(
        path / "scheduler")
    return path


class TinyNet(nn.Module):
    """A small generic classifier (not OpenOOD-style): conv stages named layer1/layer2, then a Linear head."""

    def __init__(self, num_classes=3, channels=3):
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(x)).mean((2, 3)))


@pytest.fixture(scope="session")
def tiny_diffusion_dir(tmp_path_factory) -> Path:
    return write_tiny_diffusion(tmp_path_factory.mktemp("tiny_diffusion"))


@pytest.fixture(scope="session")
def tiny_cifar10_diffusion(tmp_path_factory) -> Path:
    """A tiny random class-conditional UNet on CIFAR-10's 32x32 RGB with 10 classes + null: a fast stand-in for the
    shared reference model where the plumbing, not the numbers, is under test."""
    return write_tiny_diffusion(tmp_path_factory.mktemp("tiny_cifar10_diffusion"), num_classes=10, sample_size=32)


@pytest.fixture()
def tiny_net() -> nn.Module:
    torch.manual_seed(1)
    return TinyNet().eval()


@pytest.fixture()
def images() -> torch.Tensor:
    """8 normalized (CIFAR-10 statistics) 8x8 images made from random pixels in [0, 1]."""
    g = torch.Generator().manual_seed(2)
    x01 = torch.rand(8, 3, 8, 8, generator=g)
    mean = torch.tensor((0.4914, 0.4822, 0.4465)).view(1, 3, 1, 1)
    std = torch.tensor((0.2470, 0.2435, 0.2616)).view(1, 3, 1, 1)
    return (x01 - mean) / std


def load_npz_normalized(path: Path, idx: np.ndarray, mean, std) -> torch.Tensor:
    """Rows ``idx`` of an .npz of uint8 NHWC images, as normalized float NCHW."""
    with np.load(path, allow_pickle=False) as f:
        x = torch.from_numpy(f["images"][idx]).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


class DictDataset(torch.utils.data.Dataset):
    """A map-style dataset of OpenOOD-style samples ({"data": image, "label": int})."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"data": self.x[i], "label": int(self.y[i])}


def write_openood_data_root(root: Path, n_per_list: int = 3, id_data: str = "cifar10", images=None,
                            path_of=None) -> None:
    """Every imglist OpenOOD's ``id_data`` benchmark reads, each naming ``n_per_list`` 32x32 PNGs in OpenOOD's layout
    (``<dataset>/<split>/...`` under the list's data_dir; ID and CSID lists labelled, OOD lists -1), and a non-empty
    folder per dataset, so that OpenOOD's Evaluator downloads nothing. ``images(imglist_path, n)`` gives a list's
    (uint8 N x H x W x 3 images, labels); default: random pixels, ID labels i % 10. ``path_of(imglist_path, i,
    label)`` names image i of a list relative to its data_dir (None: the default)."""
    from PIL import Image

    from openood_diffood.openood.compat import require_openood

    datasets = require_openood("openood.evaluation_api.datasets")
    DATA_INFO, benchmarks_dict, dir_dict = datasets.DATA_INFO, datasets.benchmarks_dict, datasets.dir_dict

    rng = np.random.default_rng(0)
    entries = []

    def walk(node, is_id):
        if isinstance(node, dict):
            if "imglist_path" in node:
                entries.append((node, is_id))
            for v in node.values():
                walk(v, is_id)

    for part, node in DATA_INFO[id_data].items():
        walk(node, part in ("id", "csid"))
    for name in benchmarks_dict[id_data]:
        folder = next(k for k, v in dir_dict.items() if name in v)
        (root / folder / name).mkdir(parents=True, exist_ok=True)
        (root / folder / name / "present").touch()  # a non-empty folder: OpenOOD downloads nothing
    for e, is_id in entries:
        lst = root / e["imglist_path"]
        lst.parent.mkdir(parents=True, exist_ok=True)
        split, dataset = lst.stem.split("_", 1)
        if images is None:
            pixels, labels = rng.integers(0, 256, (n_per_list, 32, 32, 3), dtype=np.uint8), np.arange(n_per_list) % 10
        else:
            pixels, labels = images(e["imglist_path"], n_per_list)
        lines = []
        for i, (pixel, label) in enumerate(zip(pixels, labels)):
            rel = (path_of and path_of(e["imglist_path"], i, int(label))) or \
                f"{dataset}/{split}/{lst.parent.name}_{i:04d}.png"
            (root / e["data_dir"] / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixel).save(root / e["data_dir"] / rel)
            lines.append(f"{rel} {int(label) if is_id else -1}")
        lst.write_text("\n".join(lines) + "\n")


def rgb_images(n, seed, size=8, shift=0):
    """``n`` random uint8 RGB images (N, size, size, 3) around grey level 128 + shift."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128 + shift, 50, (n, size, size, 3)), 0, 255).astype(np.uint8)


def save_npz(path, images, labels=None):
    """An .npz with ``images`` (and ``labels``) as the eval command reads it; returns its path as a string."""
    arrays = {"images": images} if labels is None else {"images": images, "labels": np.asarray(labels)}
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny diffusion model, a 3-class CIFAR ResNet-20 (two OpenOOD-style runs s0/s1) and tiny .npz sets."""
    root = tmp_path_factory.mktemp("cli")
    write_tiny_diffusion(root / "diffusion")
    for seed in (0, 1):
        torch.manual_seed(seed)
        (root / "runs" / f"s{seed}").mkdir(parents=True)
        torch.save(cifar_resnet(20, num_classes=3).state_dict(), root / "runs" / f"s{seed}" / "best.ckpt")
    labels = np.arange(12) % 3
    return {
        "root": root,
        "ckpt": str(root / "runs" / "s0" / "best.ckpt"),
        "id": save_npz(root / "id.npz", rgb_images(12, 0), labels),
        "near": save_npz(root / "near.npz", rgb_images(12, 1, shift=40)),
        "far": save_npz(root / "far.npz", rgb_images(12, 2, shift=-90)),
        "fit": save_npz(root / "fit.npz", rgb_images(60, 3), np.arange(60) % 3),
    }


def copy_openood_checkout(root: Path, postprocessor_args: dict, sweep: dict, name: str = "diffood",
                          aps: bool = True) -> Path:
    """A copy of the pinned OpenOOD checkout's scripts/ and configs/ at ``root`` (scripts/eval_ood.py reads data/ and
    configs/ next to itself) whose configs/postprocessors/<name>.yml (the packaged ``name`` config) has APS on
    (``aps``) over ``sweep`` and ``postprocessor_args`` changed; returns ``root``."""
    import shutil

    import yaml

    from openood_diffood.openood.compat import openood_checkout
    from openood_diffood.openood.registry import config_path

    checkout = openood_checkout()
    assert checkout is not None, "OpenOOD must be installed from its checkout (make test does it)"
    for folder in ("scripts", "configs"):
        shutil.copytree(checkout / folder, root / folder)
    cfg = yaml.safe_load(open(config_path(name)))
    cfg["postprocessor"]["APS_mode"] = aps
    cfg["postprocessor"]["postprocessor_args"].update(postprocessor_args)
    cfg["postprocessor"]["postprocessor_sweep"] = sweep
    (root / "configs" / "postprocessors" / f"{name}.yml").write_text(yaml.safe_dump(cfg))
    return root


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a real GPU: they run where CUDA is available and skip, saying so, elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked cuda): runs on a GPU machine, e.g. by "
                                   "benchmarks/device_check.sh")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


#: Which shared .npz fills an OpenOOD image list, by the list's file name (lists of other sets keep random images).
SHARED_SOURCES = (("train_cifar10", "cifar10_train_10k.npz"), ("cifar100", "cifar100_test.npz"),
                  ("cifar10", "cifar10_test.npz"), ("tin", "tin_val_32.npz"), ("mnist", "mnist_test_32.npz"))


def write_openood_data_root_from_shared(root: Path, shared: Path, n_per_list: int = 12, n_fit: int = 300) -> None:
    """:func:`write_openood_data_root` with the shared data's real images in the lists of the sets it holds (ID lists
    images of the listed class; the training list ``n_fit`` of them: ViM needs more than its 256 principal
    dimensions); other lists keep random images."""
    loaded = {}

    def images(imglist_path: str, n: int):
        stem = Path(imglist_path).stem
        count = n_fit if "train" in stem else n
        labels = np.arange(count) % 10
        source = next((npz for key, npz in SHARED_SOURCES if key in stem), None)
        if source is None:
            rng = np.random.default_rng(len(stem))
            return rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8), labels
        if source not in loaded:
            with np.load(shared / source, allow_pickle=False) as f:
                loaded[source] = f["images"], f["labels"]
        pixels, known = loaded[source]
        picks = [np.flatnonzero(known == label)[i] for i, label in enumerate(labels)]
        return pixels[picks], labels

    write_openood_data_root(root, n_per_list, images=images)


def is_latent_layout(path) -> bool:
    """True when the model at ``path`` is a latent diffusion model: it has a ``vae``, ``vqvae`` or ``transformer``."""
    from openood_diffood.models.loading import components, layout_of

    return layout_of(components(os.fspath(path))) != "pixel"


def openood_spec(imglist: str, image_root: str) -> str:
    """The spec of an OpenOOD image list whose paths are relative to ``image_root``."""
    from openood_diffood.evaluate.images import _SEP

    return f"{imglist}{_SEP}{image_root}"
