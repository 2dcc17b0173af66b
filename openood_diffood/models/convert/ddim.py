"""``--from ddim``: the official DiffOOD DDIM ``Model`` -> diffusers' ``UNet2DModel`` (class-conditional when the
checkpoint has ``label_emb``, null class last) and a ``DDPMScheduler`` with the config's betas. Same function:
sin-first time embedding with shift 1, GroupNorm(32, 1e-6), (0, 1, 0, 1)-padded stride-2 downsampling, single-head
attention at ``attn_resolutions``."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from ...errors import ConfigError
from ..checkpoints import load_state_dict_file
from .conversion import Conversion
from .ddpm_blocks import middle_and_ends, down_path, up_path
from .keys import LAYER, ModuleTable, block_types, build_model
from .official import class_count, official_sections, scheduler_config
from .source_config import require

#: The architecture of the released checkpoints (config/ddim_cifar10_cond.yml and ddim_cifar100_cond.yml, which
#: differ only in num_classes: without --config it is read from the rows of label_emb).
RELEASED = {"struc": "DDIM", "type": "simple", "image_size": 32, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.1,
            "var_type": "fixedlarge", "resamp_with_conv": True}
RELEASED_SCHEDULE = {"type": "linear", "beta_start": 0.0001, "beta_end": 0.02, "diffusion_step": 1000}
MODEL_KEYS = ("image_size", "in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "attn_resolutions")


def attention_levels(model: Mapping[str, Any]) -> list:
    """Whether each level attends: its resolution (image_size / 2^level) is in ``attn_resolutions``."""
    return [model["image_size"] // 2 ** i in model["attn_resolutions"] for i in range(len(model["ch_mult"]))]


def unet_config(model: Mapping[str, Any], num_classes: int) -> Dict[str, Any]:
    """The ``UNet2DModel`` config of a DDIM ``Model`` section."""
    attention = attention_levels(model)
    return dict(sample_size=model["image_size"], in_channels=model["in_channels"], out_channels=model["out_ch"],
                layers_per_block=model["num_res_blocks"],
                block_out_channels=tuple(model["ch"] * m for m in model["ch_mult"]), **block_types(attention),
                attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6, act_fn="silu", flip_sin_to_cos=False,
                freq_shift=1, downsample_padding=0, dropout=float(model.get("dropout", 0.0)),
                num_class_embeds=num_classes + 1 if num_classes > 0 else None)


def module_table(model: Mapping[str, Any], conditional: bool) -> ModuleTable:
    """Source module prefix -> diffusers prefix for the whole network."""
    levels, blocks, attention = len(model["ch_mult"]), model["num_res_blocks"], attention_levels(model)
    table: ModuleTable = {"temb.dense.0.": ("time_embedding.linear_1.", LAYER),
                          "temb.dense.1.": ("time_embedding.linear_2.", LAYER)}
    if conditional:
        table["label_emb."] = ("class_embedding.", LAYER)
    return {**table, **middle_and_ends(), **down_path(levels, blocks, attention),
            **up_path(levels, blocks + 1, attention)}


def convert_ddim(checkpoint: str, config: Optional[str] = None) -> Conversion:
    """The converted ``unet/`` and ``scheduler/`` of an official DiffOOD DDIM checkpoint."""
    from diffusers import DDPMScheduler, UNet2DModel

    model, schedule, source = official_sections(config, "DDIM", RELEASED, RELEASED_SCHEDULE)
    require(model, MODEL_KEYS, f"the Model section of {source}")
    if not model.get("resamp_with_conv", True):
        raise ConfigError("resamp_with_conv: false (average-pool downsampling) has no diffusers UNet2DModel "
                          "equivalent; only the released configs' resamp_with_conv: true converts")
    state = load_state_dict_file(checkpoint)
    bayesian = state.pop("logvar", None) is not None  # type 'bayesian': a per-timestep log-variance, not used
    num_classes = class_count(model, state, configured=config is not None)
    architecture = (f"the DDIM Model of {source} (ch {model['ch']}, ch_mult {list(model['ch_mult'])}, "
                    f"num_res_blocks {model['num_res_blocks']}, attn_resolutions {list(model['attn_resolutions'])}, "
                    f"num_classes {num_classes})")
    unet = build_model(UNet2DModel, unet_config(model, num_classes), state, module_table(model, num_classes > 0),
                       architecture)
    variance = "fixed_large" if model.get("var_type", "fixedlarge") == "fixedlarge" else "fixed_small"
    scheduler = DDPMScheduler(**scheduler_config(schedule, variance, source))
    settings = {"Model": {k: model[k] for k in model}, "Schedule": dict(schedule), "num_classes": num_classes}
    notes = ["label_emb -> class_embedding (num_classes + 1 rows, the null class last)" if num_classes else
             "no label_emb: an unconditional UNet2DModel (guidance has no effect)",
             "downsampling pads (0, 1, 0, 1) and convolves with stride 2 (downsample_padding 0)"]
    if bayesian:
        notes.append("logvar (type bayesian: a learned per-timestep log-variance) was not used")
    return Conversion("ddim", source, {"unet": unet, "scheduler": scheduler}, settings, notes)
