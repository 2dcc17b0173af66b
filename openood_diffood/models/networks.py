"""Classifier architectures needed without OpenOOD: OpenOOD's ResNet18_32x32 (same parameter names and
``forward(x, return_feature=..., return_feature_list=...)``) and the akamaster CIFAR ResNets (20/32/44/56)."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def openood_outputs(logits: torch.Tensor, feats: List[torch.Tensor], return_feature: bool,
                    return_feature_list: bool):
    """What OpenOOD's nets return: logits; with ``return_feature`` also the pooled feature (the last of ``feats``,
    flattened); with ``return_feature_list`` also every stage's output ``feats``."""
    if return_feature:
        return logits, feats[-1].flatten(1)
    return (logits, feats) if return_feature_list else logits


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = 0
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            if shortcut == "conv":  # OpenOOD: 1x1 conv + BN
                self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                              nn.BatchNorm2d(planes))
            else:  # akamaster "option A": subsample and zero-pad channels
                self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad)) if self.pad else self.shortcut(x)
        return F.relu(out + skip)


class _CifarResNet(nn.Module):
    def __init__(self, widths: List[int], blocks: List[int], num_classes: int, shortcut: str, fc_name: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            layers = []
            for j in range(n):
                layers.append(_BasicBlock(in_planes, w, 2 if (i > 0 and j == 0) else 1, shortcut))
                in_planes = w
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.n_stages = len(widths)
        self.fc_name = fc_name
        setattr(self, fc_name, nn.Linear(in_planes, num_classes))

    def get_fc_layer(self) -> nn.Linear:
        return getattr(self, self.fc_name)

    def forward(self, x: torch.Tensor, return_feature: bool = False, return_feature_list: bool = False):
        feats = [F.relu(self.bn1(self.conv1(x)))]
        for i in range(self.n_stages):
            feats.append(getattr(self, f"layer{i + 1}")(feats[-1]))
        feats[-1] = F.adaptive_avg_pool2d(feats[-1], 1)
        return openood_outputs(self.get_fc_layer()(feats[-1].flatten(1)), feats, return_feature, return_feature_list)


def resnet18_32x32(num_classes: int = 10) -> nn.Module:
    """OpenOOD's ResNet18_32x32 (parameter names match OpenOOD checkpoints)."""
    return _CifarResNet([64, 128, 256, 512], [2, 2, 2, 2], num_classes, "conv", "fc")


def cifar_resnet(depth: int, num_classes: int = 10) -> nn.Module:
    """akamaster's CIFAR ResNet-{20,32,44,56} (option-A shortcuts, ``linear`` head)."""
    if (depth - 2) % 6:
        raise ConfigError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    n = (depth - 2) // 6
    return _CifarResNet([16, 32, 64], [n, n, n], num_classes, "pad", "linear")
