"""Make the real OpenOOD importable and runnable on a CPU-only test machine (only in tests).

OpenOOD 1.5 calls ``.cuda()`` in many places, imports ``libmr`` (OpenMax only; it does not build here) and its
dependency imgaug reads ``np.sctypes``, which NumPy 2 removed. ``install()`` papers over exactly these three.
"""
import sys
import types

import numpy as np
import torch


def install() -> None:
    if not hasattr(np, "sctypes"):
        np.sctypes = {
            "int": [np.int8, np.int16, np.int32, np.int64],
            "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
            "float": [np.float16, np.float32, np.float64],
            "complex": [np.complex64, np.complex128],
            "others": [bool, object, bytes, str, np.void],
        }
    sys.modules.setdefault("libmr", types.ModuleType("libmr"))
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
