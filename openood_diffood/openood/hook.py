"""Start-up hook (``openood_diffood.pth``): registers DiffOOD with OpenOOD as OpenOOD's modules load, importing
nothing heavy, so ``scripts/eval_ood.py --postprocessor diffood``, ``main.py`` and the ``Evaluator`` work unmodified:
import shims for ``openood``, patched postprocessor lookups and a CPU ``Evaluator``, and ``python -m openood.main``
where OpenOOD has none. ``OPENOOD_DIFFOOD_AUTOREGISTER=0`` switches it off."""
import importlib.abc
import importlib.util
import os
import sys

from .compat import PATCHED_MODULES, environment_flag, install_import_shims

SWITCH = "OPENOOD_DIFFOOD_AUTOREGISTER"
MAIN = "openood.main"


class _PatchingLoader(importlib.abc.Loader):
    """Runs the module's own loader, then patches the module."""

    def __init__(self, inner: importlib.abc.Loader) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        from .registry import patch_module

        patch_module(module)


class OpenOODFinder(importlib.abc.MetaPathFinder):
    """The finder put first on ``sys.meta_path`` (see the module docstring)."""

    def find_spec(self, fullname, path, target=None):
        if fullname == "openood":
            install_import_shims()
            return None
        if fullname not in PATCHED_MODULES and fullname != MAIN:
            return None
        spec = self._others(fullname, path, target)
        if fullname == MAIN:
            return spec or importlib.util.spec_from_file_location(
                MAIN, os.path.join(os.path.dirname(os.path.abspath(__file__)), "main.py"))
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _PatchingLoader(spec.loader)
        return spec

    def _others(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` unless switched off or already there."""
    if environment_flag(SWITCH) and not any(isinstance(f, OpenOODFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, OpenOODFinder())


install()
