"""openood-diffood: DiffOOD (Liu et al., arXiv 2211.11255) as an engine and an OpenOOD v1.5 postprocessor.
Public API (imported on first use, so ``import openood_diffood`` stays light and never imports OpenOOD):
:class:`DiffOOD` (the engine) and :class:`DiffOODOutput`; :class:`DiffOODSettings` (what changes a score) and
:class:`RunOptions` (how it runs); :func:`load_diffusion`; :class:`DiffOODPostprocessor` and :func:`register`
(need OpenOOD); :class:`DiffOODDetector` (pytorch-ood)."""
from importlib import import_module

from .version import __version__

_EXPORTS = {
    "DiffOOD": "runtime.engine", "DiffOODOutput": "runtime.engine",
    "DiffOODSettings": "config", "RunOptions": "config",
    "load_diffusion": "models.loading",
    "DiffOODPostprocessor": "openood.postprocessor", "register": "openood.registry",
    "DiffOODDetector": "detector",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'openood_diffood' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
