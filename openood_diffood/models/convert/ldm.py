"""``--from ldm``: CompVis latent diffusion's class-conditional ``LatentDiffusion`` (``cin256-v2``) -> ``unet/``
(``UNet2DConditionModel``), ``vqvae/`` (``VQModel``), ``class_embedder/`` (1001 rows, 1000 the null class) and a
``DDPMScheduler`` (LDM's "linear" schedule is diffusers' ``scaled_linear``), checked against the yaml's buffers."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ...errors import ConfigError
from ...fields import read_yaml
from ..checkpoints import load_state_dict_file
from .conversion import Conversion
from .ddpm_blocks import down_path, middle_and_ends, up_path
from .keys import LAYER, ModuleTable, block_types, build_model, nest, same_names
from .openai_blocks import unet_table
from .source_config import require

#: ``beta_schedule`` of LDM's ``make_beta_schedule`` -> diffusers'.
BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
#: The architecture and schedule of cin256-v2 (configs/latent-diffusion/cin256-v2.yaml), used without --config.
RELEASED = {
    "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "conditioning_key": "crossattn",
    "unet_config": {"params": {"image_size": 64, "in_channels": 3, "out_channels": 3, "model_channels": 192,
                               "attention_resolutions": [8, 4, 2], "num_res_blocks": 2, "channel_mult": [1, 2, 3, 5],
                               "num_heads": 1, "use_spatial_transformer": True, "transformer_depth": 1,
                               "context_dim": 512}},
    "first_stage_config": {"params": {"embed_dim": 3, "n_embed": 8192, "ddconfig": {
        "double_z": False, "z_channels": 3, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"params": {"n_classes": 1001, "embed_dim": 512}}}
#: Top-level entries of the state dict that are not weights of the three parts: LatentDiffusion's schedule buffers
#: (``alphas_cumprod`` is compared with the yaml's schedule, a learned ``scale_factor`` replaces the yaml's) and,
#: by prefix, its EMA copy and the first stage's training loss.
BUFFERS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
           "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
           "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
           "logvar", "scale_factor")
IGNORED_PREFIXES = ("model_ema.", "first_stage_model.loss.")
PARTS = {"unet": "model.diffusion_model.", "vqvae": "first_stage_model.", "class_embedder": "cond_stage_model."}


def ldm_params(path: Optional[str]) -> Tuple[Dict[str, Any], str]:
    """(``model.params`` of a LatentDiffusion yaml, where it came from)."""
    if path is None:
        return RELEASED, "cin256-v2's architecture (built in)"
    what = "a latent-diffusion yaml (configs/latent-diffusion/cin256-v2.yaml)"
    params = (read_yaml(path, what).get("model") or {}).get("params")
    if not isinstance(params, dict) or not all(k in params for k in ("unet_config", "first_stage_config",
                                                                      "cond_stage_config")):
        raise ConfigError(f"config {path!r} has no model.params with unet_config, first_stage_config and "
                          f"cond_stage_config; pass {what}")
    return params, path


UNET_KEYS = ("image_size", "in_channels", "out_channels", "model_channels", "attention_resolutions",
             "num_res_blocks", "channel_mult", "context_dim")
FIRST_STAGE_KEYS = ("embed_dim", "n_embed", "ddconfig")
DDCONFIG_KEYS = ("in_channels", "out_ch", "ch", "ch_mult", "num_res_blocks", "z_channels", "resolution")


def check_supported(params: Mapping[str, Any], unet: Mapping[str, Any], first_stage: Mapping[str, Any],
                    classes: Mapping[str, Any], source: str) -> None:
    """Every key the conversion reads, and one clear error for the variants it does not cover."""
    require(unet, UNET_KEYS, f"unet_config.params of {source}")
    require(first_stage, FIRST_STAGE_KEYS, f"first_stage_config.params of {source}")
    ddconfig = first_stage["ddconfig"]
    require(ddconfig, DDCONFIG_KEYS, f"first_stage_config.params.ddconfig of {source}")
    require(classes, ("embed_dim",), f"cond_stage_config.params of {source}")
    problems = {
        "the UNet needs num_heads or num_head_channels":
            unet.get("num_heads", -1) != -1 or unet.get("num_head_channels", -1) != -1,
        "the class embedder's embed_dim must be the UNet's context_dim":
            classes.get("embed_dim") == unet.get("context_dim"),
        "conditioning_key must be crossattn (class tokens through cross-attention)":
            params.get("conditioning_key", "crossattn") == "crossattn",
        "parameterization must be eps": params.get("parameterization", "eps") == "eps",
        "use_ema: true (EMA weights under model_ema.*) is not supported": not params.get("use_ema", False),
        "the UNet must use spatial transformers (use_spatial_transformer: true)": unet.get("use_spatial_transformer"),
        "resblock_updown, num_classes and n_embed of the UNet are not supported":
            not (unet.get("resblock_updown") or unet.get("num_classes") is not None or unet.get("n_embed")),
        "the first stage must be a VQ model with attn_resolutions: [] (diffusers' VQModel blocks)":
            not ddconfig.get("double_z", False) and not ddconfig.get("attn_resolutions"),
    }
    failed = [text for text, ok in problems.items() if not ok]
    if failed:
        raise ConfigError(f"this LatentDiffusion config cannot be converted: {'; '.join(failed)}")


def unet_config(unet: Mapping[str, Any]) -> Dict[str, Any]:
    """The ``UNet2DConditionModel`` config of LDM's ``unet_config.params``."""
    channels = [unet["model_channels"] * m for m in unet["channel_mult"]]
    attention = [2 ** i in unet["attention_resolutions"] for i in range(len(channels))]
    per_head = unet.get("num_head_channels", -1)
    heads = tuple(c // per_head if per_head != -1 else unet["num_heads"] for c in channels)
    return dict(sample_size=unet["image_size"], in_channels=unet["in_channels"], out_channels=unet["out_channels"],
                layers_per_block=unet["num_res_blocks"], block_out_channels=tuple(channels),
                **block_types(attention, "CrossAttn"),
                mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=unet["context_dim"],
                attention_head_dim=heads, transformer_layers_per_block=unet.get("transformer_depth", 1),
                norm_num_groups=32, norm_eps=1e-5, act_fn="silu", flip_sin_to_cos=True, freq_shift=0,
                downsample_padding=1, use_linear_projection=False, dropout=float(unet.get("dropout", 0.0)),
                resnet_time_scale_shift="scale_shift" if unet.get("use_scale_shift_norm") else "default")


def vq_config(first_stage: Mapping[str, Any], scale_factor: float) -> Dict[str, Any]:
    """The ``VQModel`` config of LDM's ``first_stage_config.params`` (``scaling_factor``: the yaml's scale_factor)."""
    dd = first_stage["ddconfig"]
    levels = len(dd["ch_mult"])
    return dict(in_channels=dd["in_channels"], out_channels=dd["out_ch"],
                down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
                block_out_channels=tuple(dd["ch"] * m for m in dd["ch_mult"]), layers_per_block=dd["num_res_blocks"],
                act_fn="silu", latent_channels=dd["z_channels"], sample_size=dd["resolution"],
                num_vq_embeddings=first_stage["n_embed"], norm_num_groups=32, vq_embed_dim=first_stage["embed_dim"],
                scaling_factor=scale_factor)


def vq_table(ddconfig: Mapping[str, Any]) -> ModuleTable:
    levels, blocks, none = len(ddconfig["ch_mult"]), ddconfig["num_res_blocks"], [False] * len(ddconfig["ch_mult"])
    return {**nest({**middle_and_ends(), **down_path(levels, blocks, none)}, "encoder.", "encoder."),
            **nest({**middle_and_ends(), **up_path(levels, blocks + 1, none)}, "decoder.", "decoder."),
            "quant_conv.": ("quant_conv.", LAYER), "post_quant_conv.": ("post_quant_conv.", LAYER),
            "quantize.embedding.": ("quantize.embedding.", LAYER)}


def split_parts(state: Mapping[str, torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
    """The state dict's weights by part (full keys); an entry of no part and no buffer is an error."""
    parts: Dict[str, Dict[str, torch.Tensor]] = {name: {} for name in PARTS}
    for key, tensor in state.items():
        if key in BUFFERS or key.startswith(IGNORED_PREFIXES):
            continue
        part = next((name for name, prefix in PARTS.items() if key.startswith(prefix)), None)
        if part is None:
            raise ConfigError(f"state dict entry {key!r} belongs to no part of a LatentDiffusion checkpoint (expected "
                              "model.diffusion_model.*, first_stage_model.*, cond_stage_model.* and schedule buffers)")
        parts[part][key] = tensor
    empty = [PARTS[name] for name, weights in parts.items() if not weights]
    if empty:
        raise ConfigError(f"the checkpoint has no {empty[0]}* weights: it is not a LatentDiffusion state dict "
                          "(a CompVis .ckpt with model.diffusion_model.*, first_stage_model.*, cond_stage_model.*)")
    return parts


def scheduler_config(params: Mapping[str, Any]) -> Dict[str, Any]:
    kind = params.get("beta_schedule", "linear")
    if kind not in BETA_SCHEDULES:
        raise ConfigError(f"beta_schedule {kind!r} is not one of {', '.join(BETA_SCHEDULES)}")
    return {"num_train_timesteps": int(params.get("timesteps", 1000)), "beta_schedule": BETA_SCHEDULES[kind],
            "beta_start": float(params.get("linear_start", 1e-4)), "beta_end": float(params.get("linear_end", 2e-2)),
            "variance_type": "fixed_small", "clip_sample": False, "prediction_type": "epsilon"}


def check_schedule(state: Mapping[str, torch.Tensor], alphas_cumprod: torch.Tensor, source: str) -> None:
    """The checkpoint's own ``alphas_cumprod`` buffer must be the yaml's schedule."""
    own = state.get("alphas_cumprod")
    if own is None:
        return
    if own.shape != alphas_cumprod.shape or not torch.allclose(own.double(), alphas_cumprod.double(), atol=1e-5):
        raise ConfigError(f"the checkpoint's alphas_cumprod buffer differs from the schedule of {source} "
                          "(timesteps, beta_schedule, linear_start, linear_end): the config does not describe it")


def convert_ldm(checkpoint: str, config: Optional[str] = None) -> Conversion:
    """The converted ``unet/``, ``vqvae/``, ``class_embedder/`` and ``scheduler/`` of a class-conditional LDM."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel

    from ..class_embedder import ClassEmbedder

    params, source = ldm_params(config)
    unet_params = params["unet_config"].get("params", {})
    first_stage = params["first_stage_config"].get("params", {})
    classes = params["cond_stage_config"].get("params", {})
    check_supported(params, unet_params, first_stage, classes, source)
    state = load_state_dict_file(checkpoint)
    parts = split_parts(state)
    scheduler = DDPMScheduler(**scheduler_config(params))
    check_schedule(state, scheduler.alphas_cumprod, source)
    scale = float(state["scale_factor"]) if "scale_factor" in state else float(params.get("scale_factor", 1.0))
    levels = len(unet_params["channel_mult"])
    attention = [2 ** i in unet_params["attention_resolutions"] for i in range(levels)]
    unet_modules = unet_table(levels, unet_params["num_res_blocks"], attention, lambda up: same_names)
    unet = build_model(UNet2DConditionModel, unet_config(unet_params), parts["unet"],
                       nest(unet_modules, PARTS["unet"], ""),
                       f"the LDM UNet of {source} (model_channels {unet_params['model_channels']}, channel_mult "
                       f"{list(unet_params['channel_mult'])}, attention_resolutions "
                       f"{list(unet_params['attention_resolutions'])})")
    vqvae = build_model(VQModel, vq_config(first_stage, scale), parts["vqvae"],
                        nest(vq_table(first_stage["ddconfig"]), PARTS["vqvae"], ""),
                        f"the VQ first stage of {source} (ch {first_stage['ddconfig']['ch']}, ch_mult "
                        f"{list(first_stage['ddconfig']['ch_mult'])}, n_embed {first_stage['n_embed']})")
    embedder = build_model(ClassEmbedder, {"num_embeddings": int(classes.get("n_classes", 1000)),
                                           "embedding_dim": int(classes["embed_dim"])},
                           parts["class_embedder"], {PARTS["class_embedder"] + "embedding.": ("embedding.", LAYER)},
                           f"the ClassEmbedder of {source} (n_classes {classes.get('n_classes', 1000)}, embed_dim "
                           f"{classes['embed_dim']})")
    settings = {"linear_start": scheduler.config.beta_start, "linear_end": scheduler.config.beta_end,
                "timesteps": scheduler.config.num_train_timesteps, "scale_factor": scale,
                "unet": dict(unet_params), "first_stage": dict(first_stage), "classes": dict(classes)}
    notes = ["class label -> ClassEmbedder token (N, 1, context_dim), the null class last, as cross-attention context",
             "encode: VQ encoder + quant_conv without quantizing; decode: through the quantizer (VQModelInterface)",
             f"latents scaled by scale_factor {scale:g}" + (" (the checkpoint's buffer)" if "scale_factor" in state
                                                           else ""),
             "schedule buffers are not weights: alphas_cumprod (when present) matched the yaml's schedule; "
             "model_ema.* and first_stage_model.loss.* were not used"]
    return Conversion("ldm", source, {"unet": unet, "vqvae": vqvae, "class_embedder": embedder,
                                      "scheduler": scheduler}, settings, notes)
