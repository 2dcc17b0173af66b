"""Classifier architectures by name and checkpoint loading with clear errors for a mismatched architecture."""
from __future__ import annotations

import re
from typing import Optional

from torch import nn

from ..errors import ConfigError
from ..method.features import last_linear
from .checkpoints import load_state_dict_file
from .networks import cifar_resnet, resnet18_32x32

ARCHITECTURES = "resnet18_32x32 (OpenOOD), cifar_resnet20/32/44/56 (akamaster) or a torchvision model name"


def build_classifier(arch: str, num_classes: int) -> nn.Module:
    """``resnet18_32x32`` (OpenOOD), ``cifar_resnet20/32/44/56`` (akamaster) or a torchvision model name."""
    if arch == "resnet18_32x32":
        return resnet18_32x32(num_classes)
    m = re.fullmatch(r"cifar_resnet(\d+)", arch)
    if m:
        return cifar_resnet(int(m.group(1)), num_classes)
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ConfigError(f"unknown --arch {arch!r}; use {ARCHITECTURES}")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def training_statistics(arch: str) -> Optional[str]:
    """The dataset whose mean/std the architecture's published weights were trained with, where the source fixes
    them rather than the ID data: akamaster's CIFAR ResNets (``cifar_resnet*``) use ImageNet's. None otherwise."""
    return "imagenet" if re.fullmatch(r"cifar_resnet\d+", arch) else None


def head_key(arch: str) -> str:
    """The state-dict key of the architecture's last linear layer's weight."""
    probe = build_classifier(arch, 1)
    fc = last_linear(probe)
    return next(n for n, mod in probe.named_modules() if mod is fc) + ".weight"


def load_classifier(arch: str, ckpt: str, num_classes: Optional[int] = None) -> nn.Module:
    """Build ``arch`` with the checkpoint's number of classes (read from its last linear layer) and load it."""
    state = load_state_dict_file(ckpt)
    key = head_key(arch)
    if key not in state:
        raise ConfigError(f"checkpoint {ckpt!r} has no {key!r}: it is not a {arch} state dict; pass the --arch it "
                          f"was trained with ({ARCHITECTURES})")
    found = int(state[key].shape[0])
    if num_classes is not None and num_classes != found:
        raise ConfigError(f"--num-classes {num_classes} does not match checkpoint {ckpt!r}, whose head has {found} "
                          "classes; drop --num-classes (it is read from the checkpoint) or pass the right file")
    net = build_classifier(arch, found)
    _check_shapes(net, state, arch, ckpt)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"checkpoint {ckpt!r} does not fit --arch {arch}: missing {missing[:5]}, unexpected "
                          f"{unexpected[:5]}; pass the architecture it was trained with ({ARCHITECTURES})")
    return net.eval()


def _check_shapes(net: nn.Module, state: dict, arch: str, ckpt: str) -> None:
    own = net.state_dict()
    for k, v in state.items():
        if k in own and own[k].shape != v.shape:
            raise ConfigError(f"checkpoint {ckpt!r} does not fit --arch {arch}: {k} has shape {tuple(v.shape)} there "
                              f"but {tuple(own[k].shape)} in {arch}; pass the architecture it was trained with "
                              f"({ARCHITECTURES})")
