"""Module tables of the DDPM-style networks (``pytorch_diffusion`` names) shared by the official DiffOOD DDIM
``Model`` and LDM's first stage: ``down.{i}.block.{j}`` / ``.attn.{j}`` / ``.downsample.conv``, ``mid.*``, and
``up.{i}`` as diffusers' up block ``levels - 1 - i``."""
from __future__ import annotations

from typing import Sequence

from .keys import LAYER, ModuleTable, renamed

#: ResnetBlock: the 1x1 ``nin_shortcut`` is diffusers' ``conv_shortcut``; ``temb_proj`` its ``time_emb_proj``.
RESNET = renamed({"norm1": "norm1", "conv1": "conv1", "temb_proj": "time_emb_proj", "norm2": "norm2",
                  "conv2": "conv2", "nin_shortcut": "conv_shortcut"})
#: AttnBlock (single head; q, k, v and proj_out are 1x1 convolutions).
ATTENTION = renamed({"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"},
                    linear=("q", "k", "v", "proj_out"))


def down_path(levels: int, blocks: int, attention: Sequence[bool]) -> ModuleTable:
    """``down.*``: ``blocks`` resnets per level (each followed by attention where ``attention[level]``) and a
    downsampling convolution after every level but the last."""
    table: ModuleTable = {}
    for i in range(levels):
        for j in range(blocks):
            table[f"down.{i}.block.{j}."] = (f"down_blocks.{i}.resnets.{j}.", RESNET)
            if attention[i]:
                table[f"down.{i}.attn.{j}."] = (f"down_blocks.{i}.attentions.{j}.", ATTENTION)
        if i != levels - 1:
            table[f"down.{i}.downsample.conv."] = (f"down_blocks.{i}.downsamplers.0.conv.", LAYER)
    return table


def up_path(levels: int, blocks: int, attention: Sequence[bool]) -> ModuleTable:
    """``up.*``: ``blocks`` resnets per level (+ attention) and an upsampling convolution after every level but
    level 0; level i is diffusers' up block ``levels - 1 - i``."""
    table: ModuleTable = {}
    for i in range(levels):
        block = levels - 1 - i
        for j in range(blocks):
            table[f"up.{i}.block.{j}."] = (f"up_blocks.{block}.resnets.{j}.", RESNET)
            if attention[i]:
                table[f"up.{i}.attn.{j}."] = (f"up_blocks.{block}.attentions.{j}.", ATTENTION)
        if i != 0:
            table[f"up.{i}.upsample.conv."] = (f"up_blocks.{block}.upsamplers.0.conv.", LAYER)
    return table


def middle_and_ends() -> ModuleTable:
    """``conv_in``, the middle block (resnet, attention, resnet), ``norm_out`` and ``conv_out``."""
    return {"conv_in.": ("conv_in.", LAYER),
            "mid.block_1.": ("mid_block.resnets.0.", RESNET),
            "mid.attn_1.": ("mid_block.attentions.0.", ATTENTION),
            "mid.block_2.": ("mid_block.resnets.1.", RESNET),
            "norm_out.": ("conv_norm_out.", LAYER),
            "conv_out.": ("conv_out.", LAYER)}
