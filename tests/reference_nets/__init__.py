"""Independent plain-PyTorch implementations of the source networks the converter reads, written from their
structure with the sources' ORIGINAL parameter names (so their state dicts are laid out as the real checkpoints):
``ddpm`` (the official DiffOOD DDIM ``Model`` and LDM's VQ encoder / decoder), ``openai`` (the improved-diffusion
``UNetModel`` of the official DiffOOD iDDPM and LDM's spatial-transformer UNet), ``ldm`` (the VQ first stage, the
class embedder and a Lightning-layout cin256-style checkpoint) and ``official_loop`` (the official detection loop)."""

import torch


def random_weights(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> torch.nn.Module:
    """Perturb every parameter (norm gains and biases too), so that no mapping error can hide behind a default
    initialisation; returns the module in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return module.eval()
