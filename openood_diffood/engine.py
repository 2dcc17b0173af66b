"""The DiffOOD engine: classify, noise, denoise conditioned on the prediction, re-classify, score the change."""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable, Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .calibration import Calibration, energy_score
from .classifier import Classifier, as_classifier
from .diffusion import DiffusionBackend, load_diffusion
from .noise import content_keys, sample_noise
from .scoring import feature_change
from .settings import DiffOODSettings
from .solvers import add_noise, cpu_schedule, denoise, get_solver

#: ``batch_size="auto"`` on a CPU: images for this many network samples (repeats x guidance pair) per call and
#: thread. CPU throughput per sample falls with larger calls once activations leave the caches (measured on
#: 0.3-14.5 M parameter UNets: 32-64 samples per thread were fastest, 512 up to 1.8x slower).
AUTO_CPU_SAMPLES_PER_THREAD = 32
#: ``batch_size="auto"`` on a GPU: the largest power of two of images whose measured memory fits this share of
#: the free memory, at most AUTO_MAX_BATCH (a power of two keeps the size, and so the score cache's units, stable).
AUTO_MEMORY_FRACTION = 0.8
AUTO_MAX_BATCH = 1024


@dataclass
class DiffOODOutput:
    """Per-image results: ``score`` (higher = more OOD) and the classifier's prediction ``pred`` on the input."""

    score: torch.Tensor
    pred: torch.Tensor


class DiffOOD:
    """Scores images by how much a class-conditional diffusion round trip changes the classifier's view of them.

    Args:
        classifier: an OpenOOD net or any ``nn.Module`` classifier (see :class:`~openood_diffood.Classifier`).
        diffusion: a :class:`DiffusionBackend` or a diffusers directory / hub id (``unet/`` + ``scheduler/``).
        settings: a :class:`DiffOODSettings`; keyword arguments override its fields
            (``DiffOOD(net, "model_dir", timestep=200)``).
        batch_size: images per network micro-batch; each expands to ``repeats x 2`` network samples.
            ``"auto"``: sized to the free GPU memory on the first call (on a CPU: AUTO_CPU_SAMPLES_PER_THREAD).
        device: where to run (default: the classifier's device).
        compile: ``torch.compile`` the denoiser network (True: inductor; or a torch.compile backend name or
            callable). Shapes are kept static: the last micro-batch is padded to ``batch_size`` (by repeating its
            last image; the padding's results are dropped), so the network compiles once.
        channels_last: store the denoiser's weights channels-last (faster convolutions on some hardware; see
            ``benchmarks/speed.py``).
    """

    def __init__(self, classifier: nn.Module, diffusion: Union[DiffusionBackend, str, os.PathLike],
                 settings: Optional[DiffOODSettings] = None, *, batch_size: Union[int, str] = 64,
                 device: Optional[Union[str, torch.device]] = None, compile: Union[bool, str, Callable] = False,
                 channels_last: bool = False, **overrides: Any) -> None:
        settings = settings or DiffOODSettings()
        self.settings = settings.replace(**overrides) if overrides else settings
        self.classifier: Classifier = as_classifier(classifier).eval()
        self.diffusion = diffusion if isinstance(diffusion, DiffusionBackend) else load_diffusion(diffusion)
        self.diffusion.eval()
        if device is None:
            device = next(iter(self.classifier.parameters()), torch.empty(0)).device
        self.device = torch.device(device)
        self.classifier.to(self.device)
        self.diffusion.to(self.device)
        if batch_size != "auto" and (isinstance(batch_size, str) or int(batch_size) < 1):
            raise ValueError(f"batch_size must be an integer >= 1 or 'auto', got {batch_size!r}")
        self.batch_size: Union[int, str] = batch_size if batch_size == "auto" else int(batch_size)
        if channels_last:
            self.diffusion.to(memory_format=torch.channels_last)
        self.compile = compile
        self._compiled = False
        self.calibration: Optional[Calibration] = None
        self._calibrated_for: Optional[dict] = None
        self._check_compatible(self.settings)

    # ------------------------------------------------------------------ checks
    def _check_compatible(self, s: DiffOODSettings) -> None:
        d = self.diffusion
        if s.timestep >= d.num_train_timesteps:
            raise ValueError(f"timestep {s.timestep} is outside the diffusion model's schedule "
                             f"(0 .. {d.num_train_timesteps - 1})")
        get_solver(s.solver)
        self._class_map = None
        if d.conditional and s.class_map is not None:
            cmap = torch.as_tensor(list(s.class_map), dtype=torch.long)
            if cmap.numel() != self.classifier.num_classes:
                raise ValueError(f"class_map has {cmap.numel()} entries but the classifier has "
                                 f"{self.classifier.num_classes} classes: give one diffusion class id per classifier class")
            if cmap.min() < 0 or cmap.max() >= d.num_classes:
                raise ValueError(f"class_map ids must lie in 0 .. {d.num_classes - 1} (the diffusion model's classes)")
            self._class_map = cmap.to(self.device)
        elif d.conditional and self.classifier.num_classes != d.num_classes:
            raise ValueError(
                f"the classifier has {self.classifier.num_classes} classes but the diffusion model is conditioned on "
                f"{d.num_classes} (+1 null class): train the diffusion model on the classifier's ID classes "
                "(`python -m openood_diffood train`), pass the matching classifier, or give class_map "
                "(classifier class i -> diffusion class class_map[i])")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("empty batch: there are no images to score")
        if not torch.isfinite(x).all():
            bad = (~torch.isfinite(x.flatten(1))).any(1).nonzero().flatten().tolist()
            raise ValueError(f"input contains NaN or inf values (images {bad[:10]}); clean the data first")
        size = self.diffusion.sample_size
        if tuple(x.shape[-2:]) != (size, size) and not self.settings.resize:
            raise ValueError(
                f"images are {x.shape[-2]}x{x.shape[-1]} but the diffusion model works at {size}x{size}: "
                f"resize the inputs to {size}x{size} or set resize=True (bilinear into the model's size and back)")
        x01 = self.unnormalize(x)
        if x01.min() < -0.5 or x01.max() > 1.5:
            raise ValueError(
                f"after undoing the normalization (mean={self.settings.mean}, std={self.settings.std}) the images span "
                f"[{x01.min():.2f}, {x01.max():.2f}], far outside [0, 1]: pass images normalized with the ID dataset's "
                "mean/std (as OpenOOD does), or set dataset=/mean=/std= to match your preprocessing")

    # ------------------------------------------------------------------ normalization
    def _stats(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.settings.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.settings.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return mean, std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier input (normalized) -> image in [0, 1]."""
        mean, std = self._stats(x)
        return x * std + mean

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Image in [0, 1] -> classifier input (normalized)."""
        mean, std = self._stats(x01)
        return (x01 - mean) / std

    # ------------------------------------------------------------------ public API
    @torch.no_grad()
    def score(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
              keys: Optional[Sequence[Hashable]] = None) -> DiffOODOutput:
        """Score a batch of normalized images (any size; micro-batched internally).

        ``labels`` replaces the classifier's pseudo-labels for conditioning; ``keys`` identify the images for
        their noise (default: their content).
        """
        self._check_calibrated()
        scores, preds = [], []
        for xb, yb, kb, m in self._micro_batches(x, labels, keys):
            change, p, energy, _ = self._score_batch(xb, yb, kb, keep_reconstructions=False)
            scores.append(self._final_score(change, energy)[:m])
            preds.append(p[:m])
        return DiffOODOutput(torch.cat(scores).cpu(), torch.cat(preds).cpu())

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                    keys: Optional[Sequence[Hashable]] = None) -> Tuple[torch.Tensor, DiffOODOutput]:
        """Reconstructions in [0, 1] of shape (N, repeats, C, H, W), with the scores, for inspection."""
        self._check_calibrated()
        recs, scores, preds = [], [], []
        for xb, yb, kb, m in self._micro_batches(x, labels, keys):
            change, p, energy, r = self._score_batch(xb, yb, kb, keep_reconstructions=True)
            recs.append(r[:m].cpu())
            scores.append(self._final_score(change, energy)[:m])
            preds.append(p[:m])
        return torch.cat(recs), DiffOODOutput(torch.cat(scores).cpu(), torch.cat(preds).cpu())

    @torch.no_grad()
    def calibrate(self, batches: Union[torch.Tensor, Iterable[torch.Tensor]]) -> Calibration:
        """Fit ``combine: energy``'s statistics on ID validation images (a batch or an iterable of batches of
        normalized images) for the current settings; scoring with other settings needs a new calibration."""
        changes, energies = [], []
        for x in [batches] if isinstance(batches, torch.Tensor) else batches:
            for xb, yb, kb, m in self._micro_batches(x, None, None):
                change, _, energy, _ = self._score_batch(xb, yb, kb, keep_reconstructions=False)
                changes.append(change[:m].cpu())
                energies.append(energy[:m].cpu())
        if not changes:
            raise ValueError("calibrate got no images: pass ID validation images (OpenOOD: the ID 'val' loader)")
        self.calibration = Calibration.fit(torch.cat(changes), torch.cat(energies))
        self._calibrated_for = self._calibration_key()
        return self.calibration

    def _calibration_key(self) -> dict:
        return {k: v for k, v in self.settings.as_dict().items() if k != "combine"}

    @property
    def calibrated(self) -> bool:
        """Whether the calibration (if any) was fitted under the current settings."""
        return self.calibration is not None and self._calibrated_for == self._calibration_key()

    def _check_calibrated(self) -> None:
        if self.settings.combine is not None and not self.calibrated:
            raise ValueError(
                f"combine={self.settings.combine!r} needs ID validation statistics for the current settings: call "
                "engine.calibrate(id_val_images) first (the OpenOOD postprocessor does it with its ID val loader), "
                "or set combine=None for the paper's score")

    def _final_score(self, change: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
        if self.settings.combine is None:
            return change
        return self.calibration.combine(change, energy).to(change.device)

    # ------------------------------------------------------------------ internals
    def _micro_batches(self, x: torch.Tensor, labels: Optional[torch.Tensor],
                       keys: Optional[Sequence[Hashable]]) -> Iterator[tuple]:
        """Validate, then yield (images, labels, keys, number of real images) per micro-batch (padded under compile)."""
        x = torch.as_tensor(x).float()
        self._check_input(x)
        n = x.shape[0]
        if labels is not None:
            labels = torch.as_tensor(labels).long().flatten()
            if labels.shape[0] != n:
                raise ValueError(f"{labels.shape[0]} labels for {n} images")
            if labels.min() < 0 or labels.max() >= self.classifier.num_classes:
                raise ValueError(f"labels must lie in 0 .. {self.classifier.num_classes - 1} (the classifier's "
                                 f"classes), got {labels.min().item()} .. {labels.max().item()}")
        if keys is None:
            keys = content_keys(self.unnormalize(x))
        elif len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} images")
        size = self.prepare(x)
        for i in range(0, n, size):
            j = min(i + size, n)
            xb, yb, kb = x[i:j], None if labels is None else labels[i:j], list(keys[i:j])
            if self.compile and j - i < size:  # static shapes: pad with copies of the last image
                pad = size - (j - i)
                xb = torch.cat([xb, xb[-1:].expand(pad, *xb.shape[1:])])
                yb = None if yb is None else torch.cat([yb, yb[-1:].expand(pad)])
                kb = kb + kb[-1:] * pad
            yield xb, yb, kb, j - i

    # ------------------------------------------------------------------ speed
    def prepare(self, x: torch.Tensor) -> int:
        """Resolve ``batch_size="auto"`` (with ``x``, a batch of inputs) and compile once; returns the batch size."""
        if self.batch_size == "auto":
            self.batch_size = self._auto_batch_size(x) if self.device.type == "cuda" else self._auto_cpu_batch_size()
        if self.compile and not self._compiled:
            network = self.diffusion.network
            if not getattr(network, "_diffood_compiled", False):
                network = torch.compile(network, backend="inductor" if self.compile is True else self.compile,
                                        dynamic=False)
                network._diffood_compiled = True
                self.diffusion.network = network
            self._compiled = True
        return self.batch_size

    def _auto_cpu_batch_size(self) -> int:
        pair = 2 if self.diffusion.conditional and self.settings.guidance not in (0.0, 1.0) else 1
        return max(1, AUTO_CPU_SAMPLES_PER_THREAD * torch.get_num_threads() // (self.settings.repeats * pair))

    def _auto_batch_size(self, x: torch.Tensor) -> int:
        """The largest power of two of images (at most AUTO_MAX_BATCH) whose measured peak memory fits
        AUTO_MEMORY_FRACTION of the free GPU memory (see :func:`openood_diffood.memory.suggest_batch_size`)."""
        from .memory import suggest_batch_size  # it imports this module

        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(self.device)
        budget = torch.cuda.memory_allocated(self.device) + int(AUTO_MEMORY_FRACTION * free)
        fit = suggest_batch_size(self, budget, image_size=x.shape[-1])
        return min(AUTO_MAX_BATCH, 2 ** int(math.log2(fit)))

    @property
    def precision(self) -> str:
        """The diffusion network's precision: ``settings.precision`` with ``auto`` resolved for this device."""
        p = self.settings.precision
        if p == "auto":
            p = "bf16" if self.device.type == "cuda" else "fp32"
        return p

    def _autocast(self) -> contextlib.AbstractContextManager:
        p = self.precision
        if p == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    def _to_model_size(self, x: torch.Tensor) -> torch.Tensor:
        size = self.diffusion.sample_size
        if tuple(x.shape[-2:]) == (size, size):
            return x
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)

    def _from_model_size(self, x: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == hw:
            return x
        return F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)

    def features(self, x_norm: torch.Tensor,
                 settings: Optional[DiffOODSettings] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, flattened features in the feature space of ``settings``, default the engine's) of a normalized
        batch; the ``image`` space is the image itself in [0, 1]."""
        settings = settings or self.settings
        if settings.space == "image":
            return self.classifier(x_norm), self.unnormalize(x_norm).flatten(1)
        return self.classifier.logits_and_features(x_norm, settings)

    def _score_batch(self, x: torch.Tensor, labels: Optional[torch.Tensor], keys: Sequence[Hashable],
                     keep_reconstructions: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                          Optional[torch.Tensor]]:
        """(change, prediction, energy score, reconstructions or None) of one micro-batch."""
        s, d = self.settings, self.diffusion
        x = x.to(self.device, non_blocking=True)
        n, r = x.shape[0], s.repeats
        logits, feat = self.features(x)
        pred = logits.argmax(1)
        cond = pred if labels is None else labels.to(self.device)

        if s.timestep == 0:  # no noise, no steps: the reconstruction is the input itself
            rec_feat = feat.unsqueeze(1).expand(n, r, *feat.shape[1:])
            recs = self.unnormalize(x).unsqueeze(1).expand(n, r, *x.shape[1:]) if keep_reconstructions else None
            return feature_change(feat, rec_feat), pred, energy_score(logits), recs
        rec01 = self._round_trip(x, self._diffusion_labels(cond), keys)
        _, rec_feat = self.features(self.normalize(rec01))
        change = feature_change(feat, rec_feat.view(n, r, -1))
        recs = rec01.view(n, r, *rec01.shape[1:]) if keep_reconstructions else None
        return change, pred, energy_score(logits), recs

    def _diffusion_labels(self, cond: torch.Tensor) -> Optional[torch.Tensor]:
        """Classifier classes -> the diffusion model's class ids (through ``class_map`` when given)."""
        if not self.diffusion.conditional:
            return None
        if self._class_map is not None:
            return self._class_map[cond]
        return cond

    def _round_trip(self, x: torch.Tensor, cond: Optional[torch.Tensor], keys: Sequence[Hashable]) -> torch.Tensor:
        """Noise each image R times to t and denoise back; returns (N * R, C, H, W) reconstructions in [0, 1]."""
        s, d = self.settings, self.diffusion
        n, r, hw = x.shape[0], s.repeats, tuple(x.shape[-2:])
        with self._autocast():
            z0 = d.encode(self._to_model_size(self.unnormalize(x) * 2 - 1)).float()
        eps = sample_noise(keys, s.seed, r, tuple(z0.shape[1:]), self.device)
        z0 = z0.unsqueeze(1).expand(n, r, *z0.shape[1:]).reshape(n * r, *z0.shape[1:])
        zt = add_noise(z0, eps.reshape_as(z0), cpu_schedule(d), s.timestep)
        cond = None if cond is None else cond.repeat_interleave(r)
        with self._autocast():
            zt = denoise(s.solver, d, zt, s.timestep, s.stride, cond, s.guidance)
            rec = d.decode(zt).float()
        return (self._from_model_size(rec, hw).clamp(-1, 1) + 1) / 2
