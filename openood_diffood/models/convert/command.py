"""``python -m openood_diffood convert --from {ddim,iddpm,ldm} CHECKPOINT OUT_DIR [--config YML]``."""
from __future__ import annotations

import argparse
import os
import shutil
from typing import Callable, Dict, Optional

from ...errors import MissingFileError, OutputExistsError
from .card import model_card
from .conversion import Conversion
from .ddim import convert_ddim
from .iddpm import convert_iddpm
from .ldm import convert_ldm

CONVERTERS: Dict[str, Callable[[str, Optional[str]], Conversion]] = {
    "ddim": convert_ddim, "iddpm": convert_iddpm, "ldm": convert_ldm}


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``convert`` subcommand's arguments (and its ``func``)."""
    parser.add_argument("--from", dest="source_format", required=True, choices=tuple(CONVERTERS),
                        help="ddim / iddpm: an official DiffOOD checkpoint (network/ddim/ddim.py Model, "
                             "network/iddpm/unet.py UNetModel); ldm: a CompVis LatentDiffusion .ckpt (cin256-v2)")
    parser.add_argument("checkpoint", help="the source checkpoint (.ckpt / .pt / .pth / .safetensors)")
    parser.add_argument("out_dir", help="new directory for the diffusers model (what --diffusion / diffusion: take)")
    parser.add_argument("--config", default=None, metavar="YML",
                        help="the source's own config (the official config/*.yml; LDM's cin256-v2.yaml); default: "
                             "the architecture of the released checkpoints")
    parser.set_defaults(func=convert_main)


def convert_main(args: argparse.Namespace) -> str:
    """Convert ``args.checkpoint`` into ``args.out_dir`` (written next to it, then renamed); returns the directory."""
    out = os.path.abspath(args.out_dir)
    if not os.path.isfile(args.checkpoint):
        raise MissingFileError(f"checkpoint {args.checkpoint!r} does not exist; check the path")
    if args.config is not None and not os.path.isfile(args.config):
        raise MissingFileError(f"config {args.config!r} does not exist; pass the source's config file or leave "
                               "--config out")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise OutputExistsError(f"output {out!r} already exists and is not an empty directory; choose a new one")
    conversion = CONVERTERS[args.source_format](args.checkpoint, args.config)
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    conversion.save(partial)
    with open(os.path.join(partial, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(conversion, args.checkpoint, args.config))
    if os.path.isdir(out):
        os.rmdir(out)
    os.replace(partial, out)
    print(f"wrote {out}: {', '.join(f'{name}/' for name in conversion.parts)} + README.md (model card); use it "
          f"as --diffusion {out}")
    return out
