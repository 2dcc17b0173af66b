"""Training data: labelled images from any image source, each step's batch (drawn from generators seeded by
``(seed, step)``, so a resumed run draws what an uninterrupted one would) and augmentation."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..method.noise import key_seed

#: The built-in training set of the demo (digits 0-5 of scikit-learn's ``load_digits``, 16x16 grey).
DEMO_DATA = "builtin:demo-digits"


@dataclass
class TrainingData:
    """Training images (uint8 N x C x H x W), labels, class names and what identifies the source."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    identity: Dict[str, Any]


def load_training_data(spec: str, image_size: Optional[int] = None) -> TrainingData:
    """Load and check labelled training images from a spec (see :mod:`openood_diffood.evaluate.images`)."""
    if spec == DEMO_DATA:
        from ..evaluate.demo_data import demo_sets
        from ..models.demo import DEMO_CLASSES

        images, labels = demo_sets()["train"]
        classes = list(DEMO_CLASSES)
        identity: Dict[str, Any] = {"kind": "builtin", "name": DEMO_DATA}
    else:
        from ..evaluate.images import load_images, source_identity

        images, labels, classes = load_images(spec, size=image_size)
        identity = source_identity(spec)
    if labels is None:
        raise ConfigError(f"training data {spec!r} has no labels; the class-conditional model needs one class label "
                          "per image (an .npz with 'labels', an ImageFolder, or an image list with labels)")
    if labels.min() < 0:
        raise ConfigError(f"training data {spec!r} has unlabelled images (label {int(labels.min())}); train on "
                          "labelled ID images only")
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        raise ConfigError(f"--image-size {image_size} does not apply to {spec!r}; drop it")
    content = hashlib.sha256(images.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    identity.update(images=int(len(images)), size="x".join(map(str, images.shape[1:])), classes=len(classes),
                    content_sha256=content)
    return TrainingData(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
                        torch.from_numpy(labels.astype(np.int64)), list(classes), identity)


def batch_indices(step: int, n: int, batch: int, seed: int, rank: int = 0, world: int = 1) -> torch.Tensor:
    """This process's share of the global batch of ``step``: epochs are fixed permutations (seed, epoch)."""
    per_epoch = n // batch
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(key_seed(seed, ("epoch", epoch))))
    local = batch // world
    start = pos * batch + rank * local
    return perm[start:start + local]


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """uint8 images -> floats in [-1, 1], randomly cropped from a reflect-padded copy and flipped."""
    x = images.float() / 127.5 - 1
    b, c, h, w = x.shape
    dev = x.device
    if padding:
        padded = F.pad(x, (padding,) * 4, mode="reflect")
        off = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=dev)
        rows = (off[0][:, None] + torch.arange(h, device=dev))[:, None, :, None]
        cols = (off[1][:, None] + torch.arange(w, device=dev))[:, None, None, :]
        x = padded[torch.arange(b, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None],
                   rows, cols]
    if flip:
        mask = torch.rand(b, generator=generator, device=dev) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    return x
