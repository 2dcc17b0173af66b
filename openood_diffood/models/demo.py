"""The demo's models: its classifier and its class-conditional diffusion model, shipped in ``assets/demo/`` and
rebuilt bit for bit by ``scripts/make_demo_assets.py``."""
from __future__ import annotations

import os
from typing import Tuple

import torch
from torch import nn

from ..errors import MissingFileError
from .checkpoints import load_state_dict_file
from .networks import openood_outputs

#: The demo's classes (digits 0-5).
DEMO_CLASSES = ("0", "1", "2", "3", "4", "5")
#: Normalization of the classifier's input (mean / std of the ID training pixels in [0, 1]).
DEMO_MEAN = (0.3045,)
DEMO_STD = (0.3209,)
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "demo")
CLASSIFIER_FILE = "classifier.safetensors"
DIFFUSION_DIR = "diffusion"


class DemoNet(nn.Module):
    """The demo's classifier: three 3x3 conv stages (16x16 -> 8x8 -> 4x4), global average pooling and a linear
    head; ``forward`` takes OpenOOD's ``return_feature`` / ``return_feature_list`` keywords."""

    def __init__(self, num_classes: int = len(DEMO_CLASSES), width: int = 32, channels: int = 1) -> None:
        super().__init__()
        self.layer1 = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(2 * width, num_classes)

    def get_fc_layer(self) -> nn.Linear:
        return self.fc

    def forward(self, x: torch.Tensor, return_feature: bool = False, return_feature_list: bool = False):
        feats = [self.layer1(x)]
        feats.append(self.layer2(feats[-1]))
        feats.append(self.layer3(feats[-1]).mean((2, 3), keepdim=True))
        return openood_outputs(self.fc(feats[-1].flatten(1)), feats, return_feature, return_feature_list)


def load_demo_models(device: str = "cpu") -> Tuple[nn.Module, str]:
    """(the demo classifier in eval mode on ``device``, the demo diffusion model's directory)."""
    classifier_path = os.path.join(ASSETS, CLASSIFIER_FILE)
    diffusion_dir = os.path.join(ASSETS, DIFFUSION_DIR)
    missing = [p for p in (classifier_path, os.path.join(diffusion_dir, "unet")) if not os.path.exists(p)]
    if missing:
        raise MissingFileError(f"demo assets missing: {missing}; rebuild them with "
                               "`python scripts/make_demo_assets.py`")
    net = DemoNet()
    net.load_state_dict(load_state_dict_file(classifier_path))
    return net.eval().to(device), diffusion_dir
