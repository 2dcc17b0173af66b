"""Train the class-conditional pixel diffusion model DiffOOD denoises with: a diffusers ``UNet2DModel`` whose last
class id is the null class, epsilon prediction on ``DDPMScheduler``'s linear schedule, classifier-free guidance
training (``--p-uncond``), timesteps below ``--max-timestep``; the EMA weights are saved.
Accelerate places the model, runs mixed precision and several GPUs, and writes checkpoints (``step_N.tmp`` renamed
when complete, loaded with ``weights_only=True``). Every random draw comes from ``(--seed, step)``, so ``--resume``
ends with the weights of an uninterrupted run. The output holds ``unet/``, ``scheduler/`` and a model card."""
from __future__ import annotations

import argparse
import glob
import os
import re
import shlex
import shutil
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError, MissingFileError, OutputExistsError, report_errors
from ..method.diffood import guided_noise
from ..method.noise import key_seed, sample_noise
from ..method.solvers import add_noise, ddim, solver_timesteps
from ..models.card_facts import ModelFacts, card_header
from ..models.convert.keys import block_types
from ..models.diffusion import PixelUNetBackend
from ..version import __version__
from .arguments import LR_SCHEDULES, SAVE_DTYPES, add_train_arguments, check_arguments, settings_of
from .data import TrainingData, augment, batch_indices, load_training_data

STATE_FILE = "trainer_state.pt"
GRID_IMAGES = 8
_STEP_DIR = re.compile(r"^step_(\d+)$")


def build_unet(sample_size: int, channels: int, num_classes: int, block_out_channels: Sequence[int],
               layers_per_block: int, attention_levels: Sequence[int], dropout: float, norm_groups: int) -> nn.Module:
    """A class-conditional ``UNet2DModel`` (``num_class_embeds = num_classes + 1``, null class last)."""
    from diffusers import UNet2DModel

    levels = len(block_out_channels)
    bad = [a for a in attention_levels if not 0 <= a < levels]
    if bad:
        raise ConfigError(f"--attention-levels {bad} outside the {levels} levels of --block-out-channels")
    if any(ch % norm_groups for ch in block_out_channels):
        raise ConfigError(f"--norm-groups {norm_groups} does not divide --block-out-channels "
                          f"{list(block_out_channels)}")
    if sample_size % 2 ** (levels - 1):
        raise ConfigError(f"images of size {sample_size} cannot be halved {levels - 1} times: use fewer "
                          "--block-out-channels levels or another --image-size")
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                       **block_types([i in attention_levels for i in range(levels)]), dropout=dropout,
                       norm_num_groups=norm_groups, num_class_embeds=num_classes + 1)


def noise_scheduler(args: argparse.Namespace):
    """The ``DDPMScheduler`` (linear betas, epsilon prediction) saved with the model."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=args.num_train_timesteps, beta_start=args.beta_start,
                         beta_end=args.beta_end, beta_schedule="linear", prediction_type="epsilon")


def checkpoints(checkpoint_dir: str) -> list:
    """Complete checkpoint folders (``step_N`` with a trainer state), oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = [(int(m.group(1)), e.path) for e in os.scandir(checkpoint_dir)
             if (m := _STEP_DIR.match(e.name)) and os.path.isfile(os.path.join(e.path, STATE_FILE))]
    return [p for _, p in sorted(found)]


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
        self.accelerator = Accelerator(mixed_precision=_mixed_precision(args.mixed_precision), cpu=cpu_processes,
                                       step_scheduler_with_optimizer=False)
        acc = self.accelerator
        self.checkpoint_dir = args.checkpoint_dir or os.path.join(args.output, "checkpoints")
        self._check_output()
        self.data: TrainingData = load_training_data(args.data, args.image_size)
        n, c, h, w = self.data.images.shape
        if h != w:
            raise ConfigError(f"training images are {h}x{w}; the UNet needs square images (give --image-size)")
        if args.batch_size > n or args.batch_size % acc.num_processes:
            raise ConfigError(f"--batch-size {args.batch_size} must be at most the {n} training images and a multiple "
                              f"of the {acc.num_processes} processes")
        self.num_classes = len(self.data.classes)
        torch.manual_seed(args.seed)
        unet_args = (h, c, self.num_classes, args.block_out_channels, args.layers_per_block, args.attention_levels,
                     args.dropout, args.norm_groups)
        unet = build_unet(*unet_args)
        # holds the EMA weights for reconstruction grids and the output
        self.ema_unet = build_unet(*unet_args).eval().requires_grad_(False)
        optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        lr_scheduler = get_scheduler(LR_SCHEDULES[args.lr_schedule], optimizer, num_warmup_steps=args.warmup_steps,
                                     num_training_steps=args.steps)
        self.model, self.optimizer, self.lr_scheduler = acc.prepare(unet, optimizer, lr_scheduler)
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
        found = self.latest_checkpoint()
        if self.args.resume and found is None:
            raise MissingFileError(f"--resume: no checkpoint in {self.checkpoint_dir!r}; start without --resume")
        if not self.args.resume and (found or os.path.isdir(os.path.join(self.args.output, "unet"))):
            raise OutputExistsError(f"{self.args.output!r} already holds a training run: pass --resume to continue it, "
                                    "or choose a new --output")

    def latest_checkpoint(self) -> Optional[str]:
        """The newest complete checkpoint folder, or None."""
        found = checkpoints(self.checkpoint_dir)
        return found[-1] if found else None

    # -------------------------------------------------------------- resume
    def resume(self, folder: Optional[str] = None) -> None:
        """Load a checkpoint (default: the newest; model, EMA, optimizer, LR scheduler, step, RNG states) and say
        which."""
        folder = folder or self.latest_checkpoint()
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=True)
        differ = {k: (v, self.settings.get(k)) for k, v in state["settings"].items() if self.settings.get(k) != v}
        if differ:
            listing = ", ".join(f"{k}: checkpoint {a!r}, now {b!r}" for k, (a, b) in differ.items())
            raise ConfigError(f"cannot resume from {folder!r}: settings differ ({listing}); resume with the "
                              "checkpoint's settings, or start a new --output")
        self.accelerator.load_state(folder)
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.accelerator.device)
        self.step = int(state["step"])
        if self.accelerator.is_main_process:
            print(f"resuming from step {self.step} of {self.args.steps} ({folder})", file=sys.stderr, flush=True)

    # -------------------------------------------------------------- one step
    def _noised(self, x0: torch.Tensor, gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(timesteps below max_timestep, noise, ``x0`` noised to them), drawn from ``gen`` in that order."""
        t = torch.randint(0, self.settings["max_timestep"], (x0.shape[0],), generator=gen, device=x0.device)
        eps = torch.randn(x0.shape, generator=gen, device=x0.device)
        return t, eps, self.sqrt_abar[t].view(-1, 1, 1, 1) * x0 + self.sqrt_one_minus[t].view(-1, 1, 1, 1) * eps

    def train_step(self) -> torch.Tensor:
        """One optimizer step on the global batch of ``self.step``; returns this process's loss."""
        args, acc = self.args, self.accelerator
        idx = batch_indices(self.step, len(self.images), args.batch_size, args.seed, acc.process_index,
                            acc.num_processes).to(acc.device)
        gen = torch.Generator(acc.device).manual_seed(key_seed(args.seed, ("step", self.step, acc.process_index)))
        x0 = augment(self.images[idx], args.crop_padding, not args.no_flip, gen)
        t, eps, xt = self._noised(x0, gen)
        drop = torch.rand(x0.shape[0], generator=gen, device=acc.device) < args.p_uncond
        labels = torch.where(drop, torch.full_like(self.labels[idx], self.num_classes), self.labels[idx])
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
        folder = os.path.join(self.checkpoint_dir, f"step_{self.step:06d}")
        pending = folder + ".tmp"
        acc.save_state(pending)
        if acc.is_main_process:
            torch.save({"step": self.step, "settings": self.settings, "ema": self.ema.state_dict()},
                       os.path.join(pending, STATE_FILE))
            self.reconstruction_grid(os.path.join(pending, "reconstructions.png"))
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(pending, folder)
            keep = self.args.keep_checkpoints
            for old in checkpoints(self.checkpoint_dir)[:-keep] if keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return folder

    def discard_pending(self) -> None:
        """Remove half-written checkpoint folders (after an interruption)."""
        if self.accelerator.is_main_process:
            for pending in glob.glob(os.path.join(self.checkpoint_dir, "step_*.tmp")):
                shutil.rmtree(pending, ignore_errors=True)

    @torch.no_grad()
    def reconstruction_grid(self, path: str) -> None:
        """A labelled PNG of a few training images (top), noised to t = max_timestep // 2 (middle) and denoised by
        DDIM with the EMA model conditioned on their labels, guidance 3 (bottom)."""
        from ..evaluate.plots import training_grid

        pick = torch.linspace(0, len(self.images) - 1, GRID_IMAGES).long().to(self.images.device)
        x0 = self.images[pick].float() / 127.5 - 1
        t = max(1, self.settings["max_timestep"] // 2)
        backend = PixelUNetBackend(self.ema_model(), self.abar)
        eps = sample_noise([int(i) for i in pick], self.args.seed, 1, tuple(x0.shape[1:]), x0.device)[:, 0]
        zt = add_noise(x0, eps, backend.schedule, t)
        rec = ddim(guided_noise(backend, self.labels[pick], 3.0), zt, solver_timesteps(t, min(20, t)),
                   backend.schedule)
        names = [self.data.classes[int(i)] for i in self.labels[pick]]
        training_grid(path, [(x0 + 1) / 2, (zt.clamp(-1, 1) + 1) / 2, (rec.clamp(-1, 1) + 1) / 2],
                      ["training image", f"noised to t = {t}", "denoised (DDIM, w = 3)"], names,
                      f"step {self.step}: EMA model, conditioned on each image's label")

    def save_output(self) -> str:
        """Write ``unet/`` (EMA weights), ``scheduler/`` and the model card to ``--output``."""
        args = self.args
        if self.accelerator.is_main_process:
            loss = self.final_loss()
            os.makedirs(args.output, exist_ok=True)
            unet, dtype = self.ema_model(), getattr(torch, SAVE_DTYPES[args.save_dtype])
            (unet if dtype == torch.float32 else unet.to(dtype)).save_pretrained(os.path.join(args.output, "unet"))
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
        t, eps, xt = self._noised(x0, gen)
        return float(F.mse_loss(unet(xt, t, class_labels=self.labels[:x0.shape[0]], return_dict=False)[0], eps))

    def run(self) -> str:
        """Train to ``--steps`` (or ``--stop-after``); returns the output directory, or the checkpoint folder when
        stopped early."""
        args = self.args
        end = args.steps if args.stop_after is None else min(args.steps, args.stop_after)
        self.model.train()
        folder = self.latest_checkpoint()
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

    def table(header: str, rows: Dict[str, Any]) -> str:
        return f"| {header} | value |\n|---|---|\n" + "".join(f"| {k} | `{v}` |\n" for k, v in rows.items())

    classes = ", ".join(f"{i}: {c}" for i, c in enumerate(data.classes))
    return (
        card_header(["openood-diffood", "diffood", "class-conditional", "ddpm"],
                    ModelFacts(max_timestep=settings["max_timestep"], null_class=len(data.classes)))
        + "# Class-conditional diffusion model for DiffOOD\n\n"
        f"Trained with `python -m openood_diffood train` (openood-diffood {__version__}, torch "
        f"{torch.__version__.split('+')[0]}, diffusers {diffusers.__version__}). A `UNet2DModel` predicting epsilon "
        f"with {len(data.classes)} classes plus the null class {len(data.classes)} (classifier-free guidance), and "
        "a linear-beta `DDPMScheduler`; the weights are the EMA weights. Load it with "
        "`openood_diffood.load_diffusion(<this directory>)` or `DiffOOD(classifier, <this directory>)`. It was "
        f"trained on timesteps below max_timestep ({settings['max_timestep']}); DiffOOD refuses timesteps from "
        "there on unless told allow_untrained_timestep.\n\n"
        f"## Training data\n\n{table('data', data.identity)}\nClasses: {classes}\n\n"
        f"## Training settings\n\n{table('setting', {**settings, **run})}\n"
        f"## Result\n\nOptimizer steps: {steps}. Epsilon MSE of the EMA model on one fixed batch of training images "
        f"(t below max_timestep): {loss:.4f}.\n")


def train_main(args: argparse.Namespace) -> str:
    """Run the ``train`` command; returns the output directory (the checkpoint folder when --stop-after ended it
    early). Ctrl-C stops after the step in progress, keeps the checkpoints written so far and prints the command
    that resumes."""
    trainer = Trainer(args)
    if args.resume:
        trainer.resume()
    try:
        return trainer.run()
    except KeyboardInterrupt:
        trainer.discard_pending()
        kept = trainer.latest_checkpoint()
        where = f"the newest checkpoint is {kept}" if kept else "no checkpoint was written yet"
        argv = [a for a in sys.argv[1:] if a != "--resume"] + (["--resume"] if kept else [])
        print(f"\ninterrupted at step {trainer.step}; {where}; continue with: python -m openood_diffood "
              f"{shlex.join(argv)}", file=sys.stderr)
        raise SystemExit(130) from None


def export_checkpoint(args: argparse.Namespace, folder: str, output: str) -> str:
    """Write the EMA weights of checkpoint ``folder`` of the run that ``args`` (its ``train`` arguments) describes
    as a diffusers model directory ``output``: ``unet/``, ``scheduler/`` and the model card, as a run that ended at
    that step writes them. Returns ``output``."""
    run = argparse.Namespace(**{**vars(args), "output": output, "resume": True,
                                "checkpoint_dir": os.path.dirname(os.path.abspath(folder))})
    trainer = Trainer(run)
    trainer.resume(folder)
    return trainer.save_output()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m openood_diffood.train.trainer``: the ``train`` command on its own (exit status as the CLI's)."""
    parser = argparse.ArgumentParser(prog="python -m openood_diffood train",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_train_arguments(parser)
    return report_errors(lambda args: print(train_main(args)), parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
