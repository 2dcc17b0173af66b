"""The DiffOOD engine: :func:`~openood_diffood.method.diffood.diffood` run over any number of images, with the
inputs checked, micro-batches, precision, compilation, batch sizes, calibration and the score cache."""
from __future__ import annotations

import copy
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from ..config import ConfigError, DiffOODSettings, RunOptions, split_mapping
from ..method.calibration import Calibration
from ..method.diffood import RoundTrip, classify, diffood, network_samples, reconstruct
from ..method.features import Classifier, as_classifier
from ..method.noise import content_keys
from ..method.scoring import energy_score
from ..models.diffusion import DiffusionBackend
from ..models.loading import load_diffusion
from ..version import __version__
from .cache import FORMAT, ScoreCache, image_digests, module_fingerprint
from .execution import Execution, resolve_precision
from .memory import DeviceMemory, device_memory, suggest_batch_size

#: ``batch_size: auto`` on a CPU: images for this many network samples (repeats x guidance pair) per call and
#: thread (0.3-14.5 M parameter UNets ran fastest at 32-64 samples per thread, 512 up to 1.8x slower).
AUTO_CPU_SAMPLES_PER_THREAD = 32
#: ``batch_size: auto`` on a GPU: the largest power of two of images whose measured memory fits this share of the
#: free memory, at most AUTO_MAX_BATCH (a power of two keeps the size, and so the cache's units, stable).
AUTO_MEMORY_FRACTION = 0.8
AUTO_MAX_BATCH = 1024
#: Inputs in [0, 1] whose un-normalized values span less than this look like images that were never normalized.
UNNORMALIZED_SPAN = 0.75


@dataclass
class DiffOODOutput:
    """Per-image results: ``score`` (higher = more OOD) and the classifier's prediction ``pred`` on the input."""

    score: torch.Tensor
    pred: torch.Tensor


class DiffOOD:
    """Scores images by how much a class-conditional diffusion round trip changes the classifier's view of them.

    Args:
        classifier: an OpenOOD net or any ``nn.Module`` classifier (see :class:`~openood_diffood.method.features.
            Classifier`); it is put in eval mode.
        diffusion: a loaded :class:`~openood_diffood.models.diffusion.DiffusionBackend` (never changed: engines
            may share one) or a diffusers directory / hub id; default ``options.diffusion``.
        settings: :class:`~openood_diffood.DiffOODSettings` (default: the paper's CIFAR settings).
        options: :class:`~openood_diffood.RunOptions` (batch size, device, compile, channels_last, cache_dir).
        **changes: any field of either, e.g. ``DiffOOD(net, "model_dir", timestep=200, batch_size=8)``.

    The classifier and the diffusion model are moved to the engine's device (default: the classifier's).
    """

    def __init__(self, classifier: nn.Module, diffusion: Union[DiffusionBackend, str, os.PathLike, None] = None,
                 settings: Optional[DiffOODSettings] = None, options: Optional[RunOptions] = None,
                 **changes: Any) -> None:
        settings, options = split_mapping(changes, settings, options)
        self.classifier: Classifier = as_classifier(classifier).eval()
        self.device = _device(options.device, self.classifier)
        diffusion = options.diffusion if diffusion is None else diffusion
        if diffusion is None:
            raise ConfigError("no diffusion model: pass a diffusers directory (unet/ + scheduler/, as written by "
                              "`python -m openood_diffood train`) or a loaded backend")
        if not isinstance(diffusion, DiffusionBackend):
            diffusion = load_diffusion(diffusion)
        self.diffusion: DiffusionBackend = diffusion.to(self.device)
        self.classifier.to(self.device)
        #: What ``batch_size: auto`` measures (None: the CPU rule); a test may put a stand-in here.
        self.memory: Optional[DeviceMemory] = device_memory(self.device)
        self._fingerprints: Dict[str, str] = {}
        self.calibration: Optional[Calibration] = None
        #: ``combine: <postprocessor>``: that postprocessor's score (N,) of normalized images on the engine's device
        #: (higher = more OOD), fitted on ID training images (the OpenOOD postprocessor sets it in ``setup``).
        self.companion: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
        self._configure(settings, options)

    # ------------------------------------------------------------------ configuration
    def replace(self, **changes: Any) -> "DiffOOD":
        """A new engine on the same models with some settings or run options changed (checked again); the
        calibration is kept when the settings stay the same."""
        settings, options = split_mapping(changes, self.settings, self.options)
        if options.device is not None and _device(options.device, self.classifier) != self.device:
            raise ConfigError(f"the engine runs on {self.device}; build a new DiffOOD for device {options.device}")
        view = copy.copy(self)
        same = settings.replace(combine_weight=1.0) == self.settings.replace(combine_weight=1.0)
        view.calibration = self.calibration if same else None  # the weight only weighs the z-scores
        view.companion = self.companion if settings.combine == self.settings.combine else None
        view._configure(settings, options)
        return view

    def _configure(self, settings: DiffOODSettings, options: RunOptions) -> None:
        self.settings, self.options = settings, options
        self._check_models()
        self.batch_size: Union[int, str] = options.batch_size
        self._cache: Optional[ScoreCache] = None
        self._execution = Execution(self.diffusion, self.device, settings.precision, options.compile,
                                    options.channels_last)

    def _check_models(self) -> None:
        s, d, t = self.settings, self.diffusion, max(self.settings.timesteps)
        if t >= d.num_train_timesteps:
            raise ConfigError(f"timestep {t} is outside the diffusion model's schedule "
                              f"(0 .. {d.num_train_timesteps - 1}); use a smaller timestep")
        if d.max_timestep is not None and t >= d.max_timestep and not self.options.allow_untrained_timestep:
            raise ConfigError(f"timestep {t} lies outside what the diffusion model learned: it was trained "
                              f"on timesteps below {d.max_timestep} only (its model card records max_timestep "
                              f"{d.max_timestep}); use timesteps < {d.max_timestep}, or allow_untrained_timestep "
                              "(--allow-untrained-timestep) to run anyway")
        if d.max_timestep is None and t and not getattr(d, "range_unknown_said", False):
            d.range_unknown_said = True  # once per loaded model
            warnings.warn(f"the diffusion model does not record the timesteps it was trained on (no max_timestep in "
                          f"its model card): timestep {t} is used as given, and scores mean little if it "
                          "lies beyond them; record it in README.md's metadata (diffood: {max_timestep: N})")
        if not d.conditional:
            if s.guidance != 1.0:
                warnings.warn("the diffusion model is unconditional: guidance has no effect and every image is "
                              "denoised without its predicted class")
            return
        classes = self.classifier.num_classes
        if s.class_map is None and classes > d.num_classes:
            raise ConfigError(f"the classifier has {classes} classes but the diffusion model is conditioned on "
                              f"{d.num_classes}, fewer: it has no class for some ID classes; use a diffusion model "
                              "trained on the ID classes or on a superset of them (ImageNet-1K's for ImageNet-200), "
                              "or give class_map (classifier class i -> diffusion class class_map[i])")
        if s.class_map is not None:
            if len(s.class_map) != classes:
                raise ConfigError(f"class_map has {len(s.class_map)} entries but the classifier has {classes} "
                                  "classes: give one diffusion class id per classifier class")
            if min(s.class_map) < 0 or max(s.class_map) >= d.num_classes:
                raise ConfigError(f"class_map ids must lie in 0 .. {d.num_classes - 1} (the diffusion model's "
                                  "classes)")
        elif classes != d.num_classes:
            raise ConfigError(
                f"the classifier has {classes} classes but the diffusion model is conditioned on {d.num_classes} "
                "(+1 null class): train the diffusion model on the classifier's ID classes (`python -m "
                "openood_diffood train`), pass the matching classifier, or give class_map (classifier class i -> "
                "diffusion class class_map[i])")

    @property
    def precision(self) -> str:
        """The diffusion network's precision, ``auto`` resolved for this device."""
        return resolve_precision(self.settings.precision, self.device)

    def identity(self) -> Dict[str, Any]:
        """Everything besides the image that determines a score (the score cache's key). The models' content
        fingerprints are computed once per engine and shared by its :meth:`replace` views."""
        identity = {"format": FORMAT, "version": __version__, "settings": self.settings.identity(),
                    "precision": self.precision, **self.fingerprints()}
        if self.needs_calibration:
            identity["calibration"] = None if self.calibration is None else self.calibration.as_dict()
        return identity

    def fingerprints(self) -> Dict[str, str]:
        """Content fingerprints of the classifier and the diffusion model (see :meth:`identity`)."""
        if not self._fingerprints:
            self._fingerprints.update(classifier=module_fingerprint(self.classifier.net),
                                      diffusion=module_fingerprint(self.diffusion))
        return dict(self._fingerprints)

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def score(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
              keys: Optional[Sequence[Hashable]] = None) -> DiffOODOutput:
        """Scores of normalized images (N, C, H, W), any N (micro-batched). ``labels`` replace the predictions as
        the conditioning classes; ``keys`` name the images for their noise (default: their content). With
        ``cache_dir`` finished images are looked up and new ones stored (when neither labels nor keys are given)."""
        self._require_calibration()
        if self.options.cache_dir is None or labels is not None or keys is not None:
            return self._score(x, labels, keys)
        x = torch.as_tensor(x)
        cache = self._score_cache()
        digests = image_digests(x)
        missing = [i for i, hit in enumerate(cache.lookup(digests)) if not hit]
        if missing:
            out = self._score(x[missing])
            cache.store([digests[i] for i in missing], out.score, out.pred)
        return DiffOODOutput(*cache.get(digests))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                    keys: Optional[Sequence[Hashable]] = None) -> Tuple[torch.Tensor, DiffOODOutput]:
        """Reconstructions in [0, 1] of shape (N, repeats, C, H, W), with the scores, for inspection."""
        self._require_calibration()
        results = list(self._run(x, labels, keys))
        recs = torch.cat([r.reconstructions.cpu() for r in results])
        return recs, self._output(x, results)

    @torch.no_grad()
    def round_trips(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                    keys: Optional[Sequence[Hashable]] = None) -> RoundTrip:
        """The reconstruct step of every image (micro-batched), on the CPU: what its scores are computed from, in
        any feature space (:func:`~openood_diffood.method.diffood.changes`)."""
        return RoundTrip.concatenate([t.apply(torch.Tensor.cpu) for t in self._run(x, labels, keys, reconstruct)])

    @property
    def needs_calibration(self) -> bool:
        """Whether the score is a sum of z-scores (``combine``, or a list of timesteps) that needs ID statistics."""
        return self.settings.combine is not None or isinstance(self.settings.timestep, tuple)

    @torch.no_grad()
    def calibrate(self, batches: Union[torch.Tensor, Iterable[torch.Tensor]]) -> Calibration:
        """Fit the statistics of ``combine`` and of a list of timesteps on ID validation images (a batch or an
        iterable of batches of normalized images) under the current settings."""
        self._require_companion()
        columns = [self._columns(x, list(self._run(x, None, None)))
                   for x in ([batches] if isinstance(batches, torch.Tensor) else batches)]
        if not columns:
            raise ConfigError("calibrate got no images: pass ID validation images (OpenOOD: the ID 'val' loader)")
        self.calibration = Calibration.fit(*torch.cat(columns).unbind(1))
        self._cache = None  # the cache's key covers the calibration
        return self.calibration

    @torch.no_grad()
    def features(self, x: torch.Tensor,
                 settings: Optional[DiffOODSettings] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, flattened features in the feature space of ``settings``, default the engine's) of a batch."""
        return classify(self.classifier, x.to(self.device), settings or self.settings)

    # ------------------------------------------------------------------ internals
    def _score(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
               keys: Optional[Sequence[Hashable]] = None) -> DiffOODOutput:
        return self._output(x, list(self._run(x, labels, keys)))

    def _columns(self, x: torch.Tensor, results: Sequence[RoundTrip]) -> torch.Tensor:
        """(N, K) on the CPU: the change at each timestep, then the combined score (energy or the companion's)."""
        cols = torch.cat([r.change.reshape(r.change.shape[0], -1) for r in results]).cpu()
        if self.settings.combine == "energy":
            other = torch.cat([energy_score(r.logits) for r in results])
        elif self.settings.combine is not None:
            size, x = self.micro_batch_size(x), torch.as_tensor(x).float()
            other = torch.cat([self.companion(x[i:i + size].to(self.device)).detach().reshape(-1).cpu()
                               for i in range(0, x.shape[0], size)])
        return cols if self.settings.combine is None else torch.cat([cols, other.float().cpu()[:, None]], 1)

    def _output(self, x: torch.Tensor, results: Sequence[RoundTrip]) -> DiffOODOutput:
        pred = torch.cat([r.pred for r in results]).cpu()
        if not self.needs_calibration:
            return DiffOODOutput(torch.cat([r.change for r in results]).cpu(), pred)
        columns = self._columns(x, results)
        weights = [1.0] * columns.shape[1]
        weights[-1] = self.settings.combine_weight if self.settings.combine is not None else 1.0
        return DiffOODOutput(self.calibration.combine(*columns.unbind(1), weights=weights), pred)

    def _require_companion(self) -> None:
        if self.settings.combine not in (None, "energy") and self.companion is None:
            raise ConfigError(
                f"combine={self.settings.combine!r} adds the {self.settings.combine} postprocessor's score, fitted on "
                "ID training images: the OpenOOD postprocessor sets it up in setup(); with the engine, set "
                "engine.companion = openood_diffood.evaluate.baselines.fitted_scorer(name, net, train_batches)")

    def _require_calibration(self) -> None:
        self._require_companion()
        if self.needs_calibration and self.calibration is None:
            what = f"combine={self.settings.combine!r}" if self.settings.combine else \
                f"timestep={list(self.settings.timestep)}"
            raise ConfigError(
                f"{what} needs ID validation statistics for the current settings: call "
                "engine.calibrate(id_val_images) first (the OpenOOD postprocessor does it with its ID val loader), "
                "or set combine=None and one timestep for the paper's score")

    def _score_cache(self) -> ScoreCache:
        if self._cache is None:
            self._cache = ScoreCache(self.options.cache_dir, self.identity())
        return self._cache

    def _run(self, x: torch.Tensor, labels: Optional[torch.Tensor], keys: Optional[Sequence[Hashable]],
             step: Callable[..., RoundTrip] = diffood) -> Iterator[RoundTrip]:
        """Check the inputs, then ``step`` (:func:`diffood` or its reconstruct step) on each micro-batch, trimmed
        of compile padding."""
        x = torch.as_tensor(x).float()
        self.check_input(x)
        n = x.shape[0]
        if labels is not None:
            labels = torch.as_tensor(labels).long().flatten()
            if labels.shape[0] != n:
                raise ConfigError(f"{labels.shape[0]} labels for {n} images")
            if labels.min() < 0 or labels.max() >= self.classifier.num_classes:
                raise ConfigError(f"labels must lie in 0 .. {self.classifier.num_classes - 1} (the classifier's "
                                  f"classes), got {labels.min().item()} .. {labels.max().item()}")
        if keys is None:
            keys = content_keys(self.settings.normalization.unnormalize(x))
        elif len(keys) != n:
            raise ConfigError(f"{len(keys)} keys for {n} images")
        size = self.micro_batch_size(x)
        for i in range(0, n, size):
            j = min(i + size, n)
            xb, yb, kb = x[i:j], None if labels is None else labels[i:j], list(keys[i:j])
            if self.options.compile and j - i < size:  # static shapes: pad with copies of the last image
                pad = size - (j - i)
                xb = torch.cat([xb, xb[-1:].expand(pad, *xb.shape[1:])])
                yb = None if yb is None else torch.cat([yb, yb[-1:].expand(pad)])
                kb = kb + kb[-1:] * pad
            out = step(self.classifier, self._execution, xb.to(self.device, non_blocking=True), kb, self.settings,
                       None if yb is None else yb.to(self.device))
            yield out.apply(lambda v: v[:j - i])

    def check_input(self, x: torch.Tensor) -> None:
        """A ValueError naming the problem and the fix when the engine cannot score these normalized images."""
        if x.ndim != 4:
            raise ConfigError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ConfigError("empty batch: there are no images to score")
        norm, d = self.settings.normalization, self.diffusion
        if x.shape[1] != norm.channels or x.shape[1] != d.channels:
            raise ConfigError(f"the images have {x.shape[1]} channels, the normalization (mean/std) {norm.channels} "
                              f"and the diffusion model {d.channels}: give images with the channels the models were "
                              "trained on (grey -> RGB: repeat the channel) and mean/std with one value per channel")
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x.flatten(1))).any(1).nonzero().flatten().tolist()
            raise ConfigError(f"input contains NaN or inf values (images {bad[:10]}); clean the data first")
        size = d.sample_size
        if tuple(x.shape[-2:]) != (size, size) and not self.settings.resize:
            raise ConfigError(f"images are {x.shape[-2]}x{x.shape[-1]} but the diffusion model works at {size}x{size}:"
                              f" resize the inputs to {size}x{size} or set resize (--resize; bilinear into the "
                              "model's size and back)")
        x01 = norm.unnormalize(x)
        lo, hi = float(x01.min()), float(x01.max())
        if lo < -0.5 or hi > 1.5:
            raise ConfigError(
                f"after undoing the normalization (mean={norm.mean}, std={norm.std}) the images span "
                f"[{lo:.2f}, {hi:.2f}], far outside [0, 1]: pass images normalized with the ID dataset's mean/std "
                "(as OpenOOD does), or set dataset / mean / std to match your preprocessing")
        if x.min() >= 0 and x.max() <= 1 and hi - lo < UNNORMALIZED_SPAN:
            warnings.warn(f"the inputs look like images in [0, 1] that were never normalized: after undoing the "
                          f"normalization they span only [{lo:.2f}, {hi:.2f}]; pass (x - mean) / std with the ID "
                          "dataset's statistics, as OpenOOD does")

    def micro_batch_size(self, x: torch.Tensor) -> int:
        """The micro-batch size, resolving ``batch_size: auto`` on the first call (``x``: a batch of inputs)."""
        if self.batch_size == "auto":
            self.batch_size = self._auto_batch_size(x)
        return int(self.batch_size)

    def _auto_batch_size(self, x: torch.Tensor) -> int:
        if self.memory is None:
            return max(1, AUTO_CPU_SAMPLES_PER_THREAD * torch.get_num_threads()
                       // network_samples(self.settings, self.diffusion))
        probe = self.replace(batch_size=1, compile=False, cache_dir=None, timestep=self.settings.stride,
                             combine=None)
        shape = (1, x.shape[1], x.shape[-2], x.shape[-1])

        def run(n: int) -> None:
            probe.replace(batch_size=n)._score(probe.settings.normalization.normalize(torch.rand(n, *shape[1:])))

        fit = suggest_batch_size(run, self.memory, AUTO_MEMORY_FRACTION)
        return min(AUTO_MAX_BATCH, 2 ** int(math.log2(fit)))


def _device(name: Optional[str], classifier: nn.Module) -> torch.device:
    if name is None:
        return next(iter(classifier.parameters()), torch.empty(0)).device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for, but CUDA is not available here; use device cpu (or leave "
                          "it out)")
    return device
