"""Rebuild the demo's models in ``openood_diffood/assets/demo/`` bit for bit from a seed, on the CPU.

1. ``classifier.safetensors``: :class:`~openood_diffood.models.demo.DemoNet` trained on the demo's ID training
   digits (0-5).
2. ``diffusion/``: the class-conditional diffusion model, trained by ``python -m openood_diffood train`` on the
   same images (its settings are in ``diffusion/README.md``).

Deterministic algorithms and a fixed thread count make the files identical on every run on the same software
versions; the script prints their sha256. About 7 minutes on one CPU core.

    python scripts/make_demo_assets.py [--out DIR] [--seed 0] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from typing import List

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from openood_diffood.evaluate.demo_data import demo_sets
from openood_diffood.hashing import file_sha256
from openood_diffood.method.noise import key_seed
from openood_diffood.method.normalization import Normalization
from openood_diffood.models.demo import ASSETS, CLASSIFIER_FILE, DEMO_MEAN, DEMO_STD, DIFFUSION_DIR, DemoNet
from openood_diffood.train.arguments import add_train_arguments
from openood_diffood.train.data import DEMO_DATA, augment
from openood_diffood.train.trainer import train_main

CLASSIFIER_EPOCHS, CLASSIFIER_BATCH, CLASSIFIER_LR = 40, 64, 2e-3
NORMALIZATION = Normalization(DEMO_MEAN, DEMO_STD)
#: The demo diffusion model: a small UNet for 16x16 grey digits, trained on the timesteps DiffOOD uses.
DIFFUSION_ARGS = ["--block-out-channels", "16", "32", "64", "--norm-groups", "8", "--layers-per-block", "1",
                  "--attention-levels",
                  "--dropout", "0.1", "--max-timestep", "500", "--steps", "1200", "--batch-size", "64",
                  "--lr", "1e-3", "--warmup-steps", "100", "--lr-schedule", "cosine", "--ema-decay", "0.995",
                  "--crop-padding", "1", "--no-flip", "--checkpoint-every", "400", "--save-dtype", "fp16"]


def train_classifier(images: np.ndarray, labels: np.ndarray, seed: int) -> DemoNet:
    """Adam on cross-entropy, 1-pixel random shifts; every random draw seeded by (seed, epoch)."""
    torch.manual_seed(seed)
    net = DemoNet()
    opt = torch.optim.Adam(net.parameters(), lr=CLASSIFIER_LR)
    x, y = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)
    for epoch in tqdm(range(CLASSIFIER_EPOCHS), desc="classifier", unit="epoch"):
        gen = torch.Generator().manual_seed(key_seed(seed, ("classifier", epoch)))
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), CLASSIFIER_BATCH):
            idx = perm[i:i + CLASSIFIER_BATCH]
            xb = NORMALIZATION.normalize((augment(x[idx], 1, False, gen) + 1) / 2)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def accuracy(net: DemoNet, images: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        return float((net(NORMALIZATION.from_uint8(images)).argmax(1).numpy() == labels).mean())


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=ASSETS, help="asset folder (default: the package's assets/demo)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the files depend on it)")
    opts = parser.parse_args(argv)
    torch.set_num_threads(opts.threads)
    torch.use_deterministic_algorithms(True)
    os.makedirs(opts.out, exist_ok=True)

    sets = demo_sets(0)
    net = train_classifier(*sets["train"], seed=opts.seed)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, os.path.join(opts.out, CLASSIFIER_FILE))
    print(f"classifier: val accuracy {accuracy(net, *sets['val']):.4f}, "
          f"test accuracy {accuracy(net, *sets['test']):.4f}")

    diffusion_dir = os.path.join(opts.out, DIFFUSION_DIR)
    shutil.rmtree(diffusion_dir, ignore_errors=True)
    with tempfile.TemporaryDirectory() as checkpoints:
        train_parser = argparse.ArgumentParser()
        add_train_arguments(train_parser)
        train_main(train_parser.parse_args([DEMO_DATA, "-o", diffusion_dir, "--checkpoint-dir", checkpoints,
                                            "--seed", str(opts.seed)] + DIFFUSION_ARGS))
    for root, _, files in sorted(os.walk(opts.out)):
        for name in sorted(files):
            path = os.path.join(root, name)
            print(f"{file_sha256(path)}  {os.path.relpath(path, opts.out)} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
