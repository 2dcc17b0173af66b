"""The demo benchmark shipped with the package (nothing is downloaded): ID digits 0-5 of scikit-learn's
``load_digits`` at 16x16, near-OOD digits 6-9, far-OOD grey patches of the photographs bundled with scikit-learn
and scikit-image matched in mean and contrast; with its small models (:mod:`openood_diffood.models.demo`)."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..models.demo import DEMO_CLASSES

NEAR_DIGITS = (6, 7, 8, 9)
IMAGE_SIZE = 16
#: Images per set: ID test / validation per class, near-OOD test / validation per digit, far-OOD test / validation.
ID_TEST_PER_CLASS, ID_VAL_PER_CLASS = 50, 25
NEAR_TEST_PER_CLASS, NEAR_VAL_PER_CLASS = 75, 25
FAR_TEST, FAR_VAL = 300, 100
#: scikit-image photographs that ship with the package (no download); scikit-learn adds china.jpg and flower.jpg.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "hubble_deep_field", "moon", "retina", "rocket")

Labelled = Tuple[np.ndarray, np.ndarray]


def _digits() -> Labelled:
    """All 1797 digits as 16x16x1 uint8 (bilinear upscaling of the 8x8 originals) and their labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] * (255.0 / 16.0)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy(), d.target.astype(np.int64)


def _photos() -> List[np.ndarray]:
    """The bundled photographs as grey float arrays in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images) + [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
    out = []
    for p in photos:
        p = np.asarray(p)
        p = rgb2gray(p[..., :3]) if p.ndim == 3 else p.astype(np.float64) / (255.0 if p.max() > 1 else 1.0)
        out.append(p.astype(np.float32))
    return out


def _patches(n: int, rng: np.random.Generator, mean: float, std: float) -> np.ndarray:
    """``n`` random squares (side 1/8 .. 1/3 of the photo's shorter side) of the bundled photographs, 16x16 grey
    uint8, each with its mean and std set to ``mean`` / ``std`` (0..255 scale)."""
    photos = _photos()
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 1), np.uint8)
    for i in range(n):
        p = photos[rng.integers(len(photos))]
        short = min(p.shape)
        side = int(rng.integers(short // 8, short // 3 + 1))
        top, left = rng.integers(p.shape[0] - side + 1), rng.integers(p.shape[1] - side + 1)
        crop = torch.from_numpy(np.ascontiguousarray(p[top:top + side, left:left + side]))[None, None]
        small = F.interpolate(crop, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)[0, 0].numpy().astype(np.float64)
        small = (small - small.mean()) / max(small.std(), 1e-3) * std + mean
        out[i, ..., 0] = np.clip(np.round(small), 0, 255).astype(np.uint8)
    return out


def _split(labels: np.ndarray, classes, per_class: Tuple[int, ...], rng: np.random.Generator) -> List[np.ndarray]:
    """Disjoint index sets: for each class, ``per_class[k]`` images to part k and the rest to a last part."""
    parts: List[List[np.ndarray]] = [[] for _ in range(len(per_class) + 1)]
    for c in classes:
        idx = rng.permutation(np.flatnonzero(labels == c))
        bounds = np.cumsum((0,) + tuple(per_class))
        for k in range(len(per_class)):
            parts[k].append(idx[bounds[k]:bounds[k + 1]])
        parts[-1].append(idx[bounds[-1]:])
    return [np.sort(np.concatenate(p)) for p in parts]


def demo_sets(seed: int = 0) -> Dict[str, object]:
    """The demo benchmark (``seed`` fixes the split and the far-OOD patches; the shipped models used seed 0).
    Returns ``train``, ``val``, ``test``: (uint8 N x 16 x 16 x 1 images, int64 labels 0..5), ID digits 0-5,
    disjoint; ``near``, ``far``: ``{name: uint8 images}`` test OOD sets (digits 6-9, photo patches);
    ``val_near``, ``val_far``: validation OOD sets disjoint from the test ones (for choosing settings)."""
    rng = np.random.default_rng(seed)
    images, labels = _digits()
    test, val, train = _split(labels, range(len(DEMO_CLASSES)), (ID_TEST_PER_CLASS, ID_VAL_PER_CLASS), rng)
    near_test, near_val, _ = _split(labels, NEAR_DIGITS, (NEAR_TEST_PER_CLASS, NEAR_VAL_PER_CLASS), rng)
    pixels = images[train].astype(np.float64)
    far = _patches(FAR_TEST + FAR_VAL, rng, pixels.mean(), pixels.std())
    return {"train": (images[train], labels[train]), "val": (images[val], labels[val]),
            "test": (images[test], labels[test]),
            "near": {"digits_6-9": images[near_test]}, "far": {"photo_patches": far[:FAR_TEST]},
            "val_near": {"digits_6-9": images[near_val]}, "val_far": {"photo_patches": far[FAR_TEST:]}}
