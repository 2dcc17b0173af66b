"""CompVis latent diffusion's class-conditional model, laid out as its Lightning checkpoint: ``VQModelInterface``
(ldm/models/autoencoder.py with taming's VectorQuantizer2), ``ClassEmbedder`` (ldm/modules/encoders/modules.py)
and a ``LatentDiffusion`` holder whose state dict has ``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.*`` and the DDPM schedule buffers."""
import sys
import types

import numpy as np
import torch
from torch import nn

from .ddpm import Decoder, Encoder
from .openai import UNetModel


class VectorQuantizer(nn.Module):
    """Nearest codebook entry of each latent pixel (taming's VectorQuantizer2, legacy, no remap)."""

    def __init__(self, n_e, e_dim):
        super().__init__()
        self.embedding = nn.Embedding(n_e, e_dim)

    def forward(self, z):
        flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        w = self.embedding.weight
        distances = flat.pow(2).sum(1, keepdim=True) + w.pow(2).sum(1)[None] - 2 * flat @ w.t()
        codes = w[distances.argmin(1)]
        return codes.reshape(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)


class VQModelInterface(nn.Module):
    def __init__(self, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=3, embed_dim=3, n_embed=16):
        super().__init__()
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, 3, z_channels)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, 3, z_channels)
        self.quantize = VectorQuantizer(n_embed, embed_dim)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)

    def encode(self, x):
        """Without quantizing (VQModelInterface.encode)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, h):
        """Through the quantizer first (VQModelInterface.decode)."""
        return self.decoder(self.post_quant_conv(self.quantize(h)))


class ClassEmbedder(nn.Module):
    def __init__(self, embed_dim=16, n_classes=4):
        super().__init__()
        self.embedding = nn.Embedding(n_classes, embed_dim)

    def forward(self, labels):
        return self.embedding(labels[:, None])


def scaled_linear_alphas_cumprod(start, end, steps=1000):
    """LDM's "linear" schedule: betas = linspace(sqrt(start), sqrt(end))^2 in float64, then cumprod."""
    betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


class LatentDiffusion(nn.Module):
    """``model.diffusion_model`` + ``first_stage_model`` + ``cond_stage_model`` + schedule buffers."""

    def __init__(self, unet: UNetModel, vq: VQModelInterface, embedder: ClassEmbedder, scale_factor=1.0,
                 linear_start=0.0015, linear_end=0.0195):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.first_stage_model, self.cond_stage_model = vq, embedder
        self.scale_factor = scale_factor
        abar = scaled_linear_alphas_cumprod(linear_start, linear_end)
        betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        for name, value in {"betas": betas, "alphas_cumprod": abar, "sqrt_alphas_cumprod": abar.sqrt(),
                            "posterior_variance": betas, "logvar": torch.zeros(1000)}.items():
            self.register_buffer(name, value.float())

    def apply_model(self, z, t, labels):
        return self.model.diffusion_model(z, t, context=self.cond_stage_model(labels))

    def encode(self, x):
        return self.scale_factor * self.first_stage_model.encode(x)

    def decode(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)


def save_lightning_checkpoint(model: LatentDiffusion, path) -> None:
    """As PyTorch Lightning 1.x saves it: ``state_dict`` plus training entries, among them a callbacks dict keyed
    by the ModelCheckpoint class with a numpy best score (a stand-in class is made for the save and removed)."""
    names = ["pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint"]
    modules = {name: types.ModuleType(name) for name in names}
    checkpoint_class = type("ModelCheckpoint", (), {"__module__": names[-1]})
    modules[names[-1]].ModelCheckpoint = checkpoint_class
    sys.modules.update(modules)
    try:
        torch.save({"epoch": 3, "global_step": 1200, "pytorch-lightning_version": "1.4.2",
                    "state_dict": model.state_dict(), "optimizer_states": [], "lr_schedulers": [],
                    "callbacks": {checkpoint_class: {"best_model_score": np.float64(0.25), "monitor": "val/loss"}}},
                   path)
    finally:
        for name in names:
            del sys.modules[name]
