"""Training checkpoints that resume exactly: one folder per step with the full state, written atomically.

``<checkpoint dir>/step_000123/state.pt`` holds the model, EMA, optimizer and LR scheduler states, the step and the
run's settings; ``rng_<rank>.pt`` the RNG states (torch, CUDA, numpy, python) of each process. Everything is
tensors and plain Python data, written with ``torch.save`` and read back with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
import re
import shutil
from typing import Any, Dict, List, Optional

import numpy as np
import torch

_STEP_DIR = re.compile(r"^step_(\d+)$")
STATE_FILE = "state.pt"


def step_dir(checkpoint_dir: str, step: int) -> str:
    """The folder of the checkpoint taken after ``step`` optimizer steps."""
    return os.path.join(checkpoint_dir, f"step_{step:06d}")


def list_checkpoints(checkpoint_dir: str) -> List[str]:
    """Complete checkpoint folders, oldest first."""
    if not os.path.isdir(checkpoint_dir):
        return []
    found = [(int(m.group(1)), e.path) for e in os.scandir(checkpoint_dir)
             if (m := _STEP_DIR.match(e.name)) and os.path.isfile(os.path.join(e.path, STATE_FILE))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(checkpoint_dir: str) -> Optional[str]:
    """The newest complete checkpoint folder, or None."""
    found = list_checkpoints(checkpoint_dir)
    return found[-1] if found else None


def rng_state() -> Dict[str, Any]:
    """This process's global RNG states as tensors and plain data."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def pending_dir(folder: str) -> str:
    """The temporary folder a checkpoint is written into before :func:`commit` renames it into place."""
    return folder + ".tmp"


def save_rng(folder: str, rank: int) -> None:
    """Write this process's RNG states into a (pending) checkpoint folder."""
    torch.save(rng_state(), os.path.join(folder, f"rng_{rank}.pt"))


def save_state(folder: str, state: Dict[str, Any]) -> None:
    """Write the shared training state into a (pending) checkpoint folder."""
    torch.save(state, os.path.join(folder, STATE_FILE))


def commit(folder: str) -> None:
    """Rename the pending folder into place, replacing an older checkpoint of the same step."""
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(pending_dir(folder), folder)


def load_state(folder: str, rank: int) -> Dict[str, Any]:
    """The shared state of a checkpoint, with this process's RNG states under ``rng`` (None if absent)."""
    path = os.path.join(folder, STATE_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder!r} is not a complete training checkpoint (no {STATE_FILE})")
    state = torch.load(path, map_location="cpu", weights_only=True)
    rng_path = os.path.join(folder, f"rng_{rank}.pt")
    state["rng"] = torch.load(rng_path, weights_only=True) if os.path.isfile(rng_path) else None
    return state


def prune(checkpoint_dir: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for path in list_checkpoints(checkpoint_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
