"""openood-diffood: DiffOOD (Liu et al., arXiv 2211.11255) as an engine and an OpenOOD v1.5 postprocessor.

Public API: :class:`DiffOOD` (the engine), :class:`DiffOODSettings`, :class:`Classifier` (adapter),
:func:`load_diffusion`, :class:`DiffOODPostprocessor` (needs OpenOOD) and :func:`register`.
"""
from .classifier import Classifier
from .diffusion import DiffusionBackend, load_diffusion
from .engine import DiffOOD, DiffOODOutput
from .registry import register
from .settings import DiffOODSettings

__all__ = ["DiffOOD", "DiffOODOutput", "DiffOODSettings", "Classifier", "DiffusionBackend", "load_diffusion",
           "DiffOODPostprocessor", "register"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "DiffOODPostprocessor":  # imported lazily: it needs OpenOOD
        from .postprocessor import DiffOODPostprocessor

        return DiffOODPostprocessor
    raise AttributeError(f"module 'openood_diffood' has no attribute {name!r}")
