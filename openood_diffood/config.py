"""One config model: the settings that change a DiffOOD score, and the options of how it runs.

Both are immutable dataclasses built strictly: an unknown key is an error naming the nearest known one, and every
value is checked when the object is made. ``postprocessor_args`` of ``diffood.yml``, ``eval --config``, the
command-line flags (generated from these fields by :func:`add_arguments`) and the benchmarks all build through
:func:`split_mapping` / :func:`load_yaml`.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import yaml

from .errors import ConfigError  # noqa: F401  (the package's user-error class; imported from here too)

from .method.normalization import DATASET_STATS, Normalization

SPACES = ("logit", "feature", "image")
LAYER_SPACE = re.compile(r"^layer(\d+)$")
SOLVERS = ("ddim", "dpmpp2m", "plms")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: ``combine``: energy, or a postprocessor's name (knn, vim, ...; checked against those installed at setup).
COMBINE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
PROTOCOLS = ("package", "official")
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
#: Environment variables that override run options (handy with OpenOOD's unmodified scripts).
ENVIRONMENT = {"diffusion": "DIFFOOD_DIFFUSION", "cache_dir": "DIFFOOD_CACHE_DIR"}


# ----------------------------------------------------------------------------------------------- value parsers
def _int(name: str, low: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        if number < low:
            raise ConfigError(f"{name} must be >= {low}, got {number}")
        return number
    return parse


def _float(name: str, low: Optional[float] = None) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
        if low is not None and number < low:
            raise ConfigError(f"{name} must be >= {low:g}, got {number:g}")
        return number
    return parse


def _optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None or str(value).lower() in ("none", "null") else parse(value)


def _choice(name: str, choices: Iterable[str]) -> Callable[[Any], str]:
    choices = tuple(choices)

    def parse(value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value
    return parse


def _bool(name: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        text = str(value).lower()
        if isinstance(value, bool) or text in TRUE + FALSE:
            return value if isinstance(value, bool) else text in TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return parse


def _sequence(name: str, kind: Callable[[Any], Any], what: str) -> Callable[[Any], Tuple[Any, ...]]:
    def parse(value: Any) -> Tuple[Any, ...]:
        items = value.split(",") if isinstance(value, str) else value
        try:
            return tuple(kind(v) for v in items)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a list of {what}, got {value!r}") from None
    return parse


def _timestep(value: Any) -> Union[int, Tuple[int, ...]]:
    """One noise level, or several (a list or ``"100,300"``): distinct, above 0, kept sorted."""
    items = value.split(",") if isinstance(value, str) and "," in value else value
    if not isinstance(items, (list, tuple)):
        return _int("timestep", 0)(items)
    steps = tuple(sorted(_int("every timestep of a list", 1)(v) for v in items))
    if not steps or len(set(steps)) != len(steps):
        raise ConfigError(f"timestep must be one integer or distinct integers ([100, 300], 100,300), got {value!r}")
    return steps[0] if len(steps) == 1 else steps


def timesteps(settings: "DiffOODSettings") -> Tuple[int, ...]:
    """The settings' noise levels as a tuple (one for a single ``timestep``)."""
    return settings.timestep if isinstance(settings.timestep, tuple) else (settings.timestep,)


def _combine(value: Any) -> str:
    if not isinstance(value, str) or not COMBINE_NAME.match(value) or value.startswith("diffood"):
        raise ConfigError(f"combine must be energy or an OpenOOD postprocessor's name (knn, vim, ...), got {value!r}")
    return value


def _space(value: Any) -> str:
    if value not in SPACES and not LAYER_SPACE.match(str(value)):
        raise ConfigError(f"space must be one of {', '.join(SPACES)} or layer<k>, got {value!r}")
    return str(value)


def _dataset(value: Any) -> str:
    if value not in DATASET_STATS:
        raise ConfigError(f"unknown dataset {value!r} for normalization statistics; known: "
                          f"{', '.join(sorted(DATASET_STATS))}; for other data give mean and std")
    return str(value)


def _batch_size(value: Any) -> Union[int, str]:
    return "auto" if value == "auto" else _int("batch_size", 1)(value)


def _path(value: Any) -> Optional[str]:
    return None if value in (None, "") else os.fspath(value)


def _compile(value: Any) -> Union[bool, str, Callable]:
    if callable(value):
        return value  # a torch.compile backend
    if isinstance(value, bool) or str(value).lower() in TRUE + FALSE:
        return _bool("compile")(value)
    return str(value)  # a torch.compile backend name


def option(default: Any, parse: Callable[[Any], Any], help: str, flag: Optional[str] = "",
           metavar: Optional[str] = None, dest: Optional[str] = None) -> Any:
    """A config field: its default, the parser that checks every value, the ``--help`` text, the command-line
    flag (``""``: ``--<name>``; None: no flag) and the flag's argparse ``dest`` (default: the field's name)."""
    return field(default=default, metadata=dict(parse=parse, help=help, flag=flag, metavar=metavar, dest=dest))


def _strict_keywords(cls: type) -> type:
    """Make ``cls``'s constructor name the nearest field for an unknown keyword (a ConfigError, not a TypeError)."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        check_keys(kwargs, cls.field_names())
        init(self, *args, **kwargs)
    cls.__init__ = __init__
    return cls


class _Strict:
    """Construction from mappings, ``replace`` and validation shared by the two config dataclasses."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, f.metadata["parse"](getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """Checks that involve several fields."""

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]):
        """Build from a mapping whose every key is a field (unknown keys are an error)."""
        return cls(**dict(mapping))

    def replace(self, **changes: Any):
        """A copy with some fields changed (unknown names are an error; every value is checked again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, Any]:
        """Every field as plain data."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


@_strict_keywords
@dataclass(frozen=True)
class DiffOODSettings(_Strict):
    """Every setting that changes a DiffOOD score (defaults: the paper's CIFAR settings)."""

    timestep: Union[int, Tuple[int, ...]] = option(
        300, _timestep, "noise level t in training timesteps (0: no noise, score 0), or several (100,300): each "
                        "one's change z-normalised on ID validation images and summed", metavar="T[,T...]")
    guidance: float = option(3.0, _float("guidance", 0.0),
                             "classifier-free guidance w: eps_null + w (eps_y - eps_null); 1 = conditional only, "
                             "0 = the null class only")
    repeats: int = option(4, _int("repeats", 1), "R noise draws per image, averaged in the score")
    stride: int = option(20, _int("stride", 1), "solver stride in training timesteps (20: 15 steps from t = 300)")
    space: str = option("logit", _space, "feature space compared: logit, feature (penultimate), layer<k> (entry k "
                                         "of OpenOOD's feature list on every net: 0 the stem, the last stage "
                                         "pooled), image")
    threshold: Optional[float] = option(None, _optional(_float("threshold")),
                                        "ReAct-style clip of the penultimate feature (space feature only)")
    seed: int = option(0, _int("seed", 0), "global seed; each image's noise derives from it and the image itself")
    solver: str = option("ddim", _choice("solver", SOLVERS), "denoising solver: ddim, dpmpp2m or plms")
    precision: str = option("auto", _choice("precision", PRECISIONS),
                            "diffusion network precision: auto (bf16 on GPU, fp32 on CPU), fp32, bf16, fp16")
    dataset: str = option("cifar10", _dataset, "the inputs' normalization statistics: cifar10, cifar100, imagenet, "
                                               "imagenet200 (mean/std override them)", flag=None)
    mean: Optional[Tuple[float, ...]] = option(None, _optional(_sequence("mean", float, "numbers")),
                                               "per-channel mean of the inputs' normalization", flag=None)
    std: Optional[Tuple[float, ...]] = option(None, _optional(_sequence("std", float, "numbers")),
                                              "per-channel std of the inputs' normalization", flag=None)
    resize: bool = option(False, _bool("resize"),
                          "resize inputs into the diffusion model's size and back (else a size mismatch is an error)")
    class_map: Optional[Tuple[int, ...]] = option(None, _optional(_sequence("class_map", int, "integers")),
                                                  "diffusion class id for each classifier class", flag=None)
    combine: Optional[str] = option(None, _optional(_combine), "energy, or an OpenOOD postprocessor (knn, vim, ...; "
                                    "fitted on ID training images): add its score, both z-normalised on ID "
                                    "validation images (beyond the paper)")
    combine_weight: float = option(1.0, _float("combine_weight", 0.0),
                                   "weight of the combined score's z-score against DiffOOD's (combine only)")
    protocol: str = option("package", _choice("protocol", PROTOCOLS),
                           "package: the network at each noise level's own timestep, the clean input as reference; "
                           "official: as the released DiffOOD code, the network at label t - 1 for noise level t and "
                           "per-repeat references noised to abar_0")

    def _check(self) -> None:
        for t in timesteps(self):
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

    def replace(self, **changes: Any) -> "DiffOODSettings":
        """A copy with some fields changed; a new ``dataset`` brings its own statistics unless mean/std change too."""
        if "dataset" in changes and "mean" not in changes and "std" not in changes:
            changes = {**changes, "mean": None, "std": None}
        return super().replace(**changes)

    @property
    def normalization(self) -> Normalization:
        """The inputs' normalization: mean/std when given, else the dataset's."""
        if self.mean is not None:
            return Normalization(self.mean, self.std)
        return Normalization(*DATASET_STATS[self.dataset])

    def identity(self) -> Dict[str, Any]:
        """What a score depends on: every field, with the normalization resolved to numbers."""
        norm = self.normalization
        return {**self.as_dict(), "mean": list(norm.mean), "std": list(norm.std)}


@_strict_keywords
@dataclass(frozen=True)
class RunOptions(_Strict):
    """How DiffOOD runs; no option changes a score."""

    diffusion: Optional[str] = option(None, _path, "diffusers directory (unet/ + scheduler/) or hub id of the "
                                                   "class-conditional diffusion model", metavar="DIR")
    batch_size: Union[int, str] = option(64, _batch_size, "images per DiffOOD micro-batch (each is repeats x 2 "
                                                          "network samples), or auto", flag="--diffood-batch-size",
                                       dest="diffood_batch_size")
    device: Optional[str] = option(None, _optional(str), "cpu, cuda, cuda:1, ... (default: the classifier's)")
    compile: Union[bool, str, Callable] = option(False, _compile, "torch.compile the denoiser: true, false or a "
                                                                    "torch.compile backend name",
                                       metavar="BACKEND")
    channels_last: bool = option(False, _bool("channels_last"), "channels-last denoiser inputs")
    cache_dir: Optional[str] = option(None, _path, "keep finished scores here; a rerun or an interrupted run "
                                                   "resumes from them", metavar="DIR")
    allow_untrained_timestep: bool = option(False, _bool("allow_untrained_timestep"),
                                            "run at a timestep above the largest one the diffusion model's card "
                                            "says it was trained on")

    def with_environment(self) -> "RunOptions":
        """A copy with the options set by :data:`ENVIRONMENT` variables taken from the environment."""
        found = {name: os.environ[var] for name, var in ENVIRONMENT.items() if os.environ.get(var)}
        return self.replace(**found) if found else self


# ----------------------------------------------------------------------------------------------- building
def check_keys(mapping: Mapping[str, Any], known: Iterable[str], where: str = "config") -> None:
    """Raise a ConfigError for the first key of ``mapping`` that is not in ``known``, naming the nearest one."""
    known = tuple(known)
    for key in mapping:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown {where} key {key!r}{hint}; known keys: {', '.join(known)}")


def split_mapping(mapping: Mapping[str, Any], settings: Optional[DiffOODSettings] = None,
                  options: Optional[RunOptions] = None) -> Tuple[DiffOODSettings, RunOptions]:
    """(settings, options) from one mapping of both kinds of keys (``postprocessor_args``), over the given bases.

    Every key must be a field of one of the two; every value is set as given (None too, as ``replace`` does)."""
    mapping = plain(mapping)
    check_keys(mapping, DiffOODSettings.field_names() + RunOptions.field_names())
    settings, options = settings or DiffOODSettings(), options or RunOptions()
    return (settings.replace(**{k: v for k, v in mapping.items() if k in DiffOODSettings.field_names()}),
            options.replace(**{k: v for k, v in mapping.items() if k in RunOptions.field_names()}))


def load_yaml(path: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The DiffOOD keys of a yml: ``postprocessor.postprocessor_args`` of a postprocessor config, or a flat mapping."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist; give the path of a diffood.yml")
    with open(path) as f:
        try:
            loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path!r} is not valid YAML ({exc}); fix its syntax") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path!r} holds a {type(loaded).__name__}, not a mapping of settings")
    if "postprocessor" in loaded:
        args = (loaded.get("postprocessor") or {}).get("postprocessor_args") or {}
        return dict(args)
    return loaded


def plain(value: Any) -> Any:
    """Mappings (OpenOOD's Config too) -> dicts, sequences -> lists, other values as they are."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser, *, skip: Iterable[str] = ()) -> None:
    """Add a flag for every settings and run-options field that has one (help from the field), default None."""
    skip = set(skip)
    for cls, title in ((DiffOODSettings, "DiffOOD settings (override --config)"),
                       (RunOptions, "DiffOOD run options (override --config)")):
        group = parser.add_argument_group(title)
        for f in dataclasses.fields(cls):
            flag = f.metadata["flag"]
            if flag is None or f.name in skip:
                continue
            flag = flag or "--" + f.name.replace("_", "-")
            kwargs: Dict[str, Any] = dict(dest=_dest(f), default=None, help=f.metadata["help"])
            if f.type == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs.update(type=_argparse_type(f.metadata["parse"]), metavar=f.metadata["metavar"])
            group.add_argument(flag, **kwargs)


def _dest(f: dataclasses.Field) -> str:
    return f.metadata["dest"] or f.name


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _argparse_type(_int("the value", 1))(text)


def _argparse_type(parse: Callable[[Any], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def from_arguments(args: argparse.Namespace, settings: Optional[DiffOODSettings] = None,
                   options: Optional[RunOptions] = None) -> Tuple[DiffOODSettings, RunOptions]:
    """(settings, options): the bases (default: the dataclasses' defaults), then ``--config``, then the flags."""
    settings, options = settings or DiffOODSettings(), options or RunOptions()
    if getattr(args, "config", None):  # a null in the yml means "not set here": the base stays
        yml = load_yaml(args.config)
        check_keys(yml, DiffOODSettings.field_names() + RunOptions.field_names())
        yml = {k: v for k, v in yml.items() if v is not None}
        settings, options = split_mapping(yml, settings, options)
    def given(cls) -> Dict[str, Any]:
        values = {f.name: getattr(args, _dest(f), None) for f in dataclasses.fields(cls)}
        return {k: v for k, v in values.items() if v is not None}

    return settings.replace(**given(DiffOODSettings)), options.replace(**given(RunOptions))
