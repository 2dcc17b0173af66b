"""Shared fixtures: tiny diffusers models written to disk, tiny classifiers, and the shared real data."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

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


def write_tiny_diffusion(path: Path, num_classes=3, sample_size=8, channels=3, seed=0) -> Path:
    """A tiny randomly initialised UNet2DModel (+ DDPMScheduler) saved with save_pretrained.

    num_classes=None writes an unconditional model; otherwise num_class_embeds = num_classes + 1 (null last).
    """
    from diffusers import DDPMScheduler, UNet2DModel

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
