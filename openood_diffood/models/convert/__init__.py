"""Convert the paper's models to diffusers directories: official DiffOOD ``ddim`` / ``iddpm`` and CompVis LDM
``cin256-v2`` (``ldm``); ``python -m openood_diffood convert`` (:mod:`.command`), shared key mapping in :mod:`.keys`."""
