"""Module table of the improved-diffusion ``UNetModel`` (openai names), the network of official DiffOOD iDDPM
and (with spatial transformers) LDM: ``input_blocks`` per level (ResBlock ``.0``, attention ``.1``, ``Downsample``
``.0.op``), ``middle_block``, ``output_blocks`` back up (``Upsample`` ``.conv``), then ``out``."""
from __future__ import annotations

from typing import Callable, Sequence

from .keys import LAYER, Leaf, ModuleTable, renamed

#: ResBlock: in_layers = (norm, SiLU, conv), emb_layers = (SiLU, linear), out_layers = (norm, SiLU, dropout, conv).
RESBLOCK = renamed({"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                    "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"})


def unet_table(levels: int, blocks: int, attention: Sequence[bool], attention_leaf: Callable[[bool], Leaf],
               label_emb: bool = False) -> ModuleTable:
    """The whole network; ``attention_leaf(upsampling)`` maps an attention module of the down / middle (False) or
    the up (True) side; ``label_emb`` adds the class embedding (diffusers' ``class_embedding``)."""
    table: ModuleTable = {"time_embed.0.": ("time_embedding.linear_1.", LAYER),
                          "time_embed.2.": ("time_embedding.linear_2.", LAYER),
                          "input_blocks.0.0.": ("conv_in.", LAYER),
                          "middle_block.0.": ("mid_block.resnets.0.", RESBLOCK),
                          "middle_block.1.": ("mid_block.attentions.0.", attention_leaf(False)),
                          "middle_block.2.": ("mid_block.resnets.1.", RESBLOCK),
                          "out.0.": ("conv_norm_out.", LAYER),
                          "out.2.": ("conv_out.", LAYER)}
    if label_emb:
        table["label_emb."] = ("class_embedding.", LAYER)
    k = 1
    for level in range(levels):
        for j in range(blocks):
            table[f"input_blocks.{k}.0."] = (f"down_blocks.{level}.resnets.{j}.", RESBLOCK)
            if attention[level]:
                table[f"input_blocks.{k}.1."] = (f"down_blocks.{level}.attentions.{j}.", attention_leaf(False))
            k += 1
        if level != levels - 1:
            table[f"input_blocks.{k}.0.op."] = (f"down_blocks.{level}.downsamplers.0.conv.", LAYER)
            k += 1
    k = 0
    for block, level in enumerate(reversed(range(levels))):
        for j in range(blocks + 1):
            table[f"output_blocks.{k}.0."] = (f"up_blocks.{block}.resnets.{j}.", RESBLOCK)
            if attention[level]:
                table[f"output_blocks.{k}.1."] = (f"up_blocks.{block}.attentions.{j}.", attention_leaf(True))
            if level and j == blocks:
                table[f"output_blocks.{k}.{1 + attention[level]}.conv."] = (f"up_blocks.{block}.upsamplers.0.conv.",
                                                                            LAYER)
            k += 1
    return table
