"""LDM's class conditioning as a diffusers model (CompVis ``ClassEmbedder``): one learned context token per
class, the null class last; ``class_embedder/`` of a converted LDM holds its ``embedding.weight``."""
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
