"""Diffusion backends: load a diffusers directory (or hub id) and predict noise with classifier-free guidance."""
from __future__ import annotations

import os
from typing import Optional, Tuple, Union

import torch
from torch import nn


class DiffusionBackend(nn.Module):
    """A noise-prediction network with its training noise schedule.

    Subclasses map images in [-1, 1] to the space the network denoises (``encode``/``decode``; identity for
    pixel models) and predict epsilon there. ``num_classes`` is the number of real classes (None for an
    unconditional model); ``null_class`` is the label used for the unconditional branch of guidance.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, num_classes: Optional[int], null_class: Optional[int],
                 sample_size: int) -> None:
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod.double(), persistent=False)
        self.num_classes = num_classes
        self.null_class = null_class
        self.sample_size = int(sample_size)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in [-1, 1] into the space the network denoises."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map the denoised sample back to images in [-1, 1]."""
        return z

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Raw epsilon prediction for a batch (labels None for an unconditional model)."""
        raise NotImplementedError

    def predict_noise(self, z: torch.Tensor, t: int, labels: Optional[torch.Tensor], guidance: float) -> torch.Tensor:
        """Guided epsilon: eps_null + w (eps_y - eps_null), both branches in one batched call.

        ``w == 1`` (conditional only), ``w == 0`` (the null class only, i.e. unconditional), an unconditional
        model or no labels need only one branch and make one call.
        """
        n = z.shape[0]
        if not self.conditional or labels is None:
            return self.network(z, torch.full((n,), t, device=z.device, dtype=torch.long), None)
        null = torch.full_like(labels, self.null_class)
        if guidance in (0.0, 1.0):
            return self.network(z, torch.full((n,), t, device=z.device, dtype=torch.long),
                                labels if guidance == 1.0 else null)
        eps = self.network(torch.cat([z, z]), torch.full((2 * n,), t, device=z.device, dtype=torch.long),
                           torch.cat([labels, null]))
        eps_y, eps_null = eps.chunk(2)
        return eps_null + guidance * (eps_y - eps_null)


def resolve_null_class(num_embeds: int, null_class: Optional[int]) -> Tuple[int, int]:
    """(number of real classes, null class) for a label table of ``num_embeds`` rows whose last row is the
    null class unless ``null_class`` names another one."""
    num_classes = num_embeds - 1
    null_class = num_classes if null_class is None else int(null_class)
    if not 0 <= null_class < num_embeds:
        raise ValueError(f"null class {null_class} outside the model's {num_embeds} class embeddings")
    return num_classes, null_class


class PixelUNetBackend(DiffusionBackend):
    """A diffusers ``UNet2DModel`` denoising its input space (class-conditional through ``num_class_embeds``):
    images, or latents when a :class:`~openood_diffood.latent.LatentBackend` wraps it."""

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, null_class: Optional[int] = None) -> None:
        embeds = unet.config.num_class_embeds
        num_classes, null_class = (None, None) if embeds is None else resolve_null_class(embeds, null_class)
        super().__init__(alphas_cumprod, num_classes, null_class, unet.config.sample_size)
        self.unet = unet.eval().requires_grad_(False)

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return self.unet(z, t, class_labels=labels, return_dict=False)[0].float()


def alphas_cumprod_from_scheduler(scheduler_dir_or_id: str, **hub_kwargs) -> torch.Tensor:
    """The cumulative alpha products of the model's own diffusers scheduler config."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(scheduler_dir_or_id, subfolder="scheduler", **hub_kwargs)
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(f"only epsilon-prediction models are supported, the scheduler says "
                         f"{scheduler.config.prediction_type!r}")
    return scheduler.alphas_cumprod.double()


def _check_model_dir(path: str, latent: bool = False) -> None:
    """Name the files a local model directory lacks (pixel layout, or the latent one when ``latent``)."""
    if not os.path.isdir(path):
        return  # a hub id: diffusers resolves it (and reports a missing repo itself)
    required = ["scheduler/scheduler_config.json"] + (["vae/config.json"] if latent else [])
    missing = [p for p in required if not os.path.isfile(os.path.join(path, p))]
    denoisers = ("transformer", "unet") if latent else ("unet",)
    if not any(os.path.isfile(os.path.join(path, d, "config.json")) for d in denoisers):
        missing.append(" or ".join(f"{d}/config.json" for d in denoisers))
    if missing:
        layout = ("A latent model directory holds transformer/ (DiTTransformer2DModel) or unet/ (UNet2DModel), "
                  "vae/ (AutoencoderKL) and scheduler/, as DiTPipeline.save_pretrained writes them (e.g. a local "
                  "copy of facebook/DiT-XL-2-256)." if latent else
                  "A model directory holds unet/ (UNet2DModel) and scheduler/ as written by "
                  "`python -m openood_diffood train` or diffusers' save_pretrained.")
        raise FileNotFoundError(f"incomplete diffusion model directory {path!r}: missing {', '.join(missing)}. "
                                + layout)


def load_diffusion(path: Union[str, os.PathLike], null_class: Optional[int] = None,
                   torch_dtype: Optional[torch.dtype] = None, **hub_kwargs) -> DiffusionBackend:
    """Load a diffusion backend from a diffusers directory or hub id.

    ``unet/`` holds a ``UNet2DModel``; ``null_class`` defaults to the last class embedding
    (``num_class_embeds - 1``, so the real classes are ``0 .. num_class_embeds - 2``). A directory with a
    ``vae/`` or a ``transformer/`` (a DiT or latent UNet) loads through :func:`openood_diffood.latent.load_latent`.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and (path.startswith(("/", ".", "~")) or path.count("/") != 1):
        raise FileNotFoundError(f"diffusion model directory {path!r} does not exist; pass a directory written by "
                                "`python -m openood_diffood train` (unet/ + scheduler/) or a hub id")
    from . import latent

    if latent.is_latent_layout(path, **hub_kwargs):
        return latent.load_latent(path, null_class=null_class, torch_dtype=torch_dtype, **hub_kwargs)
    _check_model_dir(path)
    from diffusers import UNet2DModel

    unet = UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype, **hub_kwargs)
    return PixelUNetBackend(unet, alphas_cumprod_from_scheduler(path, **hub_kwargs), null_class=null_class)
