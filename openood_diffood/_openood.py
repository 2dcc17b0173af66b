"""Optional OpenOOD import with an install hint."""
from __future__ import annotations

import importlib
from types import ModuleType

INSTALL_HINT = (
    "OpenOOD v1.5 is not on PyPI; install it from its git repository: "
    "`git clone https://github.com/Jingkang50/OpenOOD && pip install -e OpenOOD` "
    "(the DiffOOD engine and CLI work without it)")


def require_openood(module: str = "openood") -> ModuleType:
    """Import an OpenOOD module or raise an ImportError that says how to install OpenOOD."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "openood":
            raise  # OpenOOD is there but one of its own dependencies is missing: show that error
        raise ImportError(f"{module} is needed here. {INSTALL_HINT}") from exc


def openood_available() -> bool:
    """True when OpenOOD can be imported."""
    return importlib.util.find_spec("openood") is not None
