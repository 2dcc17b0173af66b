"""``python -m openood_diffood train``: the class-conditional diffusion model DiffOOD denoises with."""
