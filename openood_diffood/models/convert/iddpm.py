"""``--from iddpm``: the official DiffOOD improved-diffusion ``UNetModel`` -> diffusers' ``UNet2DModel`` (6 output
channels: epsilon, then the learned variance) and a cosine ``DDPMScheduler``. Same function: cos-first time
embedding, GroupNorm(32, 1e-5), scale-shift norm, stride-2 downsampling, fused per-head qkv split into to_q/k/v."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch

from ...errors import ConfigError
from ..checkpoints import load_state_dict_file
from .conversion import Conversion
from .keys import Leaf, ModuleTable, block_types, build_model, conv1x1_as_linear, renamed
from .official import class_count, official_sections, scheduler_config
from .source_config import require
from .openai_blocks import unet_table

#: The architecture of the released checkpoint (config/iddpm_cifar10_cond.yml; without --config num_classes is
#: read from the rows of label_emb).
RELEASED = {"struc": "iDDPM", "image_size": 32, "in_channels": 3, "model_channels": 128, "out_channels": 6,
            "num_res_blocks": 3, "attention_resolutions": [2, 4], "dropout": 0.3, "channel_mult": [1, 2, 2, 2],
            "dims": 2, "conv_resample": True, "use_scale_shift_norm": True, "num_heads": 4, "num_heads_upsample": 4}
RELEASED_SCHEDULE = {"type": "cosine", "diffusion_step": 1000, "learn_sigma": True}
MODEL_KEYS = ("image_size", "in_channels", "model_channels", "out_channels", "num_res_blocks",
              "attention_resolutions", "channel_mult", "num_heads")
ATTENTION_REST = renamed({"norm": "group_norm", "proj_out": "to_out.0"}, linear=("proj_out",))


def fused_qkv(heads: int) -> Leaf:
    """The leaf map of an ``AttentionBlock`` with ``heads`` heads: ``qkv`` (3C, C, 1) holds per head [q, k, v]."""
    def leaf(name: str, tensor: torch.Tensor):
        if name not in ("qkv.weight", "qkv.bias"):
            return ATTENTION_REST(name, tensor)
        param = name.split(".")[1]
        per_head = tensor.reshape(heads, 3, tensor.shape[0] // (3 * heads), *tensor.shape[1:])
        return [(f"to_{part}.{param}", conv1x1_as_linear(per_head[:, i].reshape(-1, *tensor.shape[1:])))
                for i, part in enumerate("qkv")]
    return leaf


def head_dim(model: Mapping[str, Any], attention: list, channels: list) -> int:
    """The one attention head size diffusers' UNet2DModel allows; an error when the config's layers differ."""
    heads, up_heads = model["num_heads"], model.get("num_heads_upsample", -1)
    up_heads = heads if up_heads == -1 else up_heads
    sizes = {channels[-1] / heads}
    for level, attends in enumerate(attention):
        if attends:
            sizes |= {channels[level] / heads, channels[level] / up_heads}
    if len(sizes) != 1 or not float(next(iter(sizes))).is_integer():
        raise ConfigError(f"the attention layers of this config have head sizes {sorted(sizes)} (channels / num_heads "
                          "/ num_heads_upsample); diffusers' UNet2DModel needs one integer head size for all of them")
    return int(sizes.pop())


def unet_config(model: Mapping[str, Any], num_classes: int) -> Dict[str, Any]:
    """The ``UNet2DModel`` config of an iDDPM ``Model`` section."""
    channels = [model["model_channels"] * m for m in model["channel_mult"]]
    attention = [2 ** i in model["attention_resolutions"] for i in range(len(channels))]
    return dict(sample_size=model["image_size"], in_channels=model["in_channels"],
                out_channels=model["out_channels"], layers_per_block=model["num_res_blocks"],
                block_out_channels=tuple(channels), **block_types(attention),
                attention_head_dim=head_dim(model, attention, channels), norm_num_groups=32, norm_eps=1e-5,
                act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
                resnet_time_scale_shift="scale_shift" if model.get("use_scale_shift_norm") else "default",
                attn_norm_num_groups=32, dropout=float(model.get("dropout", 0.0)),
                num_class_embeds=num_classes + 1 if num_classes > 0 else None)


def module_table(model: Mapping[str, Any], conditional: bool) -> ModuleTable:
    heads, up_heads = model["num_heads"], model.get("num_heads_upsample", -1)
    levels = len(model["channel_mult"])
    attention = [2 ** i in model["attention_resolutions"] for i in range(levels)]
    return unet_table(levels, model["num_res_blocks"], attention,
                      lambda up: fused_qkv(up_heads if up and up_heads != -1 else heads), label_emb=conditional)


def convert_iddpm(checkpoint: str, config: Optional[str] = None) -> Conversion:
    """The converted ``unet/`` and ``scheduler/`` of an official DiffOOD iDDPM checkpoint."""
    from diffusers import DDPMScheduler, UNet2DModel

    model, schedule, source = official_sections(config, "iDDPM", RELEASED, RELEASED_SCHEDULE)
    require(model, MODEL_KEYS, f"the Model section of {source}")
    if model.get("dims", 2) != 2 or not model.get("conv_resample", True):
        raise ConfigError("only 2-d networks with convolutional resampling (dims: 2, conv_resample: true, as "
                          "released) have a diffusers UNet2DModel equivalent")
    state = load_state_dict_file(checkpoint)
    num_classes = class_count(model, state, configured=config is not None)
    architecture = (f"the iDDPM UNetModel of {source} (model_channels {model['model_channels']}, channel_mult "
                    f"{list(model['channel_mult'])}, num_res_blocks {model['num_res_blocks']}, attention_resolutions "
                    f"{list(model['attention_resolutions'])}, num_heads {model['num_heads']}, num_classes "
                    f"{num_classes})")
    unet = build_model(UNet2DModel, unet_config(model, num_classes), state, module_table(model, num_classes > 0),
                       architecture)
    learned = model["out_channels"] == 2 * model["in_channels"]
    scheduler = DDPMScheduler(**scheduler_config(schedule, "learned_range" if learned else "fixed_large", source))
    settings = {"Model": dict(model), "Schedule": dict(schedule), "num_classes": num_classes}
    notes = ["qkv (per head: q, k, v) split into to_q / to_k / to_v",
             "out_channels = 2 x in_channels: epsilon, then the learned variance (DiffOOD uses the epsilon half)"
             if learned else "out_channels = in_channels: epsilon only"]
    return Conversion("iddpm", source, {"unet": unet, "scheduler": scheduler}, settings, notes)
