"""Start-up hook (loaded by ``openood_diffood.pth``): registers DiffOOD when OpenOOD gets imported.

It imports nothing heavy: it only watches for OpenOOD's postprocessor modules and patches them right after they
load, so OpenOOD's own ``scripts/eval_ood.py --postprocessor diffood`` and ``main.py`` work unmodified.
Set ``OPENOOD_DIFFOOD_AUTOREGISTER=0`` to switch it off.
"""
import importlib.abc
import os
import sys

WATCHED = frozenset({"openood.postprocessors", "openood.postprocessors.utils",
                     "openood.evaluation_api.postprocessor"})


class _Loader(importlib.abc.Loader):
    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        from openood_diffood.registry import patch_module

        patch_module(module)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader)
                return spec
        return None


def install():
    """Put the finder first on ``sys.meta_path`` unless switched off or already there."""
    if os.environ.get("OPENOOD_DIFFOOD_AUTOREGISTER", "1").lower() in ("0", "false", "no", "off"):
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


install()
