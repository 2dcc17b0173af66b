"""Convert the paper's own models into diffusers directories: the official DiffOOD checkpoints (``ddim``:
``network/ddim/ddim.py`` ``Model``; ``iddpm``: ``network/iddpm/unet.py`` ``UNetModel``) and CompVis latent
diffusion's class-conditional ``cin256-v2`` (``ldm``). ``python -m openood_diffood convert`` runs it
(:mod:`.command`); each source format has its module, the shared key mapping is in :mod:`.keys`."""
