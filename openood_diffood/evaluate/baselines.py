"""Post-hoc OOD baselines by OpenOOD's names (msp, ebo, mls, react, vim, knn, ...): OpenOOD's own postprocessors
from its ``configs/postprocessors/<name>.yml`` (APS off), else pytorch-ood's detectors with OpenOOD's defaults;
nothing is re-implemented. ``score`` is higher = more OOD (OpenOOD's ``conf`` negated)."""
from __future__ import annotations

import contextlib
import difflib
import functools
import io
import sys
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union
from unittest import mock

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ..errors import ConfigError, MissingPackageError
from ..method.features import Classifier, as_classifier, last_linear
from ..openood.compat import cuda_calls_stay_put, openood_checkout, require_openood


BACKENDS = ("auto", "openood", "pytorch-ood")
#: OpenOOD v1.5's defaults (``configs/postprocessors/*.yml``, APS off), used for the pytorch-ood detectors.
PYTORCH_OOD_DEFAULTS = {"msp": {}, "ebo": {"temperature": 1.0}, "mls": {}, "react": {"percentile": 90},
                        "vim": {"dim": 256}, "knn": {"K": 50}}
#: OpenOOD's Evaluator wraps the net for these postprocessors (``openood/evaluation_api/evaluator.py``).
_OPENOOD_NET_WRAPPERS = {"react": ("openood.networks.react_net", "ReactNet"),
                         "ash": ("openood.networks.ash_net", "ASHNet"),
                         "scale": ("openood.networks.scale_net", "ScaleNet")}
Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass
class FitData:
    """ID fit images as ``(normalized images, labels)`` batches on the classifier's device, with the classifier's
    ``(logits, penultimate features)`` on each batch: extracted once, shared by every baseline fitted on them."""

    batches: List[Batch]
    outputs: List[Tuple[torch.Tensor, torch.Tensor]]

    @classmethod
    @torch.no_grad()
    def extract(cls, classifier: nn.Module, batches: Iterable[Batch], progress: bool = False) -> "FitData":
        """One pass of the classifier over the fit batches."""
        clf = as_classifier(classifier).eval()
        device = last_linear(clf.net).weight.device
        moved = [(x.to(device), y) for x, y in batches]
        outputs = [clf.features(x, "feature")
                   for x, _ in tqdm(moved, desc="fit set features", disable=not progress, leave=False)]
        return cls(moved, outputs)

    def __len__(self) -> int:
        return sum(len(x) for x, _ in self.batches)

    def features(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, labels) of every fit image, on the CPU."""
        return torch.cat([f.cpu() for _, f in self.outputs]), torch.cat([y.cpu() for _, y in self.batches])


class Baseline(ABC):
    """A fitted-or-not post-hoc detector on a classifier; ``score`` is higher for more OOD-looking images."""

    def __init__(self, name: str, backend: str, needs_fit: bool, classifier: Classifier) -> None:
        self.name, self.backend, self.needs_fit, self.classifier = name, backend, needs_fit, classifier

    def fit(self, data: Union[FitData, Iterable[Batch], None], progress: bool = False) -> "Baseline":
        """Fit on ID images: a shared :class:`FitData`, or ``(normalized images, labels)`` batches (None: no fit
        data). ``progress``: show the fitting's own progress bars and messages."""
        if data is None:
            if self.needs_fit:
                raise ConfigError(f"baseline {self.name!r} is fitted on ID training images: give them "
                                  "(`eval --fit-data train.npz`)")
            return self
        if self.needs_fit:
            self._fit(data if isinstance(data, FitData) else FitData.extract(self.classifier, data), progress)
        return self

    def score(self, batches: Iterable[torch.Tensor], progress: bool = True, desc: str = "",
              total: Optional[int] = None) -> np.ndarray:
        """Outlier scores (higher = more OOD) for normalized image batches (some OpenOOD methods take gradients)."""
        out = [self._score_batch(x).detach().float().cpu().reshape(-1)
               for x in tqdm(batches, desc=desc or self.name, total=total, disable=not progress, leave=False)]
        if not out:
            raise ConfigError(f"{self.name}: no images to score")
        return torch.cat(out).numpy()

    @abstractmethod
    def _fit(self, data: FitData, progress: bool) -> None: ...

    @abstractmethod
    def _score_batch(self, x: torch.Tensor) -> torch.Tensor: ...


# ----------------------------------------------------------------------------------------------- OpenOOD
class OpenOODNet(nn.Module):
    """A classifier seen through the interface OpenOOD's postprocessors call.
    ``forward(x, return_feature=True)`` gives ``(logits, penultimate feature)``; ``fc`` / ``get_fc_layer()`` /
    ``get_fc()`` give the last linear layer. Inputs are moved to the net's device (OpenOOD calls ``.cuda()``)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = as_classifier(classifier)
        self.fc = last_linear(self.classifier.net)
        self._known: Dict[int, Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]] = {}

    @contextlib.contextmanager
    def knowing(self, data: FitData) -> Iterator[None]:
        """Inside the block, ``forward(x, return_feature=True)`` on one of ``data``'s batches returns its
        extracted outputs instead of running the classifier again."""
        self._known = {id(x): (x, out) for (x, _), out in zip(data.batches, data.outputs)}
        try:
            yield
        finally:
            self._known = {}

    def forward(self, x: torch.Tensor, return_feature: bool = False, return_feature_list: bool = False):
        known = self._known.get(id(x))
        if return_feature and not return_feature_list and known is not None and known[0] is x:
            return known[1]
        x = x.to(self.fc.weight.device)
        if return_feature_list:
            if not self.classifier.openood_style:
                raise ConfigError(f"this postprocessor needs feature lists (return_feature_list), which only "
                                  f"OpenOOD-style nets provide, not {type(self.classifier.net).__name__}")
            return self.classifier.net(x, return_feature_list=True)
        if return_feature:
            return self.classifier.features(x, "feature")
        return self.classifier(x)

    def get_fc_layer(self) -> nn.Linear:
        return self.fc

    def get_fc(self) -> Tuple[np.ndarray, np.ndarray]:
        return self.fc.weight.detach().cpu().numpy(), self.fc.bias.detach().cpu().numpy()


@functools.lru_cache(maxsize=None)
def openood_postprocessors() -> Tuple[Optional[ModuleType], Optional[Path], str]:
    """(OpenOOD's evaluation-API postprocessor module, its config root, why unusable) - once per process."""
    try:
        module = require_openood("openood.evaluation_api.postprocessor")
    except Exception as exc:  # OpenOOD missing, or one of its dependencies broken: fall back
        return None, None, f"OpenOOD is not importable ({type(exc).__name__}: {exc})"
    checkout = openood_checkout()
    if checkout is None or not (checkout / "configs" / "postprocessors").is_dir():
        return None, None, ("OpenOOD's configs/postprocessors is not next to its package (install OpenOOD from a git "
                            "clone)")
    return module, checkout / "configs", ""


def _openood_names() -> List[str]:
    module, root, _ = openood_postprocessors()
    if module is None:
        return []
    return sorted(n for n in module.postprocessors if not n.startswith("diffood")
                  and (root / "postprocessors" / f"{n}.yml").is_file())


class OpenOODBaseline(Baseline):
    """One of OpenOOD's postprocessors, built from its own config file with APS off."""

    def __init__(self, name: str, classifier: nn.Module, id_name: str = "cifar10") -> None:
        module, root, why = openood_postprocessors()
        if module is None:
            raise MissingPackageError(why)
        if name not in _openood_names():
            raise ConfigError(f"OpenOOD has no postprocessor {name!r} with a config in {root / 'postprocessors'}")
        # the config exists, so OpenOOD's lookup reads it and downloads nothing
        self.postprocessor = module.get_postprocessor(str(root), name, id_name)
        self.postprocessor.APS_mode = False
        self._adapter = OpenOODNet(classifier)
        self.net: nn.Module = self._adapter
        if name in _OPENOOD_NET_WRAPPERS:
            mod, cls = _OPENOOD_NET_WRAPPERS[name]
            self.net = getattr(require_openood(mod), cls)(self.net)
        self.net.eval()
        super().__init__(name, "openood", hasattr(self.postprocessor, "setup_flag"), self._adapter.classifier)

    def _fit(self, data: FitData, progress: bool) -> None:
        """OpenOOD's ``setup`` over the fit batches, fed the shared features (quiet without ``progress``)."""
        pp = self.postprocessor
        _adapt_sizes(pp, "K", "dim", n_fit=len(data), fc=self._adapter.fc)
        loader = [{"data": x, "label": y} for x, y in data.batches]
        with cuda_calls_stay_put(), self._adapter.knowing(data), _quiet(pp, progress):
            pp.setup(self.net, {"train": loader, "val": loader}, {})

    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        with cuda_calls_stay_put():
            _, conf = self.postprocessor.postprocess(self.net, x)
        return -torch.as_tensor(conf)


@contextlib.contextmanager
def _quiet(postprocessor: object, progress: bool) -> Iterator[None]:
    """Without ``progress``: the ``tqdm`` bars of the module defining the postprocessor's ``setup`` disabled, and
    its prints (``Extracting id training feature``) dropped."""
    if progress:
        yield
        return
    module = sys.modules[type(postprocessor).setup.__module__]
    bars = mock.patch.object(module, "tqdm", functools.partial(tqdm, disable=True)) if hasattr(module, "tqdm") \
        else contextlib.nullcontext()
    with bars, contextlib.redirect_stdout(io.StringIO()):
        yield


def _adapt_sizes(obj: object, k_attr: str, dim_attr: str, n_fit: int, fc: nn.Linear) -> None:
    """Keep KNN's K within the fit set and ViM's principal dimension below the feature dimension (with warnings)."""
    k = getattr(obj, k_attr, None)
    if isinstance(k, int) and k > n_fit:
        warnings.warn(f"KNN: K={k} is more than the {n_fit} fit images; using K={n_fit}")
        setattr(obj, k_attr, k := n_fit)
    if isinstance(k, int) and k > n_fit / fc.out_features:
        warnings.warn(f"KNN: K={k} exceeds the ~{n_fit // fc.out_features} fit images per class, so the K-th "
                      "neighbour of an ID image lies in another class and KNN's ranking degrades (OpenOOD's K=50 "
                      "assumes the full training set): give more fit images")
    dim = getattr(obj, dim_attr, None)
    if isinstance(dim, int) and dim >= fc.in_features:
        warnings.warn(f"ViM: dim={dim} is not below the feature dimension {fc.in_features}; "
                      f"using {fc.in_features // 2}")
        setattr(obj, dim_attr, fc.in_features // 2)


# ----------------------------------------------------------------------------------------------- pytorch-ood
class _Logits(nn.Module):
    def __init__(self, classifier: Classifier) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


class _Penultimate(_Logits):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x, "feature")[1]


def _pytorch_ood_detector(name: str, classifier: Classifier):
    from pytorch_ood import detector as D

    logits, features, fc = _Logits(classifier), _Penultimate(classifier), last_linear(classifier.net)
    p = PYTORCH_OOD_DEFAULTS[name]
    if name == "msp":
        return D.MaxSoftmax(logits)
    if name == "ebo":
        return D.EnergyBased(logits, t=p["temperature"])
    if name == "mls":
        return D.MaxLogit(logits)
    if name == "react":
        return D.ReAct(backbone=features, head=fc, percentile=p["percentile"] / 100)
    if name == "vim":
        return D.ViM(features, d=p["dim"], w=fc.weight, b=fc.bias)
    return D.KNN(features, k=p["K"])


class PytorchOODBaseline(Baseline):
    """One of pytorch-ood's detectors, with OpenOOD's default settings."""

    def __init__(self, name: str, classifier: nn.Module) -> None:
        if name not in PYTORCH_OOD_DEFAULTS:
            raise ConfigError(f"pytorch-ood fallback has no baseline {name!r}; it has {sorted(PYTORCH_OOD_DEFAULTS)}")
        classifier = as_classifier(classifier).eval()
        self.detector = _pytorch_ood_detector(name, classifier)
        super().__init__(name, "pytorch-ood", self.detector.requires_fit, classifier)

    def _fit(self, data: FitData, progress: bool) -> None:
        """The detector fitted on the shared penultimate features (ReAct: its threshold from them)."""
        z, y = data.features()
        _adapt_sizes(self.detector, "k", "d", n_fit=len(z), fc=last_linear(self.classifier.net))
        with torch.no_grad():
            (self.detector.fit_feature_maps if self.name == "react" else self.detector.fit_features)(z, y)

    @torch.no_grad()
    def _score_batch(self, x: torch.Tensor) -> torch.Tensor:
        return self.detector.predict(x.to(last_linear(self.classifier.net).weight.device))


# ----------------------------------------------------------------------------------------------- selection
def available_baselines(backend: str = "auto") -> List[str]:
    """Names this process can run with ``backend``."""
    names = set()
    if backend in ("auto", "openood"):
        names |= set(_openood_names())
    if backend in ("auto", "pytorch-ood"):
        names |= set(PYTORCH_OOD_DEFAULTS)
    return sorted(names)


def check_baselines(names: Sequence[str], backend: str = "auto", also: Sequence[str] = ()) -> None:
    """Raise a ValueError naming the available methods (the baselines and ``also``, with the nearest one) if any of
    ``names`` cannot be built with ``backend``."""
    for name in names:
        if backend not in BACKENDS:
            raise ConfigError(f"unknown baseline backend {backend!r}; use one of {BACKENDS}")
        available = available_baselines(backend)
        if name in available:
            continue
        known = sorted(set(available) | set(also))
        near = difflib.get_close_matches(name, known, n=1)
        why = openood_postprocessors()[2]
        raise ConfigError(
            f"unknown baseline {name!r}{f' (did you mean {near[0]!r}?)' if near else ''} for backend {backend!r}: "
            f"available are {', '.join(known)}"
            + (f" (OpenOOD's postprocessors would add more, but {why})" if why and backend != "pytorch-ood" else ""))


def make_baseline(name: str, classifier: nn.Module, backend: str = "auto", id_name: str = "cifar10") -> Baseline:
    """Build baseline ``name``: OpenOOD's postprocessor (``auto`` when OpenOOD imports) else pytorch-ood's detector."""
    check_baselines([name], backend)
    if backend != "pytorch-ood" and name in _openood_names():
        return OpenOODBaseline(name, classifier, id_name)
    return PytorchOODBaseline(name, classifier)


def make_baselines(names: Sequence[str], classifier: nn.Module, backend: str = "auto",
                   id_name: str = "cifar10") -> List[Baseline]:
    """Build several baselines (every name is checked before any is built)."""
    check_baselines(names, backend)
    return [make_baseline(n, classifier, backend, id_name) for n in names]


def fitted_scorer(name: str, classifier: nn.Module, batches: Iterable[Batch], id_name: str = "cifar10",
                  backend: str = "auto") -> Callable[[torch.Tensor], torch.Tensor]:
    """``combine: <name>``'s score: baseline ``name`` (OpenOOD's postprocessor from its own config, APS off; else
    pytorch-ood's detector) fitted on the ID training ``(images, labels)`` batches only; returns its per-batch score
    of normalized images (higher = more OOD)."""
    baseline = make_baseline(name, classifier, backend, id_name).fit(batches)
    return lambda x: torch.from_numpy(baseline.score([x], progress=False))
