"""Latent diffusion backends: an ``AutoencoderKL`` in front of a DiT transformer or a class-conditional UNet.

Two diffusers directory layouts are recognised from their own files (``model_index.json`` and the subfolders
that hold a ``config.json``):

* DiT, as ``DiTPipeline.save_pretrained`` writes it (e.g. a local copy of ``facebook/DiT-XL-2-256``):
  ``transformer/`` (``DiTTransformer2DModel``), ``vae/`` (``AutoencoderKL``) and ``scheduler/``.
* latent UNet: ``unet/`` (``UNet2DModel``, class-conditional through ``num_class_embeds``), ``vae/`` and
  ``scheduler/``.

The engine sees pixels: ``sample_size`` is the pixel size the model expects (latent size x the VAE's
downsampling factor, 32 x 8 = 256 for DiT-XL-2-256), ``encode`` takes images in [-1, 1] to scaled latents
and ``decode`` takes them back.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Set, Union

import torch
from torch import nn

from .diffusion import (DiffusionBackend, PixelUNetBackend, _check_model_dir, alphas_cumprod_from_scheduler,
                        resolve_null_class)

#: Subfolders holding the latent denoiser, in the order they are looked for.
LATENT_DENOISERS = ("transformer", "unet")


def vae_scale_factor(vae: nn.Module) -> int:
    """Pixels per latent pixel along one side: 2 ** (number of VAE resolution levels - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def learned_sigma_eps(out: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The noise prediction of a model output: its first ``in_channels`` channels when the model also predicts
    the variance (learned sigma: ``out_channels == 2 * in_channels``), else the output itself."""
    if out.shape[1] == 2 * in_channels:
        return out[:, :in_channels]
    if out.shape[1] != in_channels:
        raise ValueError(f"the denoiser returns {out.shape[1]} channels for {in_channels} input channels; expected "
                         f"{in_channels} (epsilon) or {2 * in_channels} (epsilon + learned sigma)")
    return out


class DiTDenoiser(DiffusionBackend):
    """A diffusers ``DiTTransformer2DModel`` in its own latent space, called as ``DiTPipeline`` calls it.

    Real classes are ``0 .. num_embeds_ada_norm - 1``; the null class of guidance is ``num_embeds_ada_norm``
    (the extra row of DiT's label table that classifier-free training drops labels to: 1000 for DiT-XL-2-256).
    With learned sigma the first half of the output channels is the noise prediction.
    """

    def __init__(self, transformer: nn.Module, alphas_cumprod: torch.Tensor,
                 null_class: Optional[int] = None) -> None:
        classes = transformer.config.num_embeds_ada_norm
        if classes is None:
            raise ValueError("the DiT transformer has no class embedding (num_embeds_ada_norm is None); DiffOOD "
                             "needs a class-conditional DiT such as facebook/DiT-XL-2-256")
        num_classes, null_class = resolve_null_class(classes + 1, null_class)
        super().__init__(alphas_cumprod, num_classes, null_class, transformer.config.sample_size)
        self.transformer = transformer.eval().requires_grad_(False)

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Epsilon for latents ``z`` at timesteps ``t``; ``labels`` None predicts with the null class."""
        if labels is None:
            labels = torch.full((z.shape[0],), self.null_class, device=z.device, dtype=torch.long)
        out = self.transformer(z.to(self.transformer.dtype), timestep=t, class_labels=labels, return_dict=False)[0]
        return learned_sigma_eps(out, z.shape[1]).float()


class LatentBackend(DiffusionBackend):
    """A latent denoiser (any :class:`DiffusionBackend` on latents) behind an ``AutoencoderKL``.

    ``encode`` uses the mean of the VAE's posterior, not a sample, so that the latent of an image is
    deterministic and the only randomness of a score is its per-image diffusion noise. Latents are scaled by the
    VAE's ``scaling_factor`` (0.18215 for the Stable Diffusion VAE of DiT) after subtracting its
    ``shift_factor`` when the config has one, as diffusers' pipelines do.
    """

    def __init__(self, denoiser: DiffusionBackend, vae: nn.Module) -> None:
        factor = vae_scale_factor(vae)
        super().__init__(denoiser.alphas_cumprod, denoiser.num_classes, denoiser.null_class,
                         denoiser.sample_size * factor)
        self.vae_scale_factor = factor
        self.denoiser = denoiser
        self.vae = vae.eval().requires_grad_(False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def latent_size(self) -> int:
        """Side of the latent the denoiser works on."""
        return self.denoiser.sample_size

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> (posterior mean - shift) * scaling_factor."""
        mean = self.vae.encode(x.to(self.vae.dtype)).latent_dist.mean
        return (mean - self.shift_factor) * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped)."""
        return self.vae.decode((z / self.scaling_factor + self.shift_factor).to(self.vae.dtype)).sample

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        return self.denoiser.network(z, t, labels)


def _components(path: str, **hub_kwargs) -> Set[str]:
    """Names of the model's parts: ``model_index.json`` entries plus subfolders that hold a ``config.json``.

    A hub id is resolved through its ``model_index.json`` (an empty set when it has none).
    """
    if not os.path.isdir(path):
        from diffusers import DiffusionPipeline

        try:
            index = DiffusionPipeline.load_config(path, **hub_kwargs)
        except (OSError, ValueError):
            return set()
        return {k for k, v in index.items() if isinstance(v, (list, tuple)) and not k.startswith("_")}
    names = {d for d in os.listdir(path) if os.path.isfile(os.path.join(path, d, "config.json"))}
    index_file = os.path.join(path, "model_index.json")
    if os.path.isfile(index_file):
        with open(index_file) as f:
            index = json.load(f)
        names |= {k for k, v in index.items() if isinstance(v, list) and not k.startswith("_")}
    return names


def is_latent_layout(path: Union[str, os.PathLike], **hub_kwargs) -> bool:
    """True when the model at ``path`` is a latent diffusion model: it has a ``vae`` or a ``transformer``.

    Decided from the directory's own files (``model_index.json`` and the subfolders with a ``config.json``),
    for a hub id from its ``model_index.json``.
    """
    return bool({"vae", "transformer"} & _components(os.fspath(path), **hub_kwargs))


def load_latent(path: Union[str, os.PathLike], null_class: Optional[int] = None,
                torch_dtype: Optional[torch.dtype] = None, **hub_kwargs) -> LatentBackend:
    """Load a latent diffusion backend (DiT or latent UNet, see the module docstring) from a directory or hub id.

    ``torch_dtype`` (e.g. ``torch.float16`` on a GPU) is the dtype of the VAE's and the denoiser's weights;
    without it they stay fp32 and the engine's autocast (bf16 on CUDA) sets the compute precision.
    ``null_class`` defaults to the model's extra class (``num_embeds_ada_norm`` for DiT, the last class
    embedding for a UNet).
    """
    from diffusers import AutoencoderKL, DiTTransformer2DModel, UNet2DModel

    path = os.fspath(path)
    _check_model_dir(path, latent=True)
    parts = _components(path, **hub_kwargs)
    kind = next((d for d in LATENT_DENOISERS if d in parts), None)
    if kind is None:
        raise FileNotFoundError(f"latent diffusion model {path!r} has no denoiser: expected transformer/ (DiT) or "
                                "unet/ (UNet2DModel) next to vae/")
    alphas_cumprod = alphas_cumprod_from_scheduler(path, **hub_kwargs)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype, **hub_kwargs)
    if kind == "transformer":
        model = DiTTransformer2DModel.from_pretrained(path, subfolder="transformer", torch_dtype=torch_dtype,
                                                      **hub_kwargs)
        denoiser: DiffusionBackend = DiTDenoiser(model, alphas_cumprod, null_class=null_class)
    else:
        model = UNet2DModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype, **hub_kwargs)
        denoiser = PixelUNetBackend(model, alphas_cumprod, null_class=null_class)
    if model.config.in_channels != vae.config.latent_channels:
        raise ValueError(f"{kind}/ expects {model.config.in_channels} input channels but the VAE makes "
                         f"{vae.config.latent_channels}-channel latents: the two parts do not belong together")
    return LatentBackend(denoiser, vae)
