"""LDM's class conditioning as a diffusers model: one learned context token per class (``ClassEmbedder`` of
CompVis latent diffusion), the null class of guidance last. ``class_embedder/`` of a converted LDM directory holds
it: ``config.json`` and ``diffusion_pytorch_model.safetensors`` with ``embedding.weight`` (classes + 1, context dim),
which plain ``safetensors`` reads too."""
from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ClassEmbedder(ModelMixin, ConfigMixin):
    """labels (N,) -> the cross-attention context (N, 1, embedding_dim) of a ``UNet2DConditionModel``."""

    @register_to_config
    def __init__(self, num_embeddings: int = 1001, embedding_dim: int = 512) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)[:, None, :]
