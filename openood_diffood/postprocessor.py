"""DiffOOD as an OpenOOD v1.5 postprocessor (``name: diffood`` in ``configs/postprocessors/diffood.yml``)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ._openood import require_openood

BasePostprocessor = require_openood("openood.postprocessors.base_postprocessor").BasePostprocessor

from .cache import ScoreCache, engine_identity  # noqa: E402
from .distributed import init_from_env, local_device, rank_and_world, score_loader  # noqa: E402
from .engine import DiffOOD  # noqa: E402
from .settings import DATASET_STATS, DiffOODSettings  # noqa: E402

#: Environment variable that overrides ``postprocessor_args.diffusion`` (handy with OpenOOD's unmodified scripts).
DIFFUSION_ENV = "DIFFOOD_DIFFUSION"
#: Environment variable that overrides ``postprocessor_args.cache_dir`` (the score cache; see :mod:`.cache`).
CACHE_ENV = "DIFFOOD_CACHE_DIR"
#: Sweep keys in ``postprocessor_sweep`` and the setting each one drives.
SWEEP_KEYS = {"timestep_list": "timestep", "guidance_list": "guidance", "repeats_list": "repeats"}


def _plain(value: Any) -> Any:
    """OpenOOD's Config -> plain dicts / lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _get(config: Any, key: str, default: Any = None) -> Any:
    try:
        return config[key]
    except (KeyError, TypeError, AttributeError):
        return default


class DiffOODPostprocessor(BasePostprocessor):
    """OpenOOD postprocessor: ``conf = -DiffOOD score`` (higher = more in-distribution).

    ``setup`` loads the diffusion model named by ``postprocessor_args.diffusion`` (once) and puts the net in eval
    mode; ``postprocess(net, data)`` returns ``(pred, conf)``; ``inference`` runs on the net's device (CPU or GPU)
    with a progress bar. APS sweeps ``timestep_list``, ``guidance_list`` and ``repeats_list``.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        pp = config.postprocessor
        self.args: Dict[str, Any] = _plain(dict(pp.postprocessor_args))
        self.args_dict: Dict[str, List[Any]] = _plain(dict(_get(pp, "postprocessor_sweep", {}) or {}))
        unknown = set(self.args_dict) - set(SWEEP_KEYS)
        if unknown:
            raise ValueError(f"unknown postprocessor_sweep keys {sorted(unknown)}; use {sorted(SWEEP_KEYS)}")
        dataset = _get(_get(config, "dataset", {}), "name")
        if "dataset" not in self.args and "mean" not in self.args and dataset in DATASET_STATS:
            self.args["dataset"] = dataset
        self.settings = DiffOODSettings.from_mapping(self.args)
        self.diffusion_path: Optional[str] = os.environ.get(DIFFUSION_ENV) or self.args.get("diffusion")
        batch_size = self.args.get("batch_size") or 64
        self.batch_size = batch_size if batch_size == "auto" else int(batch_size)
        self.compile = self.args.get("compile") or False
        self.channels_last = bool(self.args.get("channels_last"))
        self.cache_dir: Optional[str] = os.environ.get(CACHE_ENV) or self.args.get("cache_dir")
        self.APS_mode = bool(_get(pp, "APS_mode", False))
        self.hyperparam_search_done = False
        self.engine: Optional[DiffOOD] = None
        self.id_val_loader: Any = None

    def setup(self, net: nn.Module, id_loader_dict: Any = None, ood_loader_dict: Any = None) -> None:
        """Load the diffusion model once and bind the classifier (test loaders are never touched; with
        ``combine: energy`` the ID val loader calibrates the combination)."""
        net.eval()
        if _get(id_loader_dict, "val") is not None:
            self.id_val_loader = id_loader_dict["val"]
        if self.engine is not None and self.engine.classifier.net is net:
            return
        if not self.diffusion_path:
            raise ValueError(
                "no diffusion model: set postprocessor.postprocessor_args.diffusion in diffood.yml to a diffusers "
                f"directory (unet/ + scheduler/) or hub id, or export {DIFFUSION_ENV}=<dir>")
        init_from_env()  # under torchrun: join the process group, one GPU per rank
        device = local_device() or next(net.parameters()).device
        diffusion = self.engine.diffusion if self.engine is not None else self.diffusion_path
        self.engine = DiffOOD(net, diffusion, self.settings, batch_size=self.batch_size, device=device,
                              compile=self.compile, channels_last=self.channels_last)

    def _engine_for(self, net: nn.Module) -> DiffOOD:
        if self.engine is None or self.engine.classifier.net is not net:
            self.setup(net)
        self.engine.settings = self.settings
        if self.settings.combine is not None and not self.engine.calibrated:
            self._calibrate()
        return self.engine

    def _calibrate(self) -> None:
        """Fit ``combine``'s ID statistics on the ID val loader under the current settings."""
        if self.id_val_loader is None:
            raise ValueError(f"combine: {self.settings.combine} needs ID validation images: call setup(net, "
                             "id_loader_dict) with a 'val' loader (OpenOOD's Evaluator does), or set combine: null")
        batches = (batch["data"] for batch in tqdm(self.id_val_loader, desc="diffood: calibrating on ID val",
                                                     disable=rank_and_world()[0] != 0, leave=False))
        self.engine.calibrate(batches)

    @torch.no_grad()
    def postprocess(self, net: nn.Module, data: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self._engine_for(net).score(data)
        return out.pred, -out.score

    def inference(self, net: nn.Module, data_loader: Any, progress: bool = True) -> Tuple[np.ndarray, ...]:
        """(pred, conf, label) as numpy arrays over a loader of OpenOOD batches.

        Under torchrun the images are split over the ranks and every rank returns the arrays of the whole set
        (see :mod:`.distributed`); with ``cache_dir`` finished batches are kept and never scored again.
        """
        engine = self._engine_for(net)
        cache = ScoreCache(self.cache_dir, engine_identity(engine)) if self.cache_dir else None
        score, pred, label = score_loader(engine, data_loader, cache=cache, progress=progress)
        return pred.astype(int), -score, label.astype(int)

    def set_hyperparam(self, hyperparam: List[Any]) -> None:
        """Set the swept settings, in the order of ``postprocessor_sweep``'s keys (OpenOOD's APS contract)."""
        changes = {SWEEP_KEYS[k]: v for k, v in zip(self.args_dict, hyperparam)}
        self.settings = self.settings.replace(**changes)
        if self.engine is not None:
            self.engine._check_compatible(self.settings)

    def get_hyperparam(self) -> List[Any]:
        return [getattr(self.settings, SWEEP_KEYS[k]) for k in self.args_dict]
