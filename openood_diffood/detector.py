"""DiffOOD as a pytorch-ood ``Detector``: drops into pytorch-ood pipelines (``OODMetrics``, benchmarks)."""
from __future__ import annotations

import os
from typing import Any, Optional, Union

import torch
from torch import nn
from pytorch_ood.api import Detector, DetectorInfo, Paper, Task

from .errors import ConfigError
from .config import DiffOODSettings
from .models.diffusion import DiffusionBackend
from .runtime.engine import DiffOOD


class DiffOODDetector(Detector):
    """DiffOOD (arXiv 2211.11255) as a pytorch-ood detector, higher = more OOD (see
    :mod:`openood_diffood.method.diffood`). No fitting, except that ``combine: energy`` calibrates on ID data in
    :meth:`fit`; ``predict(x)`` takes images normalized for the classifier. Build it from an engine, or from
    ``(classifier, diffusion)`` plus the engine's keyword arguments."""

    info = DetectorInfo(
        paper=Paper(title="Diffusion Denoising Process for Perceptron Bias in Out-of-distribution Detection",
                    venue="arXiv", year=2022, url="https://arxiv.org/abs/2211.11255"),
        tasks={Task.CLASSIFICATION},
    )
    requires_fit = False

    def __init__(self, classifier_or_engine: Union[DiffOOD, nn.Module],
                 diffusion: Optional[Union[DiffusionBackend, str, os.PathLike]] = None,
                 settings: Optional[DiffOODSettings] = None, **engine_kwargs: Any) -> None:
        if isinstance(classifier_or_engine, DiffOOD):
            if diffusion is not None or settings is not None or engine_kwargs:
                raise ConfigError("pass either a DiffOOD engine alone, or a classifier with a diffusion model")
            self.engine = classifier_or_engine
        else:
            if diffusion is None:
                raise ConfigError("a diffusion model is needed: DiffOODDetector(classifier, '<diffusers dir>')")
            self.engine = DiffOOD(classifier_or_engine, diffusion, settings, **engine_kwargs)

    @property
    def device(self) -> torch.device:
        """Where the engine runs."""
        return self.engine.device

    def to(self, device: Union[str, torch.device]) -> "DiffOODDetector":
        """Run on ``device`` (a new engine there when it differs)."""
        if torch.device(device) != self.engine.device:
            e = self.engine
            self.engine = DiffOOD(e.classifier, e.diffusion, e.settings, e.options.replace(device=str(device)))
        return self

    def fit(self, data_loader: Any = None) -> "DiffOODDetector":
        """Nothing to fit for the paper's score; with ``combine`` or a list of timesteps, calibrate on the loader's
        ID images (batches of ``(x, y)`` or of ``x``; ``combine: knn`` etc. needs ``engine.companion`` set first)."""
        if self.engine.needs_calibration:
            if data_loader is None:
                raise ConfigError("combine and a list of timesteps calibrate on ID validation images: call "
                                  "fit(id_val_loader)")
            self.engine.calibrate(b[0] if isinstance(b, (tuple, list)) else b for b in data_loader)
        return self

    def fit_features(self, x: Any = None, y: Any = None) -> "DiffOODDetector":
        """Nothing to fit (see :meth:`fit`)."""
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Outlier scores of shape (N,) for a batch of normalized images (N, C, H, W)."""
        return self.engine.score(x).score

    def predict_features(self, x: torch.Tensor) -> torch.Tensor:
        """Not possible: DiffOOD noises and denoises the images themselves."""
        raise NotImplementedError(
            "DiffOOD needs the images, not features: it diffuses and reconstructs the input before comparing the "
            "classifier's outputs; call predict(images) instead of predict_features(features)")
