"""Everything about OpenOOD itself: importing it (with an install hint), the shims its import and its ``.cuda()``
calls need on some machines, where its checkout keeps ``configs/`` and ``data/``, and its benchmark tables.
Light to import (the start-up hook uses it): torch is imported only by :func:`cuda_calls_stay_put`."""
from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import os
import pickle
import sys
import types
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

from ..errors import ConfigError, MissingPackageError

INSTALL_HINT = (
    "OpenOOD v1.5 is not on PyPI; install it from its git repository: "
    "`git clone https://github.com/Jingkang50/OpenOOD && pip install -e OpenOOD` "
    "(the DiffOOD engine and CLI work without it)")

#: OpenOOD v1.5's benchmarks (``openood/evaluation_api/datasets.py``): classes, near-OOD, far-OOD, csid sets.
BENCHMARKS: Dict[str, Tuple[int, Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]] = {
    "cifar10": (10, ("cifar100", "tin"), ("mnist", "svhn", "texture", "places365"), ("cifar10c",)),
    "cifar100": (100, ("cifar10", "tin"), ("mnist", "svhn", "texture", "places365"), ()),
    "imagenet200": (200, ("ssb_hard", "ninco"), ("inaturalist", "textures", "openimage_o"),
                    ("imagenet_v2", "imagenet_c", "imagenet_r")),
    "imagenet": (1000, ("ssb_hard", "ninco"), ("inaturalist", "textures", "openimage_o"),
                 ("imagenet_v2", "imagenet_c", "imagenet_r", "imagenet_es")),
}
#: The classifier OpenOOD's eval scripts build for each benchmark (``openood.networks`` class names; the classes
#: come from :data:`BENCHMARKS`). The one table of benchmark networks: :data:`DEFAULT_ARCH` derives from it.
NETWORKS = {"cifar10": "ResNet18_32x32", "cifar100": "ResNet18_32x32", "imagenet200": "ResNet18_224x224",
            "imagenet": "ResNet50"}
#: This package's ``--arch`` name of each OpenOOD network: the same modules and state-dict keys
#: (OpenOOD's ResNet18_224x224 and ResNet50 are torchvision's ResNets with another ``forward``).
_PACKAGE_ARCH = {"ResNet18_32x32": "resnet18_32x32", "ResNet18_224x224": "resnet18", "ResNet50": "resnet50"}
#: The ``--arch`` of each benchmark's network for this package's ``eval``.
DEFAULT_ARCH = {name: _PACKAGE_ARCH[network] for name, network in NETWORKS.items()}

#: The OpenOOD modules :func:`.registry.patch_module` patches as they load, in import order.
PATCHED_MODULES = ("openood.postprocessors.utils", "openood.postprocessors", "openood.evaluation_api.postprocessor",
                   "openood.evaluation_api.evaluator")


class _LibmrMissing(types.ModuleType):
    """Stands in for ``libmr`` (OpenMax's dependency, which has no wheel) so that OpenOOD imports."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"libmr.{name}: libmr is not installed, and OpenOOD's OpenMax postprocessor needs it "
                             "(pip install libmr)")


def install_import_shims() -> None:
    """What OpenOOD's import needs on current stacks, added only where missing: ``np.sctypes`` (read by imgaug
    0.4, removed in NumPy 2) and a ``libmr`` module (OpenMax only)."""
    import numpy as np

    if not hasattr(np, "sctypes"):
        np.sctypes = {"int": [np.int8, np.int16, np.int32, np.int64],
                      "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
                      "float": [np.float16, np.float32, np.float64], "complex": [np.complex64, np.complex128],
                      "others": [bool, object, bytes, str, np.void]}
    if "libmr" not in sys.modules and importlib.util.find_spec("libmr") is None:
        sys.modules["libmr"] = _LibmrMissing("libmr")


def require_openood(module: str = "openood") -> types.ModuleType:
    """Import an OpenOOD module (with :func:`install_import_shims`) or raise an ImportError that says how to
    install OpenOOD."""
    install_import_shims()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != "openood":
            raise MissingPackageError(f"OpenOOD is installed but cannot import {exc.name} ({exc}); install "
                                      f"{exc.name.split('.')[0]}") from exc
        raise MissingPackageError(f"{module} is needed here. {INSTALL_HINT}") from exc


def openood_checkout() -> Optional[Path]:
    """The folder holding OpenOOD's package, ``configs/`` and ``scripts/`` (an editable install from a clone),
    or None when OpenOOD is installed without them."""
    spec = importlib.util.find_spec("openood")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]).resolve().parent
    return root if (root / "configs").is_dir() else None


def _stay(self: Any, *args: Any, **kwargs: Any) -> Any:
    """``.cuda()`` without CUDA: the object itself."""
    return self


_announced = False  # the CPU note is said once per process


@contextlib.contextmanager
def cuda_calls_stay_put(announce: bool = False) -> Iterator[bool]:
    """Inside the block, without CUDA, ``Tensor.cuda()`` and ``Module.cuda()`` return their object unchanged, so
    OpenOOD's unconditional ``.cuda()`` calls run on the CPU. Yields whether the shim is active (with
    ``announce``, it says so on stderr, once per process). Blocks nest."""
    global _announced
    import torch

    if torch.cuda.is_available():
        yield False
        return
    if announce and not _announced:
        _announced = True
        print("note: CUDA is not available: OpenOOD's .cuda() calls leave tensors and models on the CPU for this run",
              file=sys.stderr, flush=True)
    if torch.Tensor.cuda is _stay:  # an outer block holds the shim
        yield True
        return
    tensor_cuda, module_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
    torch.Tensor.cuda = torch.nn.Module.cuda = _stay
    try:
        yield True
    finally:
        torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda


#: The attribute that marks a function as this package's wrapper of OpenOOD's (see :func:`wrap_once`).
WRAPPED = "__openood_diffood__"


def wrap_once(original: Callable, wrapper: Callable) -> Callable:
    """``wrapper`` (which calls ``original``) under ``original``'s name and docstring, marked :data:`WRAPPED`; or
    ``original`` itself when it already is such a wrapper (patching twice changes nothing)."""
    if getattr(original, WRAPPED, False):
        return original
    wrapped = functools.wraps(original)(wrapper)
    setattr(wrapped, WRAPPED, True)
    return wrapped


def on_cpu_without_cuda(method: Callable) -> Callable:
    """``method`` run inside :func:`cuda_calls_stay_put` (announced), for OpenOOD's ``Evaluator``."""
    def run(*args: Any, **kwargs: Any) -> Any:
        with cuda_calls_stay_put(announce=True):
            return method(*args, **kwargs)
    return wrap_once(method, run)


def environment_flag(name: str, default: bool = True) -> bool:
    """An on/off environment variable (``0``, ``false``, ``no``, ``off`` mean off)."""
    return os.environ.get(name, "1" if default else "0").lower() not in ("0", "false", "no", "off")


#: What a pickle of OpenOOD's leaderboard layout (``s*/postprocessors/*.pkl``, ``s*/scores/*.pkl``) may reference:
#: OpenOOD's and this package's classes, NumPy / pandas / scikit-learn / SciPy / faiss data, torch tensors.
PICKLE_MODULES = ("openood.", "openood_diffood.", "numpy", "pandas.", "sklearn.", "scipy.", "faiss", "collections",
                  "copyreg", "_codecs", "torch._utils", "torch.storage", "torch._tensor")
PICKLE_BUILTINS = frozenset({"set", "frozenset", "slice", "range", "complex", "bytearray", "object", "dict", "list",
                             "tuple", "int", "float", "bool", "str", "bytes"})
PICKLE_TORCH = frozenset({"device", "Size", "dtype", "float32", "float16", "bfloat16", "float64", "int64", "int32",
                          "uint8", "bool", "FloatStorage", "LongStorage", "IntStorage", "ByteStorage", "BoolStorage",
                          "DoubleStorage", "HalfStorage", "BFloat16Storage"})


class _LeaderboardUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        allowed = (module.startswith(PICKLE_MODULES) or (module == "builtins" and name in PICKLE_BUILTINS)
                   or (module == "torch" and name in PICKLE_TORCH))
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def safe_pickle_load(path: str) -> Any:
    """Read a pickle OpenOOD's scripts wrote, refusing anything but the data and classes :data:`PICKLE_MODULES`
    names (so a pickle cannot call arbitrary code); a refusal names the object and the way out."""
    with open(path, "rb") as f:
        try:
            return _LeaderboardUnpickler(f).load()
        except pickle.UnpicklingError as exc:
            raise ConfigError(f"{path} references {exc}, which this command does not unpickle (it could run code); "
                              "delete the file and it is computed again") from None
