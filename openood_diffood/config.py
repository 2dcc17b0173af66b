"""One config model: the settings that change a DiffOOD score, and the options of how it runs.

Both are immutable dataclasses built strictly (:mod:`openood_diffood.fields`): an unknown key is an error naming the
nearest known one, and every value is checked when the object is made. A field is one annotated line plus its help
text: its check and its command-line flag (:func:`add_arguments`) come from the annotation, the choices from the
modules that implement them, and the special cases below are small named validators. ``postprocessor_args`` of
``diffood.yml``, ``eval --config``, the flags and the benchmarks all build through :func:`split_mapping` /
:func:`load_yaml` (a ``null`` in an ``eval --config`` yml keeps the base value; ``replace(field=None)`` and
``postprocessor_args`` set None).
"""
import argparse
import os
import re
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Dict, Iterable, Literal, Mapping, Optional, Tuple, Union

from .errors import ConfigError  # noqa: F401  (the package's user-error class; imported from here too)
from .fields import FALSE, TRUE, Ge, Strict, add_flags, check_keys, flag_values, option, parse, read_yaml
from .method.diffood import PROTOCOLS
from .method.features import LAYER_SPACE, SPACES
from .method.normalization import DATASET_STATS, Normalization
from .method.solvers import SOLVERS
from .runtime.execution import PRECISIONS

#: Environment variables that override run options (handy with OpenOOD's unmodified scripts).
ENVIRONMENT = {"diffusion": "DIFFOOD_DIFFUSION", "cache_dir": "DIFFOOD_CACHE_DIR"}


# ----------------------------------------------------------------------------------------------- special cases
# Named validators, each given by its field's ``Annotated[..., validator]``.
def _timestep(value: Any) -> Union[int, Tuple[int, ...]]:
    """One noise level, or several (a list or ``"100,300"``): distinct, above 0, kept sorted."""
    items = value.split(",") if isinstance(value, str) and "," in value else value
    if not isinstance(items, (list, tuple)):
        return parse("timestep", Annotated[int, Ge(0)], items)
    steps = tuple(sorted(parse("every timestep of a list", Annotated[int, Ge(1)], v) for v in items))
    if not steps or len(set(steps)) != len(steps):
        raise ConfigError(f"timestep must be one integer or distinct integers ([100, 300], 100,300), got {value!r}")
    return steps[0] if len(steps) == 1 else steps


def _space(value: Any) -> str:
    if value not in SPACES and not LAYER_SPACE.match(str(value)):
        raise ConfigError(f"space must be one of {', '.join(SPACES)} or layer<k>, got {value!r}")
    return str(value)


def _dataset(value: Any) -> str:
    if value not in DATASET_STATS:
        raise ConfigError(f"unknown dataset {value!r} for normalization statistics; known: "
                          f"{', '.join(sorted(DATASET_STATS))}; for other data give mean and std")
    return str(value)


def _combine(value: Any) -> str:
    """``energy``, or an OpenOOD postprocessor's name (knn, vim, ...; checked against those installed at setup)."""
    if not isinstance(value, str) or not re.match(r"^[a-z][a-z0-9_]*$", value) or value.startswith("diffood"):
        raise ConfigError(f"combine must be energy or an OpenOOD postprocessor's name (knn, vim, ...), got {value!r}")
    return value


def _batch_size(value: Any) -> Union[int, str]:
    return "auto" if value == "auto" else parse("batch_size", Annotated[int, Ge(1)], value)


def _path(value: Any) -> Optional[str]:
    return None if value in (None, "") else os.fspath(value)


def _compile(value: Any) -> Union[bool, str, Callable]:
    if callable(value):
        return value  # a torch.compile backend
    if isinstance(value, bool) or str(value).lower() in TRUE + FALSE:
        return parse("compile", bool, value)
    return str(value)  # a torch.compile backend name


@dataclass(frozen=True)
class DiffOODSettings(Strict):
    """Every setting that changes a DiffOOD score (defaults: the paper's CIFAR settings)."""

    timestep: Annotated[Union[int, Tuple[int, ...]], _timestep] = option(
        300, "noise level t in training timesteps (0: no noise, score 0), or several (100,300): each one's change "
             "z-normalised on ID validation images and summed", metavar="T[,T...]")
    guidance: Annotated[float, Ge(0)] = option(3.0, "classifier-free guidance w: eps_null + w (eps_y - eps_null); "
                                                    "1 = conditional only, 0 = the null class only")
    repeats: Annotated[int, Ge(1)] = option(4, "R noise draws per image, averaged in the score")
    stride: Annotated[int, Ge(1)] = option(20, "solver stride in training timesteps (20: 15 steps from t = 300)")
    space: Annotated[str, _space] = option("logit", "feature space compared: logit, feature (penultimate), layer<k> "
                                                    "(entry k of OpenOOD's feature list on every net: 0 the stem, "
                                                    "the last stage pooled), image")
    threshold: Optional[float] = option(None, "ReAct-style clip of the penultimate feature (space feature only)")
    seed: Annotated[int, Ge(0)] = option(0, "global seed; each image's noise derives from it and the image itself")
    solver: Literal[tuple(SOLVERS)] = option("ddim", "denoising solver (the choices: method/solvers.py)")
    precision: Literal[PRECISIONS] = option("auto", "diffusion network precision (auto: bf16 on GPU, fp32 on CPU)")
    dataset: Annotated[str, _dataset] = option("cifar10", "the inputs' normalization statistics: cifar10, cifar100, "
                                                          "imagenet, imagenet200 (mean/std override them)", flag=None)
    mean: Optional[Tuple[float, ...]] = option(None, "per-channel mean of the inputs' normalization", flag=None)
    std: Optional[Tuple[float, ...]] = option(None, "per-channel std of the inputs' normalization", flag=None)
    resize: bool = option(False, "resize inputs into the diffusion model's size and back (else a size mismatch is "
                                 "an error)")
    class_map: Optional[Tuple[int, ...]] = option(None, "diffusion class id for each classifier class", flag=None)
    combine: Optional[Annotated[str, _combine]] = option(
        None, "energy, or an OpenOOD postprocessor (knn, vim, ...; fitted on ID training images): add its score, both "
              "z-normalised on ID validation images (beyond the paper)")
    combine_weight: Annotated[float, Ge(0)] = option(1.0, "weight of the combined score's z-score against DiffOOD's "
                                                          "(combine only)")
    protocol: Literal[PROTOCOLS] = option(
        "package", "package: the network at each noise level's own timestep, the clean input as reference; official: "
                   "as the released DiffOOD code, the network at label t - 1 for noise level t and per-repeat "
                   "references noised to abar_0")

    def _check(self) -> None:
        for t in self.timesteps:
            if t and self.stride > t:
                raise ConfigError(f"stride {self.stride} is larger than timestep {t}: no denoising step would run; "
                                  "use a stride <= every timestep (paper: stride 20 from t = 300)")
        if self.threshold is not None and self.space != "feature":
            raise ConfigError("threshold (ReAct-style clip) applies to space feature only; drop it or set space: "
                              "feature")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std, or neither (then the dataset's statistics are used)")
        if self.mean is not None and len(self.mean) != len(self.std):
            raise ConfigError(f"mean has {len(self.mean)} values but std {len(self.std)}: give one per channel")

    @property
    def timesteps(self) -> Tuple[int, ...]:
        """The noise levels as a tuple (one for a single ``timestep``)."""
        return self.timestep if isinstance(self.timestep, tuple) else (self.timestep,)

    def replace(self, **changes: Any) -> "DiffOODSettings":
        """A copy with some fields changed; a new ``dataset`` brings its own statistics unless mean/std change too."""
        if "dataset" in changes and "mean" not in changes and "std" not in changes:
            changes = {**changes, "mean": None, "std": None}
        return super().replace(**changes)

    @property
    def normalization(self) -> Normalization:
        """The inputs' normalization: mean/std when given, else the dataset's."""
        return Normalization(*((self.mean, self.std) if self.mean is not None else DATASET_STATS[self.dataset]))

    def identity(self) -> Dict[str, Any]:
        """What a score depends on: every field, with the normalization resolved to numbers."""
        norm = self.normalization
        return {**self.as_dict(), "mean": list(norm.mean), "std": list(norm.std)}


@dataclass(frozen=True)
class RunOptions(Strict):
    """How DiffOOD runs; no option changes a score."""

    diffusion: Annotated[Optional[str], _path] = option(None, "diffusers directory (unet/ + scheduler/) or hub id of "
                                                              "the class-conditional diffusion model", metavar="DIR")
    batch_size: Annotated[Union[int, Literal["auto"]], _batch_size] = option(
        64, "images per DiffOOD micro-batch (each is repeats x 2 network samples), or auto",
        flag="--diffood-batch-size")
    device: Optional[str] = option(None, "cpu, cuda, cuda:1, ... (default: the classifier's)")
    compile: Annotated[Union[bool, str, Callable], _compile] = option(
        False, "torch.compile the denoiser: true, false or a torch.compile backend name", metavar="BACKEND")
    channels_last: bool = option(False, "channels-last denoiser inputs")
    cache_dir: Annotated[Optional[str], _path] = option(None, "keep finished scores here; a rerun or an interrupted "
                                                              "run resumes from them", metavar="DIR")
    allow_untrained_timestep: bool = option(False, "run at a timestep above the largest one the diffusion model's "
                                                   "card says it was trained on")

    def with_environment(self) -> "RunOptions":
        """A copy with the options set by :data:`ENVIRONMENT` variables taken from the environment."""
        found = {name: os.environ[var] for name, var in ENVIRONMENT.items() if os.environ.get(var)}
        return self.replace(**found) if found else self


# ----------------------------------------------------------------------------------------------- building
#: Every key of a config: the settings' and the run options' fields.
KEYS = DiffOODSettings.field_names() + RunOptions.field_names()


def split_mapping(mapping: Mapping[str, Any], settings: Optional[DiffOODSettings] = None,
                  options: Optional[RunOptions] = None) -> Tuple[DiffOODSettings, RunOptions]:
    """(settings, options) from one mapping of both kinds of keys (``postprocessor_args``), over the given bases.

    Every key must be a field of one of the two; every value is set as given (None too, as ``replace`` does)."""
    mapping = plain(mapping)
    check_keys(mapping, KEYS)
    settings, options = settings or DiffOODSettings(), options or RunOptions()
    return (settings.replace(**{k: v for k, v in mapping.items() if k in settings.field_names()}),
            options.replace(**{k: v for k, v in mapping.items() if k in options.field_names()}))


def load_yaml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The DiffOOD keys of a yml: ``postprocessor.postprocessor_args`` of a postprocessor config, or a flat mapping."""
    loaded = read_yaml(path, "a diffood.yml")
    if "postprocessor" in loaded:
        return dict((loaded.get("postprocessor") or {}).get("postprocessor_args") or {})
    return loaded


def plain(value: Any) -> Any:
    """Mappings (OpenOOD's Config too) -> dicts, sequences -> lists, other values as they are."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    return [plain(v) for v in value] if isinstance(value, (list, tuple)) else value


# ----------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser, *, skip: Iterable[str] = ()) -> None:
    """Add a flag, default None, for every settings and run-options field that has one (see :func:`add_flags`)."""
    add_flags(parser.add_argument_group("DiffOOD settings (override --config)"), DiffOODSettings, skip)
    add_flags(parser.add_argument_group("DiffOOD run options (override --config)"), RunOptions, skip)


def from_arguments(args: argparse.Namespace, settings: Optional[DiffOODSettings] = None,
                   options: Optional[RunOptions] = None) -> Tuple[DiffOODSettings, RunOptions]:
    """(settings, options): the bases (default: the dataclasses' defaults), then ``--config``, then the flags."""
    given = {}
    if getattr(args, "config", None):  # a null in the yml means "not set here": the base stays
        yml = load_yaml(args.config)
        check_keys(yml, KEYS)
        given = {k: v for k, v in yml.items() if v is not None}
    flags = {**flag_values(args, DiffOODSettings), **flag_values(args, RunOptions)}
    return split_mapping({**given, **flags}, settings, options)
