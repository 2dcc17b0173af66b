"""Diffusion backends: a noise-prediction network with its training noise schedule, in pixel space."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError


class DiffusionBackend(nn.Module):
    """A noise-prediction network (``network``, epsilon) with its training noise schedule; ``encode`` / ``decode``
    map images in [-1, 1] to the space it denoises. ``num_classes``: real classes (None: unconditional); ``null_class``:
    guidance's unconditional label; ``max_timestep``: the largest trained timestep, when known."""

    #: The submodule whose config's ``in_channels`` are the channels of the images the model takes.
    input_module = ""

    def __init__(self, alphas_cumprod: torch.Tensor, num_classes: Optional[int], null_class: Optional[int],
                 sample_size: int, max_timestep: Optional[int] = None) -> None:
        super().__init__()
        alphas_cumprod = alphas_cumprod.detach().double().cpu()
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.schedule: Tuple[float, ...] = tuple(alphas_cumprod.tolist())
        self.num_classes = num_classes
        self.null_class = null_class
        self.sample_size = int(sample_size)
        self.max_timestep = max_timestep

    @property
    def num_train_timesteps(self) -> int:
        return len(self.schedule)

    @property
    def conditional(self) -> bool:
        return self.num_classes is not None

    @property
    def channels(self) -> int:
        """Channels of the images the model takes (``in_channels`` of :attr:`input_module`'s config)."""
        if not self.input_module:
            raise NotImplementedError
        return int(getattr(self, self.input_module).config.in_channels)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Map images in [-1, 1] into the space the network denoises."""
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Map the denoised sample back to images in [-1, 1]."""
        return z

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        """Epsilon prediction for a batch at timesteps ``t`` (labels None: the unconditional branch)."""
        raise NotImplementedError

    def labels_or_null(self, labels: Optional[torch.Tensor], z: torch.Tensor) -> torch.Tensor:
        """``labels``, or the null class for every sample of ``z`` when they are None."""
        if labels is None:
            return torch.full((z.shape[0],), self.null_class, device=z.device, dtype=torch.long)
        return labels


def resolve_null_class(num_embeds: int, null_class: Optional[int]) -> Tuple[int, int]:
    """(number of real classes, null class) for a label table of ``num_embeds`` rows whose last row is the
    null class unless ``null_class`` names another one."""
    num_classes = num_embeds - 1
    null_class = num_classes if null_class is None else int(null_class)
    if not 0 <= null_class < num_embeds:
        raise ConfigError(f"null class {null_class} outside the model's {num_embeds} class embeddings")
    return num_classes, null_class


def learned_sigma_eps(out: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The noise prediction of a model output: its first ``in_channels`` channels when the model also predicts
    the variance (learned sigma: ``out_channels == 2 * in_channels``), else the output itself."""
    if out.shape[1] == 2 * in_channels:
        return out[:, :in_channels]
    if out.shape[1] != in_channels:
        raise ConfigError(f"the denoiser returns {out.shape[1]} channels for {in_channels} input channels; expected "
                          f"{in_channels} (epsilon) or {2 * in_channels} (epsilon + learned sigma)")
    return out


class PixelUNetBackend(DiffusionBackend):
    """A diffusers ``UNet2DModel`` denoising its input space (class-conditional through ``num_class_embeds``):
    images, or latents when a :class:`~openood_diffood.models.latent.LatentBackend` wraps it. A learned-variance
    output (twice the input channels, improved-diffusion) contributes its epsilon half."""

    input_module = "unet"

    def __init__(self, unet: nn.Module, alphas_cumprod: torch.Tensor, null_class: Optional[int] = None,
                 max_timestep: Optional[int] = None) -> None:
        embeds = unet.config.num_class_embeds
        num_classes, null_class = (None, None) if embeds is None else resolve_null_class(embeds, null_class)
        super().__init__(alphas_cumprod, num_classes, null_class, unet.config.sample_size, max_timestep)
        self.unet = unet.eval().requires_grad_(False)

    def network(self, z: torch.Tensor, t: torch.Tensor, labels: Optional[torch.Tensor]) -> torch.Tensor:
        out = self.unet(z, t, class_labels=labels, return_dict=False)[0]
        return learned_sigma_eps(out, z.shape[1]).float()
