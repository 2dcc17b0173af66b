"""Load a diffusion backend from a diffusers directory or hub id, recognising the layout from its files: pixel
(``unet/``, ``scheduler/``), DiT (``transformer/``, ``vae/``), latent UNet (``unet/``, ``vae/``) or LDM (``unet/``,
``vqvae/``, ``class_embedder/``). A local-looking path that does not exist fails at once; an unreachable hub id
within seconds, with the command that downloads it."""
from __future__ import annotations

import os
from typing import Optional, Set, Union

import torch

from ..errors import ConfigError, MissingFileError
from .card_facts import ModelFacts, read_facts
from .diffusion import DiffusionBackend, PixelUNetBackend
from .latent import ClassTokenUNet, DiTDenoiser, LatentBackend, VQLatentBackend

#: Subfolders holding the latent denoiser, in the order they are looked for.
LATENT_DENOISERS = ("transformer", "unet")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors",
                "diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.bin")
HUB_TIMEOUT_SECONDS = 10


def looks_local(name: str) -> bool:
    """Whether ``name`` reads as a local path rather than a hub id (``org/model``): it starts with ``/``, ``.``
    or ``~``, has a backslash or more than one ``/``, has no ``/`` at all, or its first part is a local folder."""
    if name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") != 1:
        return True
    return os.path.isdir(name.split("/")[0])


#: Per layout: the parts besides ``scheduler/`` that need a config.json and weights (each a group of
#: alternatives), and the sentence that describes the layout.
LAYOUTS = {
    "pixel": ((("unet",),), "A model directory holds unet/ (UNet2DModel with its weights) and scheduler/, as written "
                            "by `python -m openood_diffood train` or diffusers' save_pretrained."),
    "latent": ((("vae",), LATENT_DENOISERS), "A latent model directory holds transformer/ (DiTTransformer2DModel) or "
                                             "unet/ (UNet2DModel), vae/ (AutoencoderKL) and scheduler/, as "
                                             "DiTPipeline.save_pretrained writes them."),
    "ldm": ((("vqvae",), ("class_embedder",), ("unet",)),
            "An LDM directory holds unet/ (UNet2DConditionModel), vqvae/ (VQModel), class_embedder/ and scheduler/, "
            "as `python -m openood_diffood convert --from ldm` writes them."),
}


def check_model_dir(path: str, layout: str) -> None:
    """Name the files a local model directory of ``layout`` (a key of :data:`LAYOUTS`) lacks."""
    groups, description = LAYOUTS[layout]
    missing = [] if os.path.isfile(os.path.join(path, "scheduler", "scheduler_config.json")) else [
        "scheduler/scheduler_config.json"]
    for group in groups:
        found = [d for d in group if os.path.isfile(os.path.join(path, d, "config.json"))]
        if not found:
            missing.append(" or ".join(f"{d}/config.json" for d in group))
        elif not any(os.path.isfile(os.path.join(path, found[0], w)) for w in WEIGHT_FILES):
            missing.append(f"{found[0]}/{WEIGHT_FILES[0]} (the weights)")
    if missing:
        raise MissingFileError(f"incomplete diffusion model directory {path!r}: missing {', '.join(missing)}. "
                               + description)


def components(path: str, **hub_kwargs) -> Set[str]:
    """Names of the model's parts: ``model_index.json`` entries plus (local) subfolders that hold a ``config.json``."""
    from diffusers import DiffusionPipeline

    try:
        index = DiffusionPipeline.load_config(path, **hub_kwargs)
    except (OSError, ValueError):
        index = {}
    names = {k for k, v in index.items() if isinstance(v, (list, tuple)) and not k.startswith("_")}
    if os.path.isdir(path):
        names |= {d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "config.json"))}
    return names


def layout_of(parts: Set[str]) -> str:
    """The :data:`LAYOUTS` key of a model with these parts: ``ldm`` with a ``vqvae``, ``latent`` with a ``vae`` or
    a ``transformer``, else ``pixel``."""
    if "vqvae" in parts:
        return "ldm"
    return "latent" if {"vae", "transformer"} & parts else "pixel"


def alphas_cumprod_from_scheduler(path: str, **hub_kwargs) -> torch.Tensor:
    """The cumulative alpha products of the model's own diffusers scheduler config."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(path, subfolder="scheduler", **hub_kwargs)
    if scheduler.config.prediction_type != "epsilon":
        raise ConfigError(f"only epsilon-prediction models are supported, the scheduler says "
                          f"{scheduler.config.prediction_type!r}")
    return scheduler.alphas_cumprod.double()


def _check_hub(repo_id: str, hub_kwargs: dict) -> None:
    """Fail within seconds when a hub id is neither cached nor reachable."""
    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "scheduler/scheduler_config.json"), str):
        return
    try:
        model_info(repo_id, timeout=HUB_TIMEOUT_SECONDS, token=hub_kwargs.get("token"))
    except Exception as exc:  # offline, unknown repo, no permission: all end the same way
        raise MissingFileError(f"diffusion model {repo_id!r} is not a local directory and the Hugging Face Hub could "
                               f"not be reached for it ({type(exc).__name__}); download it where there is a network "
                               f"(`huggingface-cli download {repo_id} --local-dir <dir>`) and pass that "
                               "directory") from None


def load_diffusion(path: Union[str, os.PathLike], null_class: Optional[int] = None,
                   torch_dtype: Optional[torch.dtype] = None, **hub_kwargs) -> DiffusionBackend:
    """Load a diffusion backend from a diffusers directory or hub id (see the module docstring).
    ``null_class`` defaults to the one the model card records, else the model's extra class (the last class
    embedding; ``num_embeds_ada_norm`` for DiT); ``max_timestep`` comes from the card (:mod:`.card_facts`).
    ``torch_dtype`` is the dtype of the weights (default fp32; the engine's autocast sets the compute precision)."""
    path = os.path.expanduser(os.fspath(path))
    local = os.path.isdir(path)
    if not local and looks_local(path):
        raise MissingFileError(f"diffusion model directory {path!r} does not exist; pass a directory written by "
                               "`python -m openood_diffood train` (unet/ + scheduler/) or a hub id (org/name)")
    if not local:
        _check_hub(path, hub_kwargs)
    parts = components(path, **hub_kwargs)
    layout = layout_of(parts)
    if local:
        check_model_dir(path, layout)
    facts = read_facts(path) if local else ModelFacts()
    max_timestep = facts.max_timestep
    null_class = facts.null_class if null_class is None else null_class
    alphas_cumprod = alphas_cumprod_from_scheduler(path, **hub_kwargs)
    from diffusers import UNet2DModel

    if layout == "pixel":
        unet = UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype, **hub_kwargs)
        return PixelUNetBackend(unet, alphas_cumprod, null_class=null_class, max_timestep=max_timestep)
    if layout == "ldm":
        return load_ldm(path, alphas_cumprod, null_class, torch_dtype, **hub_kwargs)
    from diffusers import AutoencoderKL, DiTTransformer2DModel

    kind = next((d for d in LATENT_DENOISERS if d in parts), None)
    if kind is None:
        raise MissingFileError(f"latent diffusion model {path!r} has no denoiser: expected transformer/ (DiT) or "
                               "unet/ (UNet2DModel) next to vae/")
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype, **hub_kwargs)
    if kind == "transformer":
        model = DiTTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=torch_dtype,
                                                      **hub_kwargs)
        denoiser: DiffusionBackend = DiTDenoiser(model, alphas_cumprod, null_class=null_class)
    else:
        model = UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype, **hub_kwargs)
        denoiser = PixelUNetBackend(model, alphas_cumprod, null_class=null_class, max_timestep=max_timestep)
    check_latent_channels(kind, model, vae)
    return LatentBackend(denoiser, vae)


def check_latent_channels(kind: str, model, vae) -> None:
    """The denoiser must take the latents the autoencoder makes."""
    if model.config.in_channels != vae.config.latent_channels:
        raise ConfigError(f"{kind}/ expects {model.config.in_channels} input channels but the VAE makes "
                          f"{vae.config.latent_channels}-channel latents: the two parts do not belong together")


def load_ldm(path: str, alphas_cumprod: torch.Tensor, null_class: Optional[int] = None,
             torch_dtype: Optional[torch.dtype] = None, **hub_kwargs) -> VQLatentBackend:
    """The LDM layout: ``UNet2DConditionModel`` conditioned on ``class_embedder/`` tokens behind ``vqvae/``."""
    from diffusers import UNet2DConditionModel, VQModel

    from .class_embedder import ClassEmbedder

    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype, **hub_kwargs)
    vqvae = VQModel.from_pretrained(path, subfolder="vqvae", torch_dtype=torch_dtype, **hub_kwargs)
    embedder = ClassEmbedder.from_pretrained(path, subfolder="class_embedder", torch_dtype=torch_dtype, **hub_kwargs)
    check_latent_channels("unet", unet, vqvae)
    if embedder.config.embedding_dim != unet.config.cross_attention_dim:
        raise ConfigError(f"class_embedder/ makes {embedder.config.embedding_dim}-d tokens but unet/ attends to "
                          f"{unet.config.cross_attention_dim}-d context: the two parts do not belong together")
    return VQLatentBackend(ClassTokenUNet(unet, embedder, alphas_cumprod, null_class=null_class), vqvae)
