"""The model card (``README.md``) of a converted directory: the source file and its SHA-256, the format, the
settings taken from the source config and how each part was converted."""
from __future__ import annotations

import os
from typing import Optional

import yaml

from ...hashing import file_sha256
from ...version import __version__
from ..card_facts import ModelFacts, card_header
from .conversion import Conversion

#: What each source format is.
FORMATS = {"ddim": "official DiffOOD DDIM UNet (luping-liu/DiffOOD network/ddim/ddim.py Model), EMA state dict",
           "iddpm": "official DiffOOD improved-diffusion UNet (luping-liu/DiffOOD network/iddpm/unet.py UNetModel)",
           "ldm": "CompVis latent diffusion LatentDiffusion (Lightning .ckpt; configs/latent-diffusion/cin256-v2)"}


def null_class(conversion: Conversion) -> Optional[int]:
    """The null class of a converted model: the last row of its label table (None: unconditional)."""
    for part in conversion.parts.values():
        config = getattr(part, "config", {})
        rows = config.get("num_class_embeds") or config.get("num_embeddings")
        if rows:
            return int(rows) - 1
    return None


def model_card(conversion: Conversion, checkpoint: str, config: Optional[str]) -> str:
    """The card's Markdown text."""
    rows = [("source file", f"`{os.path.abspath(checkpoint)}`"), ("source SHA-256", f"`{file_sha256(checkpoint)}`"),
            ("source format", f"`{conversion.format}`: {FORMATS[conversion.format]}"),
            ("config", f"`{os.path.abspath(config)}` (SHA-256 `{file_sha256(config)}`)" if config
             else conversion.config_source),
            ("parts", ", ".join(f"`{name}/` ({type(part).__name__})" for name, part in conversion.parts.items())),
            ("converted by", f"openood-diffood {__version__}: `python -m openood_diffood convert --from "
                             f"{conversion.format}`")]
    table = "\n".join(["| field | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])
    settings = yaml.safe_dump(conversion.settings, sort_keys=False, default_flow_style=None).strip()
    how = "\n".join(f"- {note}" for note in conversion.notes + [
        "every weight of the checkpoint was mapped onto the diffusers model built from the config and checked key "
        "by key and shape by shape; none was left over and none was missing"])
    header = card_header(["openood-diffood", "converted", conversion.format],
                         ModelFacts(null_class=null_class(conversion)))
    return (f"{header}\n"
            f"# {conversion.format} checkpoint converted to diffusers for DiffOOD\n\n{table}\n\n"
            f"## Settings of the source config\n\n```yaml\n{settings}\n```\n\n## How it was converted\n\n{how}\n")
