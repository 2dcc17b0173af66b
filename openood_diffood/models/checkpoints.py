"""Load checkpoints (classifiers, and the sources of ``convert``) without running their code: safetensors or
``torch.load(weights_only=True)``, with the non-tensor objects of a Lightning ``.ckpt`` named in
:data:`LIGHTNING_GLOBALS` loaded as inert stand-ins; any other object is an error naming it."""
from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any, Dict, List, Union

import torch

from ..errors import ConfigError, MissingFileError

#: Keys under which common training scripts nest the state dict.
NESTED_KEYS = ("state_dict", "model", "net")

#: Globals a Lightning checkpoint pickles besides tensors that carry nothing the conversion needs: the callback
#: classes used as keys of ``callbacks`` and the numpy scalars of their scores.
LIGHTNING_GLOBALS = (
    "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
    "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
    "pytorch_lightning.callbacks.early_stopping.EarlyStopping",
    "pytorch_lightning.callbacks.lr_monitor.LearningRateMonitor",
    "numpy.core.multiarray.scalar",
    "numpy._core.multiarray.scalar",
    "numpy.dtype",
    "numpy.dtypes.Float64DType",
    "numpy.dtypes.Float32DType",
    "numpy.dtypes.Int64DType",
)

#: The first byte of torch.save's legacy (pre-zip) format: pickle protocol 2.
PICKLE_PROTOCOL_2 = b"\x80"
TORCH_FILE = "pass the .ckpt / .pt / .pth file of the model (or a .safetensors file)"


class Dropped:
    """The stand-in of a :data:`LIGHTNING_GLOBALS` object: accepts any construction or state, keeps nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def starts_with(path: str, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix


def unsafe_globals(path: str) -> List[str]:
    """The globals of a zip checkpoint that ``weights_only`` loading would refuse (read without unpickling)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except ValueError:  # a legacy (pre-zip) or TorchScript file: weights_only loading itself decides
        return []


def load_checkpoint(path: Union[str, os.PathLike]) -> Any:
    """The object saved in ``path`` (a ``.safetensors`` file or a torch checkpoint), loaded without running code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint {path!r} does not exist; check the path")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    if not zipfile.is_zipfile(path) and not starts_with(path, PICKLE_PROTOCOL_2):
        raise ConfigError(f"{path!r} is not a torch checkpoint (neither torch.save's zip format nor its legacy "
                          f"pickle); {TORCH_FILE}")
    unknown = [name for name in unsafe_globals(path) if name not in LIGHTNING_GLOBALS]
    if unknown:
        raise ConfigError(f"checkpoint {path!r} holds pickled Python objects besides tensors, so it was not loaded: "
                          f"{', '.join(unknown)}, not known to be harmless (loading could run code); save its state "
                          "dict alone (torch.save({'state_dict': ckpt['state_dict']}, path)) where you trust the file")
    stand_ins = [(Dropped, name) for name in LIGHTNING_GLOBALS]
    try:
        with torch.serialization.safe_globals(stand_ins):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(f"checkpoint {path!r} holds objects that weights_only loading refuses ({exc}); save its "
                          "state dict alone with torch.save(state_dict, path)") from None
    except (RuntimeError, EOFError) as exc:
        raise ConfigError(f"{path!r} is not a torch checkpoint ({exc}); {TORCH_FILE}") from None


def state_dict_of(loaded: Any, path: str) -> Dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint: the object itself or its ``state_dict`` (Lightning) / ``model`` / ``net``
    entry, without DataParallel's ``module.`` prefix."""
    state = loaded
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"checkpoint {path!r} holds no state dict (a dict of tensors, or one under "
                          f"{' / '.join(NESTED_KEYS)}); save model.state_dict()")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != len(state):
        other = next(k for k, v in state.items() if not isinstance(v, torch.Tensor))
        raise ConfigError(f"the state dict of {path!r} holds a non-tensor entry {other!r}; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in tensors.items()}


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """:func:`state_dict_of` :func:`load_checkpoint`."""
    return state_dict_of(load_checkpoint(path), os.fspath(path))
