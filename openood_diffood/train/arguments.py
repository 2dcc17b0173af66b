"""The ``train`` command's arguments, their checks, and the settings they make (the model card's, the resume
check's)."""
from __future__ import annotations

import argparse
from typing import Any, Dict

from ..errors import ConfigError
from ..fields import positive_int
from .data import DEMO_DATA

#: Arguments that only steer one invocation; every other one must match when a run is resumed.
RUN_CONTROL = ("data", "output", "checkpoint_dir", "checkpoint_every", "keep_checkpoints", "resume", "stop_after",
               "mixed_precision", "progress", "help")
#: --lr-schedule -> diffusers' scheduler name; --save-dtype -> torch dtype name.
LR_SCHEDULES = {"constant": "constant_with_warmup", "cosine": "cosine", "linear": "linear"}
SAVE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``train`` command's arguments to ``parser``."""
    parser.add_argument("data", help="training images: an .npz (images uint8 NHWC, labels), an ImageFolder, an "
                                     f"OpenOOD image list (list.txt[::image_root]) or {DEMO_DATA}")
    parser.add_argument("-o", "--output", required=True, help="directory to write the diffusers model to")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="resize images to this size on loading (default: keep their size)")
    model = parser.add_argument_group("model")
    model.add_argument("--block-out-channels", type=int, nargs="+", default=[128, 256, 256, 256],
                       help="UNet channels per resolution level (the DDPM CIFAR-10 UNet's)")
    model.add_argument("--layers-per-block", type=positive_int, default=2, help="ResNet blocks per level")
    model.add_argument("--attention-levels", type=int, nargs="*", default=[1],
                       help="resolution levels (0 = full size) with self-attention blocks")
    model.add_argument("--dropout", type=float, default=0.1, help="dropout in the ResNet blocks")
    model.add_argument("--norm-groups", type=positive_int, default=32,
                       help="GroupNorm groups (must divide every level's channels)")
    diffusion = parser.add_argument_group("diffusion")
    diffusion.add_argument("--num-train-timesteps", type=positive_int, default=1000, help="diffusion steps")
    diffusion.add_argument("--beta-start", type=float, default=1e-4, help="first beta of the linear schedule")
    diffusion.add_argument("--beta-end", type=float, default=0.02, help="last beta of the linear schedule")
    diffusion.add_argument("--max-timestep", type=positive_int, default=None,
                           help="train on timesteps 0 .. max-1 only (default: all of them); enough for DiffOOD's "
                                "t, which must then stay below it")
    diffusion.add_argument("--p-uncond", type=float, default=0.1,
                           help="probability that a label is replaced by the null class (classifier-free guidance)")
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--steps", type=positive_int, default=100_000, help="optimizer steps in total")
    optim.add_argument("--batch-size", type=positive_int, default=128, help="global batch size (over all processes)")
    optim.add_argument("--lr", type=float, default=2e-4, help="AdamW learning rate")
    optim.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay")
    optim.add_argument("--warmup-steps", type=int, default=1000, help="linear learning-rate warm-up")
    optim.add_argument("--lr-schedule", choices=tuple(LR_SCHEDULES), default="constant",
                       help="after the linear warm-up")
    optim.add_argument("--grad-clip", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    optim.add_argument("--ema-decay", type=float, default=0.9999, help="EMA decay of the saved weights")
    optim.add_argument("--crop-padding", type=int, default=4,
                       help="random crops from images reflect-padded by this many pixels (0: no crops)")
    optim.add_argument("--no-flip", action="store_true", help="no random horizontal flips (digits, text)")
    optim.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    optim.add_argument("--mixed-precision", choices=("auto", "no", "bf16", "fp16"), default="auto",
                       help="autocast dtype (auto: bf16 on a GPU that has it, else fp32)")
    run = parser.add_argument_group("checkpoints")
    run.add_argument("--checkpoint-every", type=positive_int, default=5000, help="steps between checkpoints")
    run.add_argument("--checkpoint-dir", default=None, help="checkpoint folder (default: <output>/checkpoints)")
    run.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints to keep (0: all)")
    run.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    run.add_argument("--stop-after", type=positive_int, default=None,
                     help="stop once this many steps are done, with a checkpoint (continue with --resume)")
    run.add_argument("--save-dtype", choices=tuple(SAVE_DTYPES), default="fp32",
                     help="dtype of the saved weights (loading always gives fp32)")
    run.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def check_arguments(args: argparse.Namespace) -> None:
    """Clear errors for settings that cannot train (the flags typed ``positive_int`` are checked by argparse)."""
    problems = []
    if not 0 <= args.p_uncond <= 1:
        problems.append(f"--p-uncond {args.p_uncond} must lie in [0, 1]")
    if args.max_timestep is not None and not 1 <= args.max_timestep <= args.num_train_timesteps:
        problems.append(f"--max-timestep {args.max_timestep} must lie in 1 .. --num-train-timesteps "
                        f"({args.num_train_timesteps})")
    if not 0 <= args.ema_decay < 1:
        problems.append(f"--ema-decay {args.ema_decay} must lie in [0, 1)")
    if problems:
        raise ConfigError("; ".join(problems))


def settings_of(args: argparse.Namespace) -> Dict[str, Any]:
    """Every training setting (the ``train`` arguments but :data:`RUN_CONTROL`) as plain data, for the model card
    and the resume check."""
    probe = argparse.ArgumentParser(add_help=False)
    add_train_arguments(probe)
    names = sorted(a.dest for a in probe._actions if a.dest not in RUN_CONTROL)
    out = {k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in ((k, getattr(args, k)) for k in names)}
    out["max_timestep"] = args.max_timestep or args.num_train_timesteps
    return out
