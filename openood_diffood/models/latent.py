"""Latent diffusion backends: an ``AutoencoderKL`` before a DiT or a class-conditional UNet, and LDM's ``VQModel``
before a class-token ``UNet2DConditionModel``. The engine sees pixels: ``sample_size`` is the pixel size (latent size
x the VAE's factor), ``encode`` / ``decode`` map images in [-1, 1] to scaled latents and back."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError
from .diffusion import DiffusionBackend, learned_sigma_eps, resolve_null_class


def vae_scale_factor(vae: nn.Module) -> int:
    """Pixels per latent pixel along one side: 2 ** (number of VAE resolution levels - 1)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


class DiTDenoiser(DiffusionBackend):
    """A diffusers ``DiTTransformer2DModel`` in its own latent space, called as ``DiTPipeline`` calls it.
    Real classes are ``0 .. num_embeds_ada_norm - 1``; the null class of guidance is ``num_embeds_ada_norm``
    (the extra row of DiT's label table that classifier-free training drops labels to: 1000 for DiT-XL-2-256).
    With learned sigma the first half of the output channels is the noise prediction."""

    input_module = "transformer"

    def __init__(self, transformer: nn.Module, alphas_cumprod: torch.Tensor,
                 null_class: Optional[int] = None) -> None:
        classes = transformer.config.num_embeds_ada_norm
        if classes is None:
            raise ConfigError("the DiT transformer has no class embedding (num_embeds_ada_norm is None); DiffOOD "
                              "needs a class-conditional DiT such as facebook/DiT-XL-2-256")
        num_classes, null_class = resolve_null_class(classes + 1, null_class)
        super().__init__(alphas_cumprod, num_classes, null_class, transformer.config.sample_size)
        self.transformer = transformer.eval().requires_grad_(False)

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Epsilon for latents ``z`` at timesteps ``t``; ``labels`` None predicts with the null class."""
        labels = self.labels_or_null(labels, z)
        out = self.transformer(z.to(self.transformer.dtype), timestep=t, class_labels=labels, return_dict=False)[0]
        return learned_sigma_eps(out, z.shape[1]).float()


class ClassTokenUNet(DiffusionBackend):
    """A diffusers ``UNet2DConditionModel`` whose cross-attention context is one token, the class embedding of the
    label (CompVis LDM ``cin256``: ``ClassEmbedder`` rows 0 .. 999 the classes, the last row the null class)."""

    input_module = "unet"

    def __init__(self, unet: nn.Module, class_embedder: nn.Module, alphas_cumprod: torch.Tensor,
                 null_class: Optional[int] = None) -> None:
        num_classes, null_class = resolve_null_class(class_embedder.config.num_embeddings, null_class)
        super().__init__(alphas_cumprod, num_classes, null_class, unet.config.sample_size)
        self.unet = unet.eval().requires_grad_(False)
        self.class_embedder = class_embedder.eval().requires_grad_(False)

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Epsilon for latents ``z`` at timesteps ``t``; ``labels`` None predicts with the null class."""
        context = self.class_embedder(self.labels_or_null(labels, z)).to(self.unet.dtype)
        out = self.unet(z.to(self.unet.dtype), t, encoder_hidden_states=context, return_dict=False)[0]
        return learned_sigma_eps(out, z.shape[1]).float()


class LatentBackend(DiffusionBackend):
    """A latent denoiser behind an ``AutoencoderKL``: ``encode`` takes the posterior's mean (deterministic, so a
    score's only randomness is its diffusion noise), shifted and scaled as diffusers' pipelines do."""

    input_module = "vae"

    def __init__(self, denoiser: DiffusionBackend, vae: nn.Module) -> None:
        factor = vae_scale_factor(vae)
        super().__init__(denoiser.alphas_cumprod, denoiser.num_classes, denoiser.null_class,
                         denoiser.sample_size * factor, denoiser.max_timestep)
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


class VQLatentBackend(LatentBackend):
    """A latent denoiser behind LDM's VQ first stage (``VQModelInterface``): ``encode`` is the encoder and
    ``quant_conv`` without quantizing, ``decode`` goes through the quantizer first; latents are multiplied by the
    yaml's ``scale_factor`` (``vqvae.config.scaling_factor``; 1.0 for cin256-v2)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> unquantized latents * scaling_factor."""
        return self.vae.encode(x.to(self.vae.dtype)).latents * self.scaling_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> quantized -> images in [-1, 1] (not clamped)."""
        return self.vae.decode((z / self.scaling_factor).to(self.vae.dtype)).sample
