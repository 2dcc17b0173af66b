"""Start-up hook, imported by ``openood_diffood.pth`` when Python starts: registers DiffOOD with OpenOOD.

It imports nothing heavy: it watches for OpenOOD's modules and acts right when they load, so OpenOOD's own
``scripts/eval_ood.py --postprocessor diffood``, ``main.py`` and the ``Evaluator`` work unmodified:

* ``openood``: first the shims its import needs on current stacks (:func:`.compat.install_import_shims`);
* OpenOOD's postprocessor lookups: patched so that ``diffood`` / ``diffood_imagenet`` resolve, and its
  ``Evaluator``: run on the CPU where there is no CUDA (:func:`.registry.patch_module`);
* ``openood.main``: where OpenOOD has none, this package's (:mod:`.main`), so ``python -m openood.main`` runs.

Set ``OPENOOD_DIFFOOD_AUTOREGISTER=0`` to switch all of it off.
"""
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
