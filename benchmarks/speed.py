"""Throughput of this DiffOOD implementation vs a re-implementation of the official loop, side by side.

The official loop (``runner/ood_detect.py: diff_detect`` of the DiffOOD repository) runs fp32 batches of 250
images, the R repeats one after another, and two network calls per step (conditional, then null class), with
the DDIM coefficients gathered from device tensors each step. It is re-implemented here with this package's
timestep conventions (noise to t, evaluate at t, t - s, ..., s, land on timestep 0) so that, given the same
noise, it computes exactly what the engine computes: the script checks that first (``max |score diff|``).

Both run on the same randomly initialised class-conditional UNet and random ResNet18_32x32 classifier, with
the same settings; rounds alternate between the variants and the medians are reported, with wall-clock and
process CPU time (the CPU ratio is robust to other processes sharing the machine). A "network evaluation" is
one UNet forward pass of one sample (an image, one repeat, one branch of the guidance pair).

    python -m benchmarks.speed --images 250 --repeats 2 --timestep 100 --out benchmarks/results   # CPU, tiny UNet
    python -m benchmarks.speed --device cuda --model ddpm --images 500 --variants official ours ours:compile:bs=250
Variants: ``official``, ``ours`` with options joined by ``:`` (``cl``: channels_last, ``compile``, ``bs=N``:
micro-batch in images, ``fp32``/``bf16``: precision).
"""
from __future__ import annotations

import argparse
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import diffusers
import torch

from openood_diffood import DiffOOD, DiffOODSettings
from openood_diffood.evaluate.tables import format_table
from openood_diffood.method.diffood import guided_noise, network_evaluations
from openood_diffood.method.noise import content_keys, sample_noise
from openood_diffood.method.scoring import feature_change
from openood_diffood.method.solvers import SOLVERS, solver_timesteps
from openood_diffood.models.diffusion import PixelUNetBackend
from openood_diffood.models.networks import cifar_resnet, resnet18_32x32

from .common import git_commit

#: UNet2DModel configurations: two small ones for CPUs, the shared CIFAR-10 UNet's architecture (14.5 M) and the
#: DDPM-CIFAR10 size (35.7 M parameters).
MODELS = {
    "tiny": dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "small": dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=8,
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                  up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "cifar10": dict(block_out_channels=(96, 192, 192), layers_per_block=2, attention_head_dim=8,  # shared UNet's
                    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
    "ddpm": dict(block_out_channels=(128, 256, 256, 256), layers_per_block=2,
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
}
OFFICIAL_BATCH = 250


#: Classifiers: OpenOOD's ResNet18_32x32 (GPU) and the far cheaper CIFAR ResNet-20 (CPU: keeps the UNet dominant).
CLASSIFIERS = {"resnet18": resnet18_32x32, "resnet20": lambda n: cifar_resnet(20, n)}


def build_models(model: str, classifier_name: str, device: torch.device) -> Tuple[PixelUNetBackend, torch.nn.Module]:
    """A random class-conditional UNet (10 classes + null) with a linear DDPM schedule, and a random classifier."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, num_class_embeds=11, **MODELS[model])
    abar = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod
    classifier = CLASSIFIERS[classifier_name](10).eval()
    return PixelUNetBackend(unet, abar).to(device), classifier.to(device)


@torch.no_grad()
def official_loop(backend: PixelUNetBackend, classifier: torch.nn.Module, x: torch.Tensor, s: DiffOODSettings,
                  noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The official detection loop's structure on normalized images x; returns DiffOOD scores (CPU).

    ``noise`` (N, R, C, H, W) replaces the loop's own ``randn_like`` draws (used to check equivalence).
    """
    device, unet = x.device, backend.unet
    mean = torch.tensor(s.normalization.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(s.normalization.std, device=device).view(1, -1, 1, 1)
    abar = backend.alphas_cumprod.float()
    seq = solver_timesteps(s.timestep, s.stride)
    seq_next = seq[1:] + [0]
    scores = []
    for i in range(0, x.shape[0], OFFICIAL_BATCH):
        img = x[i:i + OFFICIAL_BATCH] * std + mean
        n = img.shape[0]
        ood_img = img * 2 - 1
        noise_list = ([torch.randn_like(ood_img) for _ in range(s.repeats)] if noise is None
                      else [noise[i:i + n, k].to(device) for k in range(s.repeats)])
        logits = classifier((img - mean) / std)
        y_pred = logits.argmax(1)
        null = torch.ones_like(y_pred) * backend.null_class
        rec_logits = []
        for k in range(s.repeats):
            t_end = torch.ones(n, device=device, dtype=torch.long) * s.timestep
            img_n = ood_img * abar.index_select(0, t_end).sqrt().view(-1, 1, 1, 1) \
                + noise_list[k] * (1 - abar.index_select(0, t_end)).sqrt().view(-1, 1, 1, 1)
            imgs = [img_n]
            for ti, tn in zip(seq, seq_next):
                t = torch.ones(n, device=device) * ti
                t_next = torch.ones(n, device=device) * tn
                xt = imgs[-1]
                e = (s.guidance * unet(xt, t, class_labels=y_pred).sample
                     - (s.guidance - 1) * unet(xt, t, class_labels=null).sample)
                a_t = abar[t.long()].view(-1, 1, 1, 1)
                a_next = abar[t_next.long()].view(-1, 1, 1, 1)
                x0 = (xt - (1 - a_t).sqrt() * e) / a_t.sqrt()
                imgs.append(a_next.sqrt() * x0 + (1 - a_next).sqrt() * e)
            img_r = torch.clamp(imgs[-1].to("cpu") * 0.5 + 0.5, 0, 1).to(device)
            rec_logits.append(classifier((img_r - mean) / std).cpu())
        scores.append(feature_change(logits.cpu(), torch.stack(rec_logits, 1)))
    return torch.cat(scores)


def make_variant(spec: str, backend: PixelUNetBackend, classifier: torch.nn.Module, s: DiffOODSettings,
                 device: torch.device) -> Tuple[Callable[[torch.Tensor], torch.Tensor], Optional[DiffOOD]]:
    """(scoring function, its engine or None) for a variant spec (see the module docstring)."""
    if spec == "official":
        return (lambda x: official_loop(backend, classifier, x, s)), None
    name, *opts = spec.split(":")
    if name != "ours":
        raise ValueError(f"unknown variant {spec!r}: use 'official' or 'ours[:cl][:compile][:bs=N][:fp32|bf16]'")
    kwargs: Dict[str, object] = {"batch_size": "auto"}
    settings = s
    for opt in opts:
        if opt == "cl":
            kwargs["channels_last"] = True
        elif opt == "compile":
            kwargs["compile"] = True
        elif opt.startswith("bs="):
            kwargs["batch_size"] = int(opt[3:])
        elif opt in ("fp32", "bf16", "fp16"):
            settings = settings.replace(precision=opt)
        else:
            raise ValueError(f"unknown option {opt!r} in variant {spec!r}")
    # each variant gets its own copy of the backend (channels_last / compile change it in place)
    own = PixelUNetBackend(type(backend.unet).from_config(backend.unet.config), backend.alphas_cumprod.float().cpu())
    own.unet.load_state_dict(backend.unet.state_dict())
    engine = DiffOOD(classifier, own.to(device), settings, device=device, **kwargs)
    return (lambda x: engine.score(x).score), engine


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, device: torch.device) -> Tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn(x)
    _sync(device)
    return time.perf_counter() - wall, time.process_time() - cpu


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "CPU"
    return f"{model}, {torch.get_num_threads()} threads"


def check_equivalence(backend, classifier, s: DiffOODSettings, x: torch.Tensor, device: torch.device) -> float:
    """Max |score difference| of the official loop and the engine on the same noise (fp32)."""
    s32 = s.replace(precision="fp32")
    engine = DiffOOD(classifier, backend, s32, batch_size=x.shape[0], device=device)
    ours = engine.score(x).score
    noise = sample_noise(content_keys(s.normalization.unnormalize(x)), s.seed, s.repeats, tuple(x.shape[1:]), device)
    return float((official_loop(backend, classifier, x, s32, noise=noise) - ours).abs().max())


def check_no_sync(backend: PixelUNetBackend, device: torch.device) -> str:
    """CUDA only: run every solver's loop with ``torch.cuda.set_sync_debug_mode("error")`` around a network
    that cannot sync (a linear map), so any host synchronisation of the loop itself raises; then count the
    synchronisations of one UNet forward pass (diffusers' own code) in "warn" mode."""
    import warnings

    class Linear(PixelUNetBackend):
        def network(self, z, t, labels):
            return z * 0.5 + t.view(-1, 1, 1, 1) * 1e-3

    linear = Linear(backend.unet, backend.alphas_cumprod.float().cpu()).to(device)
    z, labels = torch.randn(8, 3, 32, 32, device=device), torch.zeros(8, dtype=torch.long, device=device)
    eps = guided_noise(linear, labels, 3.0)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        for name, solve in SOLVERS.items():
            solve(eps, z, solver_timesteps(300, 20), linear.schedule)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.no_grad():
                backend.network(z, torch.full((8,), 300, device=device), labels)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return (f"denoising loops of {sorted(SOLVERS)}: no host synchronisation; one UNet forward pass: "
            f"{sum('synchroniz' in str(w.message) for w in caught)} synchronising call(s) in diffusers' code")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--model", choices=sorted(MODELS), default=None, help="default: ddpm on cuda, tiny on cpu")
    p.add_argument("--classifier", choices=sorted(CLASSIFIERS), default=None,
                   help="default: resnet18 on cuda, resnet20 on cpu")
    p.add_argument("--images", type=int, default=250)
    p.add_argument("--timestep", type=int, default=300)
    p.add_argument("--stride", type=int, default=20)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (1 makes CPU time robust to other load)")
    p.add_argument("--variants", nargs="+", default=["official", "ours"])
    p.add_argument("--out", type=Path, default=None,
                   help="append the markdown table to speed_<device>.md in this folder (e.g. benchmarks/results)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model or ("ddpm" if device.type == "cuda" else "tiny")
    classifier_name = args.classifier or ("resnet18" if device.type == "cuda" else "resnet20")
    s = DiffOODSettings(timestep=args.timestep, stride=args.stride, repeats=args.repeats, guidance=args.guidance)
    backend, classifier = build_models(model, classifier_name, device)
    params = sum(p.numel() for p in backend.unet.parameters()) / 1e6
    g = torch.Generator().manual_seed(0)
    x01 = torch.rand(args.images, 3, 32, 32, generator=g)
    x = s.normalization.normalize(x01).to(device)
    diff = check_equivalence(backend, classifier, s, x[:4], device)
    print(f"official loop vs engine on the same noise (fp32, 4 images): max |score diff| = {diff:.2e}", flush=True)
    sync = check_no_sync(backend, device) if device.type == "cuda" else None
    if sync:
        print(sync, flush=True)

    fns, engines, warm = {}, {}, {}
    for spec in args.variants:
        fns[spec], engines[spec] = make_variant(spec, backend, classifier, s, device)
        warm[spec] = measure(fns[spec], x[:16], device)[0]  # sizing, compilation (padded to the micro-batch)
        print(f"{spec}: warm-up {warm[spec]:.1f} s", flush=True)
    times: Dict[str, List[Tuple[float, float]]] = {spec: [] for spec in args.variants}
    for r in range(args.rounds):
        for spec in args.variants:
            times[spec].append(measure(fns[spec], x, device))
            print(f"round {r}: {spec}: {times[spec][-1][0]:.1f} s wall, {times[spec][-1][1]:.1f} s CPU", flush=True)

    evals = args.images * network_evaluations(s, backend)
    base = args.variants[0]
    wall0 = statistics.median(w for w, _ in times[base])
    cpu0 = statistics.median(c for _, c in times[base])
    header = ["variant", "micro-batch (images)", "images/s", "network evals/s", "wall s", "CPU s",
              "speed-up (wall)", "speed-up (CPU time)", "warm-up s"]
    rows = []
    for spec in args.variants:
        wall = statistics.median(w for w, _ in times[spec])
        cpu = statistics.median(c for _, c in times[spec])
        batch = OFFICIAL_BATCH if engines[spec] is None else engines[spec].batch_size
        rows.append([spec, batch, f"{args.images / wall:.1f}", f"{evals / wall:.0f}", f"{wall:.1f}", f"{cpu:.1f}",
                     f"{wall0 / wall:.2f}x", f"{cpu0 / cpu:.2f}x", f"{warm[spec]:.1f}"])
    lines = [f"### {device_name(device)}, torch {torch.__version__}, diffusers {diffusers.__version__}, commit "
             f"`{git_commit()}`",
             "",
             f"UNet `{model}` ({params:.2f} M parameters, random weights), random {classifier_name}; {args.images} "
             f"images 32x32; t = {s.timestep}, DDIM stride {s.stride} "
             f"({len(solver_timesteps(s.timestep, s.stride))} steps), R = {s.repeats}, w = {s.guidance}; "
             f"precision `auto` = {'bf16' if device.type == 'cuda' else 'fp32'} for `ours`, fp32 official; "
             f"medians of {args.rounds} alternating rounds. Official loop vs engine on the same noise: "
             f"max |score diff| {diff:.1e}." + (f" Sync check: {sync}." if sync else ""),
             "", format_table(header, rows, markdown=True)]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "_", device_name(device).split(",")[0].lower()).strip("_")
        path = args.out / f"speed_{'cpu_' if device.type == 'cpu' else ''}{slug}.md"
        with open(path, "a") as f:
            f.write(text + "\n")
        print(f"appended to {path}")


if __name__ == "__main__":
    main()
