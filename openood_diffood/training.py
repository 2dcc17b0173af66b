"""``python -m openood_diffood train``: train the class-conditional pixel diffusion model DiffOOD denoises with.

A diffusers ``UNet2DModel`` with ``num_class_embeds = classes + 1`` (the last id is the null class) learns to
predict the noise (epsilon) of ``DDPMScheduler``'s linear schedule, with classifier-free guidance training (a label
becomes the null class with probability ``--p-uncond``) and timesteps drawn below ``--max-timestep`` (DiffOOD only
noises to t ~ 300, so the model need not learn pure noise). EMA weights are what gets saved.

Every random draw of a step (batch order, augmentation, timesteps, noise, label drop) comes from generators seeded
by ``(--seed, step)``, and checkpoints hold the model, EMA, optimizer, LR scheduler, step and global RNG states, so
a run stopped at any step and continued with ``--resume`` ends with the weights of an uninterrupted run (bit for
bit on CPU). HuggingFace Accelerate places the model, runs mixed precision and syncs gradients, so
``accelerate launch -m openood_diffood train ...`` and ``torchrun`` train on several GPUs (``--batch-size`` is the
global batch).

The output directory holds ``unet/``, ``scheduler/`` and a ``README.md`` model card, and loads with
:func:`openood_diffood.load_diffusion` (or ``DiffOOD(classifier, output_dir)``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from . import train_state
from .diffusion import PixelUNetBackend
from .noise import key_seed, sample_noise
from .solvers import add_noise, denoise

#: The built-in training set of the demo (digits 0-5 of scikit-learn's ``load_digits``, 16x16 grey).
DEMO_DATA = "builtin:demo-digits"
#: Arguments that only steer one invocation; every other one must match when a run is resumed.
RUN_CONTROL = ("data", "output", "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume", "stop_after",
               "mixed_precision", "progress", "help")
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
SAVE_DTYPES = {"fp32": lambda m: m, "fp16": lambda m: m.half(), "bf16": lambda m: m.bfloat16()}
GRID_IMAGES = 8


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` command's arguments to ``parser``."""
    parser.add_argument("data", help="training images: an .npz (images uint8 NHWC, labels), an ImageFolder, an "
                                     f"OpenOOD image list (list.txt[::image_root]) or {DEMO_DATA}")
    parser.add_argument("-o", "--output", required=True, help="directory to write the diffusers model to")
    parser.add_argument("--image-size", type=int, default=None, help="resize images to this size on loading "
                        "(default: keep their size)")
    model = parser.add_argument_group("model")
    model.add_argument("--block-out-channels", type=int, nargs="+", default=[128, 256, 256, 256],
                       help="UNet channels per resolution level (default: the DDPM CIFAR-10 UNet)")
    model.add_argument("--layers-per-block", type=int, default=2)
    model.add_argument("--attention-levels", type=int, nargs="*", default=[1],
                       help="resolution levels (0 = full size) with self-attention blocks")
    model.add_argument("--dropout", type=float, default=0.1)
    model.add_argument("--norm-groups", type=int, default=32, help="GroupNorm groups (must divide every level's "
                       "channels)")
    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--num-train-timesteps", type=int, default=1000)
    diffusion.add_argument("--beta-start", type=float, default=1e-4)
    diffusion.add_argument("--beta-end", type=float, default=0.02)
    diffusion.add_argument("--max-timestep", type=int, default=None,
                           help="train on timesteps 0 .. max-1 only (default: all); enough for DiffOOD's t")
    diffusion.add_argument("--p-uncond", type=float, default=0.1,
                           help="probability that a label is replaced by the null class (classifier-free guidance)")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--steps", type=int, default=100_000, help="optimizer steps in total")
    optim.add_argument("--batch-size", type=int, default=128, help="global batch size (over all processes)")
    optim.add_argument("--lr", type=float, default=2e-4)
    optim.add_argument("--weight-decay", type=float, default=0.0)
    optim.add_argument("--warmup-steps", type=int, default=1000)
    optim.add_argument("--lr-schedule", choices=sorted(LR_SCHEDULES), default="constant",
                       help="after the linear warm-up")
    optim.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    optim.add_argument("--ema-decay", type=float, default=0.9999)
    optim.add_argument("--crop-padding", type=int, default=4,
                       help="random crops from images reflect-padded by this many pixels (0: no crops)")
    optim.add_argument("--no-flip", action="store_true", help="no random horizontal flips (digits, text)")
    optim.add_argument("--seed", type=int, default=0)
    optim.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                       help="autocast dtype (auto: bf16 on a GPU that has it, else fp32)")
    run = parser.add_argument_group("checkpoints")
    run.add_argument("--checkpoint-every", type=int, default=5000, help="steps between checkpoints")
    run.add_argument("--checkpoint-dir", default=None, help="default: <output>/checkpoints")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints to keep (0: all)")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    run.add_argument("--stop-after", type=int, default=None,
                     help="stop once this many steps are done, with a checkpoint (continue with --resume)")
    run.add_argument("--save-dtype", choices=sorted(SAVE_DTYPES), default="fp32",
                     help="dtype of the saved weights (loading always gives fp32)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


# ----------------------------------------------------------------------------------------------- data
@dataclass
class TrainingData:
    """Training images (uint8 N x C x H x W), labels, class names and what identifies the source."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: List[str]
    identity: Dict[str, Any]


def load_training_data(spec: str, image_size: Optional[int] = None) -> TrainingData:
    """Load and check labelled training images from a spec (see :mod:`openood_diffood.image_sources`)."""
    if spec == DEMO_DATA:
        from .demo_data import DEMO_CLASSES, demo_sets

        images, labels = demo_sets()["train"]
        classes = list(DEMO_CLASSES)
        identity: Dict[str, Any] = {"kind": "builtin", "name": DEMO_DATA}
    else:
        from .image_sources import load_images, source_identity

        images, labels, classes = load_images(spec, size=image_size)
        identity = source_identity(spec)
    if labels is None:
        raise ValueError(f"training data {spec!r} has no labels; the class-conditional model needs one class label "
                         "per image (an .npz with 'labels', an ImageFolder, or an image list with labels)")
    if labels.min() < 0:
        raise ValueError(f"training data {spec!r} has unlabelled images (label {int(labels.min())}); train on "
                         "labelled ID images only")
    classes = classes or [str(c) for c in range(int(labels.max()) + 1)]
    if image_size is not None and images.shape[1:3] != (image_size, image_size):
        raise ValueError(f"--image-size {image_size} does not apply to {spec!r}; drop it")
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


# ----------------------------------------------------------------------------------------------- model
def build_unet(sample_size: int, channels: int, num_classes: int, block_out_channels: Sequence[int],
               layers_per_block: int, attention_levels: Sequence[int], dropout: float, norm_groups: int) -> nn.Module:
    """A class-conditional ``UNet2DModel`` (``num_class_embeds = num_classes + 1``, null class last)."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    bad = [a for a in attention_levels if not 0 <= a < levels]
    if bad:
        raise ValueError(f"--attention-levels {bad} outside the {levels} levels of --block-out-channels")
    if any(ch % norm_groups for ch in block_out_channels):
        raise ValueError(f"--norm-groups {norm_groups} does not divide --block-out-channels {list(block_out_channels)}")
    if sample_size % 2 ** (levels - 1):
        raise ValueError(f"images of size {sample_size} cannot be halved {levels - 1} times: use fewer "
                         "--block-out-channels levels or another --image-size")
    down = tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D" for i in reversed(range(levels)))
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                       down_block_types=down, up_block_types=up, dropout=dropout,
                       norm_num_groups=norm_groups, num_class_embeds=num_classes + 1)


def noise_scheduler(args: argparse.Namespace):
    """The ``DDPMScheduler`` (linear betas, epsilon prediction) saved with the model."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_start=args.beta_start,
                         beta_end=args.beta_end, beta_schedule="linear", prediction_type="epsilon")


def check_arguments(args: argparse.Namespace) -> None:
    """Clear errors for settings that cannot train."""
    problems = []
    if not 0 <= args.p_uncond <= 1:
        problems.append(f"--p-uncond {args.p_uncond} must lie in [0, 1]")
    if args.max_timestep is not None and not 1 <= args.max_timestep <= args.num_train_timesteps:
        problems.append(f"--max-timestep {args.max_timestep} must lie in 1 .. --num-train-timesteps "
                        f"({args.num_train_timesteps})")
    for name in ("steps", "batch_size", "checkpoint_every", "num_train_timesteps"):
        if getattr(args, name) < 1:
            problems.append(f"--{name.replace('_', '-')} must be >= 1")
    if args.stop_after is not None and not 1 <= args.stop_after:
        problems.append("--stop-after must be >= 1")
    if not 0 <= args.ema_decay < 1:
        problems.append(f"--ema-decay {args.ema_decay} must lie in [0, 1)")
    if problems:
        raise ValueError("; ".join(problems))


def settings_of(args: argparse.Namespace) -> Dict[str, Any]:
    """Every training setting (the ``train`` arguments but :data:`RUN_CONTROL`) as plain data, for the model card
    and the resume check."""
    probe = argparse.ArgumentParser(add_help=False)
    add_train_arguments(probe)
    names = sorted(a.dest for a in probe._actions if a.dest not in RUN_CONTROL)
    out = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in ((k, getattr(args, k)) for k in names)}
    out["max_timestep"] = args.max_timestep or args.num_train_timesteps
    return out


# ----------------------------------------------------------------------------------------------- training
class Trainer:
    """One training run: builds everything from the arguments, then :meth:`run` trains to the end or --stop-after."""

    def __init__(self, args: argparse.Namespace) -> None:
        from accelerate import Accelerator
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        check_arguments(args)
        self.args = args
        self.settings = settings_of(args)
        # without CUDA, Accelerate runs torchrun's processes as gloo CPU processes only when told cpu=True
        cpu_processes = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
        self.accelerator = Accelerator(mixed_precision=_mixed_precision(args.mixed_precision), cpu=cpu_processes)
        acc = self.accelerator
        self.checkpoint_dir = args.checkpoint_dir or os.path.join(args.output, "checkpoints")
        self._check_output()
        self.data = load_training_data(args.data, args.image_size)
        n, c, h, w = self.data.images.shape
        if h != w:
            raise ValueError(f"training images are {h}x{w}; the UNet needs square images (give --image-size)")
        if args.batch_size > n or args.batch_size % acc.num_processes:
            raise ValueError(f"--batch-size {args.batch_size} must be at most the {n} training images and a multiple "
                             f"of the {acc.num_processes} processes")
        self.num_classes = len(self.data.classes)
        torch.manual_seed(args.seed)
        unet_args = (h, c, self.num_classes, args.block_out_channels, args.layers_per_block, args.attention_levels,
                     args.dropout, args.norm_groups)
        unet = build_unet(*unet_args)
        # holds the EMA weights for reconstruction grids and the output
        self.ema_unet = build_unet(*unet_args).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        self.lr_scheduler = get_scheduler(LR_SCHEDULES[args.lr_schedule], optimizer,
                                          num_warmup_steps=args.warmup_steps, num_training_steps=args.steps)
        self.model, self.optimizer = acc.prepare(unet, optimizer)
        self.unet = acc.unwrap_model(self.model)
        self.ema = EMAModel(self.unet.parameters(), decay=args.ema_decay)
        self.ema_unet.to(acc.device)
        self.scheduler = noise_scheduler(args)
        self.abar = self.scheduler.alphas_cumprod.double()
        self.sqrt_abar = self.abar.sqrt().float().to(acc.device)
        self.sqrt_one_minus = (1 - self.abar).sqrt().float().to(acc.device)
        self.images = self.data.images.to(acc.device)
        self.labels = self.data.labels.to(acc.device)
        self.step = 0

    def _check_output(self) -> None:
        found = train_state.latest_checkpoint(self.checkpoint_dir)
        if self.args.resume and found is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.checkpoint_dir!r}; start without --resume")
        if not self.args.resume and (found or os.path.isdir(os.path.join(self.args.output, "unet"))):
            raise FileExistsError(f"{self.args.output!r} already holds a training run: pass --resume to continue it, "
                                  "or choose a new --output")

    # -------------------------------------------------------------- resume
    def resume(self) -> None:
        """Load the newest checkpoint (model, EMA, optimizer, LR scheduler, step, RNG states)."""
        folder = train_state.latest_checkpoint(self.checkpoint_dir)
        state = train_state.load_state(folder, self.accelerator.process_index)
        differ = {k: (v, self.settings.get(k)) for k, v in state["settings"].items() if self.settings.get(k) != v}
        if differ:
            listing = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ValueError(f"cannot resume from {folder!r}: settings differ ({listing}); resume with the "
                             "checkpoint's settings, or start a new --output")
        self.unet.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.accelerator.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if state.get("scaler") is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if state["rng"] is not None:
            train_state.set_rng_state(state["rng"])
        self.step = int(state["step"])

    # -------------------------------------------------------------- one step
    def train_step(self) -> torch.Tensor:
        """One optimizer step on the global batch of ``self.step``; returns this process's loss."""
        args, acc = self.args, self.accelerator
        idx = batch_indices(self.step, len(self.images), args.batch_size, args.seed, acc.process_index,
                            acc.num_processes).to(acc.device)
        gen = torch.Generator(acc.device).manual_seed(key_seed(args.seed, ("step", self.step, acc.process_index)))
        x0 = augment(self.images[idx], args.crop_padding, not args.no_flip, gen)
        b = x0.shape[0]
        t = torch.randint(0, self.settings["max_timestep"], (b,), generator=gen, device=acc.device)
        eps = torch.randn(x0.shape, generator=gen, device=acc.device)
        drop = torch.rand(b, generator=gen, device=acc.device) < args.p_uncond
        labels = torch.where(drop, torch.full_like(self.labels[idx], self.num_classes), self.labels[idx])
        xt = self.sqrt_abar[t].view(-1, 1, 1, 1) * x0 + self.sqrt_one_minus[t].view(-1, 1, 1, 1) * eps
        pred = self.model(xt, t, class_labels=labels, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), eps)
        acc.backward(loss)
        if args.grad_clip > 0:
            acc.clip_grad_norm_(self.model.parameters(), args.grad_clip)
        self.optimizer.step()
        if not acc.optimizer_step_was_skipped:
            self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self.unet.parameters())
        self.step += 1
        return loss.detach()

    # -------------------------------------------------------------- checkpoints and output
    def ema_model(self) -> nn.Module:
        """The UNet with the current EMA weights (shared scratch module)."""
        self.ema.copy_to(self.ema_unet.parameters())
        return self.ema_unet

    def save_checkpoint(self) -> str:
        """Write the checkpoint of the current step (all processes take part) with a reconstruction grid."""
        acc = self.accelerator
        folder = train_state.step_dir(self.checkpoint_dir, self.step)
        pending = train_state.pending_dir(folder)
        if acc.is_main_process:
            os.makedirs(pending, exist_ok=True)
        acc.wait_for_everyone()
        train_state.save_rng(pending, acc.process_index)
        acc.wait_for_everyone()
        if acc.is_main_process:
            train_state.save_state(pending, {
                "step": self.step, "settings": self.settings, "model": self.unet.state_dict(),
                "ema": self.ema.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_scheduler": self.lr_scheduler.state_dict(),
                "scaler": None if acc.scaler is None else acc.scaler.state_dict()})
            self.reconstruction_grid(os.path.join(pending, "reconstructions.png"))
            train_state.commit(folder)
            train_state.prune(self.checkpoint_dir, self.args.keep_checkpoints)
        acc.wait_for_everyone()
        return folder

    @torch.no_grad()
    def reconstruction_grid(self, path: str) -> None:
        """PNG of a few training images (top), noised to t = max_timestep // 2 (middle) and denoised by DDIM with
        the EMA model conditioned on their labels, guidance 3 (bottom)."""
        from torchvision.utils import save_image

        pick = torch.linspace(0, len(self.images) - 1, GRID_IMAGES).long().to(self.images.device)
        x0 = self.images[pick].float() / 127.5 - 1
        t = max(1, self.settings["max_timestep"] // 2)
        backend = PixelUNetBackend(self.ema_model(), self.abar)
        eps = sample_noise([int(i) for i in pick], self.args.seed, 1, tuple(x0.shape[1:]), x0.device)[:, 0]
        zt = add_noise(x0, eps, self.abar.tolist(), t)
        rec = denoise("ddim", backend, zt, t, min(20, t), self.labels[pick], 3.0)
        save_image((torch.cat([x0, zt.clamp(-1, 1), rec.clamp(-1, 1)]) + 1) / 2, path, nrow=GRID_IMAGES)

    def save_output(self) -> str:
        """Write ``unet/`` (EMA weights), ``scheduler/`` and the model card to ``--output``."""
        args = self.args
        if self.accelerator.is_main_process:
            loss = self.final_loss()
            os.makedirs(args.output, exist_ok=True)
            SAVE_DTYPES[args.save_dtype](self.ema_model()).save_pretrained(os.path.join(args.output, "unet"))
            self.scheduler.save_pretrained(os.path.join(args.output, "scheduler"))
            with open(os.path.join(args.output, "README.md"), "w") as f:
                f.write(model_card(self.settings, self.data, self.step, loss, self.run_info()))
        self.accelerator.wait_for_everyone()
        return args.output

    def run_info(self) -> Dict[str, Any]:
        """How the last invocation ran (free to change on resume)."""
        acc = self.accelerator
        return {"device": acc.device.type, "processes": acc.num_processes, "mixed_precision": acc.mixed_precision}

    @torch.no_grad()
    def final_loss(self) -> float:
        """Epsilon MSE of the EMA model on a fixed batch (first images, seeded t and noise; no augmentation)."""
        unet = self.ema_model()
        x0 = self.images[:self.args.batch_size].float() / 127.5 - 1
        gen = torch.Generator(x0.device).manual_seed(key_seed(self.args.seed, "final loss"))
        t = torch.randint(0, self.settings["max_timestep"], (x0.shape[0],), generator=gen, device=x0.device)
        eps = torch.randn(x0.shape, generator=gen, device=x0.device)
        xt = self.sqrt_abar[t].view(-1, 1, 1, 1) * x0 + self.sqrt_one_minus[t].view(-1, 1, 1, 1) * eps
        return float(F.mse_loss(unet(xt, t, class_labels=self.labels[:x0.shape[0]], return_dict=False)[0], eps))

    def run(self) -> str:
        """Train to ``--steps`` (or ``--stop-after``); returns the output directory, or the checkpoint folder when
        stopped early."""
        args = self.args
        end = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
        self.model.train()
        folder = train_state.latest_checkpoint(self.checkpoint_dir)
        bar = tqdm(total=args.steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not (args.progress and self.accelerator.is_local_main_process))
        while self.step < end:
            loss = self.train_step()
            bar.update(1)
            if self.step % 25 == 0 or self.step == end:
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{self.lr_scheduler.get_last_lr()[0]:.2e}")
            if self.step % args.checkpoint_every == 0 or self.step == end:
                folder = self.save_checkpoint()
        bar.close()
        if self.step < args.steps:
            return folder
        return self.save_output()


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def model_card(settings: Dict[str, Any], data: TrainingData, steps: int, loss: float, run: Dict[str, Any]) -> str:
    """The README.md written beside the model: data identity, every training setting, versions."""
    import diffusers

    from . import __version__

    def table(header: str, rows: Dict[str, Any]) -> str:
        return f"| {header} | value |\n|---|---|\n" + "".join(f"| {k} | `{v}` |\n" for k, v in rows.items())

    classes = ", ".join(f"{i}: {c}" for i, c in enumerate(data.classes))
    return (
        "---\nlibrary_name: diffusers\ntags: [openood-diffood, diffood, class-conditional, ddpm]\n---\n"
        "# Class-conditional diffusion model for DiffOOD\n\n"
        f"Trained with `python -m openood_diffood train` (openood-diffood {__version__}, torch "
        f"{torch.__version__.split('+')[0]}, diffusers {diffusers.__version__}). A `UNet2DModel` predicting epsilon "
        f"with {len(data.classes)} classes plus the null class {len(data.classes)} (classifier-free guidance), and "
        "a linear-beta `DDPMScheduler`; the weights are the EMA weights. Load it with "
        "`openood_diffood.load_diffusion(<this directory>)` or `DiffOOD(classifier, <this directory>)`.\n\n"
        f"## Training data\n\n{table('data', data.identity)}\nClasses: {classes}\n\n"
        f"## Training settings\n\n{table('setting', {**settings, **run})}\n"
        f"## Result\n\nOptimizer steps: {steps}. Epsilon MSE of the EMA model on one fixed batch of training images "
        f"(t below max_timestep): {loss:.4f}.\n")


def train_main(args: argparse.Namespace) -> str:
    """Run the ``train`` command; returns the output directory (the checkpoint folder when --stop-after ended
    it early)."""
    trainer = Trainer(args)
    if args.resume:
        trainer.resume()
    return trainer.run()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m openood_diffood.training``: the ``train`` command on its own."""
    parser = argparse.ArgumentParser(prog="python -m openood_diffood.training", description=__doc__.split("\n")[0])
    add_train_arguments(parser)
    print(train_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
