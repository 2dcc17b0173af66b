"""DiffOOD settings: one validated dataclass shared by the engine, the OpenOOD postprocessor and the CLI."""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Tuple

#: Mean / std used by OpenOOD's preprocessors for each ID benchmark (``openood/evaluation_api/preprocessor.py``).
DATASET_STATS: dict[str, Tuple[Tuple[float, ...], Tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenet200": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

SPACES = ("logit", "feature", "image")
_LAYER = re.compile(r"^layer(\d+)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Values of ``combine`` (see :mod:`openood_diffood.calibration`).
COMBINES = (None, "energy")


def dataset_stats(dataset: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Return OpenOOD's (mean, std) for an ID dataset name."""
    try:
        return DATASET_STATS[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r} for normalization statistics; known: {sorted(DATASET_STATS)}. "
            "Pass mean=... and std=... explicitly for other datasets."
        ) from None


@dataclass
class DiffOODSettings:
    """Every setting that changes a DiffOOD score (paper defaults for CIFAR).

    timestep: noise level t the input is diffused to (0 = no noise, score 0).
    guidance: classifier-free guidance weight w, eps = eps_null + w (eps_y - eps_null); 1 = conditional only,
        0 = unconditional (the null class only).
    repeats: R independent noise draws averaged in the score.
    stride: solver stride in training timesteps (20: 15 DDIM steps from t = 300).
    space: ``logit``, ``feature`` (penultimate), ``layer<k>`` (OpenOOD feature list entry k) or ``image``.
    threshold: clip for the penultimate feature as in ReAct (``space='feature'`` only).
    seed: global seed; each image's noise derives from it and the image's own key.
    solver: denoising solver name (see :mod:`openood_diffood.solvers`).
    precision: autocast dtype for the diffusion network (``auto``: bf16 on CUDA, fp32 on CPU).
    mean, std, dataset: the normalization OpenOOD applied to the inputs (``dataset`` picks OpenOOD's defaults).
    resize: resize inputs whose size differs from the diffusion model's ``sample_size`` into it and back
        (bilinear, antialiased); when False such inputs are an error.
    class_map: diffusion class id for each classifier class, when the two class sets differ
        (e.g. an ImageNet-200 classifier with a 1000-class diffusion model).
    combine: None (the paper's score) or ``energy``: the change plus the classifier's energy score, each
        z-normalised on ID validation images (:meth:`DiffOOD.calibrate`; the OpenOOD postprocessor uses its ID val
        loader).
    """

    timestep: int = 300
    guidance: float = 3.0
    repeats: int = 4
    stride: int = 20
    space: str = "logit"
    threshold: Optional[float] = None
    seed: int = 0
    solver: str = "ddim"
    precision: str = "auto"
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None
    dataset: str = "cifar10"
    resize: bool = False
    class_map: Optional[Sequence[int]] = None
    combine: Optional[str] = None

    def __post_init__(self) -> None:
        self.timestep, self.repeats, self.stride, self.seed = (
            int(self.timestep), int(self.repeats), int(self.stride), int(self.seed))
        self.guidance = float(self.guidance)
        if self.timestep < 0:
            raise ValueError(f"timestep must be >= 0, got {self.timestep}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.stride < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.timestep and self.stride > self.timestep:
            raise ValueError(
                f"stride {self.stride} is larger than timestep {self.timestep}: no denoising step would run; "
                f"use a stride <= timestep (paper: stride 20 from t = 300)")
        if self.space not in SPACES and not _LAYER.match(self.space):
            raise ValueError(f"space must be one of {SPACES} or 'layer<k>', got {self.space!r}")
        if self.threshold is not None and self.space != "feature":
            raise ValueError("threshold (ReAct-style clip) applies to space='feature' only")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be one of {COMBINES}, got {self.combine!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then the dataset's defaults are used)")
        if self.mean is None:
            self.mean, self.std = dataset_stats(self.dataset)
        self.mean, self.std = tuple(float(m) for m in self.mean), tuple(float(s) for s in self.std)
        if self.class_map is not None:
            self.class_map = tuple(int(c) for c in self.class_map)

    @property
    def layer_index(self) -> Optional[int]:
        """Index k for ``space='layer<k>'``, else None."""
        m = _LAYER.match(self.space)
        return int(m.group(1)) if m else None

    def replace(self, **changes: Any) -> "DiffOODSettings":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict:
        """Plain dict of every field (for cache keys and result files)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, args: Mapping[str, Any]) -> "DiffOODSettings":
        """Build from a config mapping (``postprocessor_args``), ignoring keys that are not settings."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in dict(args).items() if k in names and v is not None})
