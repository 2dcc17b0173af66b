"""Models and their loading: diffusion backends (pixel, latent), classifier architectures, safe checkpoints."""
