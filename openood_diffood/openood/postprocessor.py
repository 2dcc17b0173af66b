"""DiffOOD as an OpenOOD v1.5 postprocessor (``name: diffood`` in ``configs/postprocessors/diffood.yml``)."""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..config import ENVIRONMENT, ConfigError, DiffOODSettings, check_keys, plain, split_mapping
from ..evaluate.baselines import fitted_scorer
from ..method.calibration import Calibration
from ..method.features import as_classifier
from ..method.normalization import DATASET_STATS
from ..models.diffusion import DiffusionBackend
from ..models.loading import load_diffusion
from ..runtime.distributed import init_from_env, local_device, rank_and_world, score_loader
from ..runtime.engine import DiffOOD
from ..version import __version__
from .compat import require_openood
from .imagenet import class_map_from_loaders

BasePostprocessor = require_openood("openood.postprocessors.base_postprocessor").BasePostprocessor

#: Sweep keys in ``postprocessor_sweep`` and the setting each one drives.
SWEEP_KEYS = {"timestep_list": "timestep", "guidance_list": "guidance", "repeats_list": "repeats",
              "combine_weight_list": "combine_weight"}
#: What pickling keeps (``scripts/eval_ood.py`` pickles the postprocessor after APS): the config, the settings,
#: the sweep, APS's state and the calibration; never the models or a data loader.
PICKLED = ("config", "settings", "options", "args_dict", "APS_mode", "hyperparam_search_done", "_calibrated")


def _resolved(diffusion: Any) -> Any:
    """A diffusion model's name as loaded and recorded: a local directory made absolute, a hub id (or a loaded
    backend) as it is."""
    if not isinstance(diffusion, (str, os.PathLike)):
        return diffusion
    named = os.path.expanduser(os.fspath(diffusion))
    return os.path.abspath(named) if os.path.isdir(named) else named


class DiffOODPostprocessor(BasePostprocessor):
    """OpenOOD postprocessor: ``conf = -DiffOOD score`` (higher = more in-distribution).

    ``setup`` puts the net in eval mode and loads the diffusion model named by ``postprocessor_args.diffusion``
    (or ``DIFFOOD_DIFFUSION``); ``postprocess(net, data)`` returns ``(pred, conf)``; ``inference`` runs on the net's
    device with a progress bar. APS sweeps ``timestep_list`` (an entry may be a list of timesteps), ``guidance_list``,
    ``repeats_list`` and ``combine_weight_list``. With ``combine: <postprocessor>`` (knn, vim, ...) ``setup`` builds
    that postprocessor from OpenOOD's own config and fits it on the ID train loader only; a list of timesteps or
    ``combine`` calibrates on the ID val loader. Results are named :attr:`result_name` (``diffood+knn``). A pickled
    postprocessor holds its settings only (well under 1 MB); ``setup`` of a reloaded one loads the models again.
    """

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        pp = config.postprocessor
        args = plain(dict(pp.postprocessor_args or {}))
        dataset = _dataset_name(config)
        base = DiffOODSettings()
        if "dataset" not in args and "mean" not in args and dataset in DATASET_STATS:
            base = base.replace(dataset=dataset)
        self.settings, options = split_mapping(args, base)
        self.options = options.with_environment()
        self.args_dict: Dict[str, List[Any]] = plain(dict(pp.postprocessor_sweep or {}))
        check_keys(self.args_dict, SWEEP_KEYS, where="postprocessor_sweep")
        self.APS_mode = bool(pp.APS_mode)
        self.hyperparam_search_done = False
        self.engine: Optional[DiffOOD] = None
        self.id_val_loader: Any = None
        self.companion: Any = None
        self._calibrated: Optional[Tuple[DiffOODSettings, Calibration]] = None

    def __getstate__(self) -> Dict[str, Any]:
        return {k: self.__dict__[k] for k in PICKLED}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state, engine=None, id_val_loader=None, companion=None)

    def setup(self, net: nn.Module, id_loader_dict: Any = None, ood_loader_dict: Any = None) -> None:
        """Bind the classifier and load the diffusion model once (test loaders are never touched; with ``combine``
        or a list of timesteps the ID val loader calibrates the sum; ``combine: <postprocessor>`` fits that
        postprocessor on the ID train loader)."""
        net.eval()
        if isinstance(id_loader_dict, dict) and id_loader_dict.get("val") is not None:
            self.id_val_loader = id_loader_dict["val"]
        if self.engine is None or self.engine.classifier.net is not net:
            self._bind(net, id_loader_dict)
        self._set_up_companion(net, id_loader_dict)  # after every check: its fit passes over the ID train set

    def _bind(self, net: nn.Module, id_loader_dict: Any) -> None:
        """Load the diffusion model and build the engine for ``net``; bad input fails here, before any long work."""
        self.options = self.options.with_environment()  # a reloaded pickle meets today's environment
        if self.options.diffusion is None:
            raise ConfigError(
                "no diffusion model: set postprocessor.postprocessor_args.diffusion in diffood.yml to a diffusers "
                "directory (unet/ + scheduler/) or hub id, or export DIFFOOD_DIFFUSION=<dir>")
        init_from_env()  # under torchrun: join the process group, one GPU per rank
        device = local_device() or next(net.parameters()).device
        diffusion = self.engine.diffusion if self.engine is not None else _resolved(self.options.diffusion)
        if not isinstance(diffusion, DiffusionBackend):
            diffusion = load_diffusion(diffusion)
        self.settings = self._with_class_map(net, diffusion, id_loader_dict)
        self.engine = DiffOOD(net, diffusion, self.settings, self.options.replace(device=str(device)))
        sample = _first_image(id_loader_dict)
        if sample is not None:  # e.g. a 32 px model on 224 px crops without resize: said before any scoring
            self.engine.check_input(sample)
        if isinstance(self.config.postprocessor, dict):  # main.py mode saves the config with the results
            self.config.postprocessor["provenance"] = self.provenance()

    def _with_class_map(self, net: nn.Module, diffusion: DiffusionBackend, id_loaders: Any) -> DiffOODSettings:
        """The settings with ``class_map`` derived from OpenOOD's ID image lists when the classifier's classes are
        ImageNet-1K classes but not all of the diffusion model's (ImageNet-200 on DiT); a configured map wins."""
        classes = as_classifier(net).num_classes
        if self.settings.class_map is not None or not diffusion.conditional or classes >= diffusion.num_classes:
            return self.settings  # nothing to map (or too few diffusion classes: the engine says so)
        found = class_map_from_loaders(id_loaders, classes, diffusion.num_classes, _dataset_name(self.config))
        if found is None:
            return self.settings  # the engine says what is missing
        class_map, source = found
        if rank_and_world()[0] == 0:
            print(f"diffood: class_map: {classes} ID classes mapped to the diffusion model's {diffusion.num_classes} "
                  f"classes ({source})", flush=True)
        return self.settings.replace(class_map=class_map)

    @property
    def result_name(self) -> str:
        """The name results go under: ``diffood+<combine>`` with ``combine`` (never plain ``diffood``), else the
        config's name."""
        name = self.config.postprocessor.name
        return f"diffood+{self.settings.combine}" if self.settings.combine else name

    def _set_up_companion(self, net: nn.Module, id_loader_dict: Any) -> None:
        """``combine: <postprocessor>``: that postprocessor as OpenOOD builds it from its own config (APS off),
        fitted on the ID train loader only (once per net)."""
        name = self.settings.combine
        if name in (None, "energy") or (self.companion is not None and self.companion[0] == (name, id(net))):
            return
        train = id_loader_dict.get("train") if isinstance(id_loader_dict, dict) else None
        if train is None:
            raise ConfigError(f"combine: {name} fits the {name} postprocessor on ID training images: call "
                              "setup(net, id_loader_dict) with a 'train' loader (OpenOOD's Evaluator does)")
        scorer = fitted_scorer(name, net, ((b["data"], b["label"]) for b in train),
                               _dataset_name(self.config) or self.settings.dataset)
        self.companion = ((name, id(net)), scorer)

    def provenance(self) -> Dict[str, Any]:
        """What scored, for the results: the diffusion model as resolved (an absolute directory or a hub id), where it
        was named, its content fingerprint (the score cache's), the package version and the settings (after APS)."""
        if self.engine is None:
            raise ConfigError("no model is loaded yet: call setup(net) first (OpenOOD's Evaluator does)")
        variable = ENVIRONMENT["diffusion"]
        return {"diffusion": _resolved(self.options.diffusion),
                "diffusion_from": variable if os.environ.get(variable) else "postprocessor_args.diffusion",
                "diffusion_fingerprint": self.engine.identity()["diffusion"], "version": __version__,
                "settings": self.settings.as_dict()}

    def _engine_for(self, net: nn.Module) -> DiffOOD:
        """The engine for ``net`` under the current settings, calibrated when ``combine`` needs it."""
        if self.engine is None or self.engine.classifier.net is not net:
            self.setup(net)
        if self.engine.settings != self.settings:
            self.engine = self.engine.replace(**self.settings.as_dict())
        if self.settings.combine not in (None, "energy"):
            if self.companion is None:
                raise ConfigError(f"combine: {self.settings.combine} is fitted in setup(net, id_loader_dict): call "
                                  "setup first (OpenOOD's Evaluator does)")
            self.engine.companion = self.companion[1]
        if self.engine.needs_calibration and self.engine.calibration is None:
            if self._calibrated is not None and self._calibrated[0] == self.settings:
                self.engine.calibration = self._calibrated[1]
            else:
                self._calibrated = (self.settings, self.engine.calibrate(self._val_batches()))
        return self.engine

    def _val_batches(self):
        if self.id_val_loader is None:
            raise ConfigError("combine and a list of timesteps need ID validation images: call setup(net, "
                              "id_loader_dict) with a 'val' loader (OpenOOD's Evaluator does), or set combine: null "
                              "and one timestep")
        return (batch["data"] for batch in tqdm(self.id_val_loader, desc="diffood: calibrating on ID val",
                                                disable=rank_and_world()[0] != 0, leave=False))

    @torch.no_grad()
    def postprocess(self, net: nn.Module, data: Any) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self._engine_for(net).score(data)
        return out.pred, -out.score

    def inference(self, net: nn.Module, data_loader: Any, progress: bool = True) -> Tuple[np.ndarray, ...]:
        """(pred, conf, label) as numpy arrays over a loader of OpenOOD batches (under torchrun every rank scores
        its share and returns the whole set; with ``cache_dir`` finished batches are never scored again)."""
        score, pred, label = score_loader(self._engine_for(net), data_loader, progress=progress)
        return pred.astype(int), -score, label.astype(int)

    def set_hyperparam(self, hyperparam: List[Any]) -> None:
        """Set the swept settings, in the order of ``postprocessor_sweep``'s keys (OpenOOD's APS contract); the
        engine follows them on its next use."""
        self.settings = self.settings.replace(**{SWEEP_KEYS[k]: v for k, v in zip(self.args_dict, hyperparam)})

    def get_hyperparam(self) -> List[Any]:
        return [getattr(self.settings, SWEEP_KEYS[k]) for k in self.args_dict]


def _dataset_name(config: Any) -> Optional[str]:
    """The ID benchmark's name in an OpenOOD config (``dataset.name``), or None."""
    return config.dataset.get("name") if isinstance(config.dataset, dict) else None


def _first_image(id_loaders: Any) -> Optional[torch.Tensor]:
    """The first image of the ID val (or test) loader's dataset as a batch of one, or None."""
    for split in ("val", "test"):
        loader = id_loaders.get(split) if isinstance(id_loaders, dict) else None
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and len(dataset):
            item = dataset[0]
            data = item.get("data") if isinstance(item, dict) else None
            if isinstance(data, torch.Tensor) and data.ndim == 3:
                return data[None]
    return None
