"""DiffOOD throughput at ImageNet scale on one device: a DiT-XL/2-256-sized latent model and a ResNet50.

Builds random-weight models of the real sizes (DiT: depth 28, hidden 1152, 16 heads, patch 2, 4 latent
channels, 32x32 latents, learned sigma, 1000 classes; the Stable Diffusion VAE config, scaling 0.18215) in a temp
dir with ``save_pretrained``, loads them back through ``load_diffusion`` (the code path of a local copy of
facebook/DiT-XL-2-256), and scores random 224x224 images with a torchvision ResNet50 (random weights, nothing
downloaded) at the paper's ImageNet settings: t = 600, stride 20 (30 DDIM steps), w = 6, R = 4, penultimate
feature clipped at 0.3, resize 224 -> 256 -> 224, autocast bf16 on CUDA. Prints images/s and the device name
and appends a markdown row to ``benchmarks/results/imagenet_<device>.md``.

    GPU (under 4 minutes):  .venv/bin/python -m benchmarks.device_imagenet
    CPU check (small dims): .venv/bin/python -m benchmarks.device_imagenet --tiny
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.evaluate.tables import format_table

from .common import RESULTS, git_commit

#: DiT-XL/2 at 256 px (facebook/DiT-XL-2-256) and a DiT small enough for a CPU check.
DIT = {"full": dict(num_layers=28, num_attention_heads=16, attention_head_dim=72),
       "tiny": dict(num_layers=2, num_attention_heads=2, attention_head_dim=16)}
#: The Stable Diffusion VAE (DiT's sd-vae-ft-ema) and a tiny one with the same downsampling factor 8.
VAE = {"full": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
       "tiny": dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4)}


def write_model(path: Path, size: str) -> None:
    """Random-weight DiT + VAE + DDIM scheduler in DiTPipeline's layout."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    dit = DiTTransformer2DModel(in_channels=4, out_channels=8, sample_size=32, patch_size=2,
                                num_embeds_ada_norm=1000, **DIT[size])
    vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, sample_size=256, scaling_factor=0.18215, **VAE[size])
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=False)
    DiTPipeline(transformer=dit, vae=vae, scheduler=scheduler).save_pretrained(path)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="small DiT and VAE (a CPU check of the script)")
    parser.add_argument("--images", type=int, default=None, help="images timed (default 128, tiny 4)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per micro-batch (default on CUDA: auto, measured to fit the free GPU memory; "
                             "CPU 2)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--results", type=Path, default=None,
                        help="folder for the markdown row (default benchmarks/results; none with --tiny)")
    args = parser.parse_args()
    size = "tiny" if args.tiny else "full"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_images = args.images or (4 if args.tiny else 128)

    from torchvision.models import resnet50

    torch.manual_seed(1)
    net = resnet50(weights=None).eval().to(device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_model(Path(tmp), size)
        backend = load_diffusion(tmp)
        print(f"built and loaded the {size} model in {time.perf_counter() - t0:.1f}s "
              f"({sum(p.numel() for p in backend.denoiser.parameters()) / 1e6:.1f}M DiT parameters)")
    batch = args.batch_size or ("auto" if device.type == "cuda" else 2)
    engine = DiffOOD(net, backend, dataset="imagenet", timestep=600, stride=20, guidance=6.0,
                     repeats=args.repeats, space="feature", threshold=0.3, resize=True, device=str(device),
                     batch_size=batch)
    norm = engine.settings.normalization
    x = norm.normalize(torch.rand(n_images, 3, 224, 224, generator=torch.Generator().manual_seed(2)))
    if batch == "auto":
        engine = engine.replace(batch_size=min(engine.micro_batch_size(x[:1]), n_images))
        print(f"batch_size auto (measured to fit 80 % of free GPU memory): {engine.batch_size} images")
    engine.score(x[:engine.batch_size])  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    scores = engine.score(x).score
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    rate = n_images / seconds
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    name = device_name(device)
    precision = "bf16 autocast" if device.type == "cuda" else "fp32"
    print(f"{name}: {rate:.2f} images/s ({n_images} images in {seconds:.1f}s, batch {engine.batch_size}, "
          f"R={args.repeats}, peak {peak:.1f} GiB, scores finite: {bool(torch.isfinite(scores).all())})")

    results = args.results or (None if args.tiny else RESULTS)
    if results is not None:
        results.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r'[^a-z0-9]+', '_', name.lower()).strip('_')
        log, out = results / f"imagenet_{slug}.jsonl", results / f"imagenet_{slug}.md"
        row = [str(datetime.date.today()), f"`{git_commit()}`", name,
               f"DiT-XL/2-256 size ({size}), random weights + ResNet50, 224 -> 256", n_images, engine.batch_size,
               args.repeats, "600 / 20 / 6", precision, f"{rate:.2f}", f"{peak:.1f}"]
        with log.open("a") as f:
            f.write(json.dumps([str(c) for c in row]) + "\n")
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        out.write_text(format_table(["date", "commit", "device", "model", "images", "batch", "R", "t / stride / w",
                                     "precision", "images/s", "peak GiB"], rows, markdown=True) + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
