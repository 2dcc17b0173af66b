"""Load classifier checkpoints safely: safetensors or ``torch.load(weights_only=True)``; loading never runs code."""
from __future__ import annotations

import os
import pickle
from typing import Dict, Union

import torch

from ..errors import ConfigError, MissingFileError

#: Keys under which common training scripts nest the state dict.
NESTED_KEYS = ("state_dict", "model", "net")


def load_state_dict_file(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """A state dict from a ``.safetensors`` file or a torch checkpoint of plain tensors, unwrapping a
    ``state_dict`` / ``model`` / ``net`` entry and DataParallel's ``module.`` prefix."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"checkpoint {path!r} does not exist; check the path")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise ConfigError(
                f"checkpoint {path!r} holds pickled Python objects besides tensors, so it was not loaded (loading "
                "it could run code); save the weights alone with torch.save(model.state_dict(), path) or "
                "safetensors and pass that file") from None
        except (RuntimeError, EOFError) as exc:
            raise ConfigError(f"checkpoint {path!r} is not a torch checkpoint ({exc}); pass a .pt/.pth/.ckpt state "
                              "dict or a .safetensors file") from None
    for key in NESTED_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"checkpoint {path!r} does not hold a state dict of tensors; save model.state_dict()")
    return {k.removeprefix("module."): v for k, v in state.items()}
