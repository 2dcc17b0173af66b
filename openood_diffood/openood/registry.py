"""Make ``diffood`` / ``diffood_imagenet`` resolvable by OpenOOD without editing it, and its ``Evaluator`` run
without CUDA: our class joins the ``Evaluator``'s postprocessor dict and both ``get_postprocessor`` functions are
wrapped, with our packaged configs where ``config_root`` has none (nothing is downloaded).
:func:`postprocessor_from_config` is the one place a postprocessor is built from its config file."""
from __future__ import annotations

import os
import sys
from importlib import resources
from types import ModuleType
from typing import Any, Callable, Mapping, Optional

from ..config import ConfigError, check_keys
from .compat import PATCHED_MODULES, WRAPPED, on_cpu_without_cuda, require_openood, wrap_once

#: The postprocessor names this package provides, each with its packaged config.
NAMES = ("diffood", "diffood_imagenet", "diffood_knn")


def config_path(name: str = "diffood") -> str:
    """Path of a packaged postprocessor config (``configs/postprocessors/<name>.yml``)."""
    if name not in NAMES:
        raise ConfigError(f"unknown DiffOOD config {name!r}; known: {NAMES}")
    return str(resources.files("openood_diffood") / "configs" / "postprocessors" / f"{name}.yml")


def _make(config: Any) -> Any:
    from .postprocessor import DiffOODPostprocessor

    return DiffOODPostprocessor(config)


def _wrap_pipeline_lookup(original: Callable) -> Callable:
    """``get_postprocessor(config)`` of ``openood.postprocessors`` with our names added."""
    def get_postprocessor(config: Any) -> Any:
        return _make(config) if config.postprocessor.name in NAMES else original(config)
    return wrap_once(original, get_postprocessor)


def config_file(name: str, config_root: Optional[str]) -> str:
    """A postprocessor's config file: ``<config_root>/postprocessors/<name>.yml``, or for our names the packaged
    one when config_root has none (raises ConfigError for another name without one: OpenOOD would download it)."""
    path = os.path.join(config_root or "", "postprocessors", f"{name}.yml")
    if os.path.isfile(path) or name not in NAMES:
        if not os.path.isfile(path):
            raise ConfigError(f"no config for postprocessor {name!r} at {path}; pass --config-root <OpenOOD "
                              "checkout>/configs (OpenOOD would download it; this never does)")
        return path
    return config_path(name)


def postprocessor_config(name: str, config_root: Optional[str], id_name: str,
                         overrides: Optional[Mapping[str, Any]] = None) -> Any:
    """The config OpenOOD's ``get_postprocessor`` reads (``<config_root>/postprocessors/<name>.yml``; for our names
    the packaged one when config_root has none; never a download), with the dataset name and dotted overrides
    (``{"postprocessor.postprocessor_args.repeats": 1}``; every key must exist)."""
    config_module = require_openood("openood.utils.config")
    config = config_module.Config(config_file(name, config_root))
    config = config_module.merge_configs(config, config_module.Config(dataset={"name": id_name}))
    for key, value in (overrides or {}).items():
        _set_dotted(config, key, value)
    return config


def result_name(name: str, config: Any) -> str:
    """The name a postprocessor's results go under: ``diffood+<combine>`` for DiffOOD with ``combine`` set (e.g.
    ``diffood+knn``; never plain ``diffood``), else ``name``."""
    if name not in NAMES:
        return name
    combine = (config.postprocessor.get("postprocessor_args") or {}).get("combine")
    return f"diffood+{combine}" if combine else name


def postprocessor_from_config(name: str, config_root: Optional[str], id_name: str,
                              overrides: Optional[Mapping[str, Any]] = None) -> Any:
    """OpenOOD's evaluation-API ``get_postprocessor`` on :func:`postprocessor_config`: the postprocessor with
    ``APS_mode`` from its config and no search done yet."""
    config = postprocessor_config(name, config_root, id_name, overrides)
    postprocessor = _make(config) if name in NAMES else \
        require_openood("openood.evaluation_api.postprocessor").postprocessors[name](config)
    postprocessor.APS_mode = config.postprocessor.APS_mode
    postprocessor.hyperparam_search_done = False
    return postprocessor


def _set_dotted(config: dict, key: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``key = "a.b.c"``; every part must already exist (strict, as main.py)."""
    parts, node = key.split("."), config
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "config"
        if not isinstance(node, dict):
            raise ConfigError(f"--{key}: {where} is a value, not a section")
        try:
            check_keys({part: None}, node, where=where)
        except ConfigError as exc:
            raise ConfigError(f"--{key}: {exc}") from None
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


def _wrap_evaluator_lookup(original: Callable) -> Callable:
    """``get_postprocessor(config_root, name, id_name)`` of the evaluation API, reading our packaged config."""
    def get_postprocessor(config_root: str, postprocessor_name: str, id_data_name: str) -> Any:
        if postprocessor_name not in NAMES:
            return original(config_root, postprocessor_name, id_data_name)
        return postprocessor_from_config(postprocessor_name, config_root, id_data_name)
    return wrap_once(original, get_postprocessor)


def _evaluator_on_cpu(evaluator: type) -> None:
    """Wrap the ``Evaluator``'s ``__init__`` and public methods with :func:`.compat.on_cpu_without_cuda`."""
    for name, value in list(vars(evaluator).items()):
        if callable(value) and (name == "__init__" or not name.startswith("_")):
            setattr(evaluator, name, on_cpu_without_cuda(value))


def patch_module(module: ModuleType) -> None:
    """Patch one freshly imported OpenOOD module (used by the import hook and by :func:`register`)."""
    if module.__name__ in ("openood.postprocessors", "openood.postprocessors.utils"):
        module.get_postprocessor = _wrap_pipeline_lookup(module.get_postprocessor)
    elif module.__name__ == "openood.evaluation_api.postprocessor":
        from .postprocessor import DiffOODPostprocessor

        for name in NAMES:
            module.postprocessors[name] = DiffOODPostprocessor
        module.get_postprocessor = _wrap_evaluator_lookup(module.get_postprocessor)
    elif module.__name__ == "openood.evaluation_api.evaluator":
        _evaluator_on_cpu(module.Evaluator)


def register() -> None:
    """Register ``diffood`` and ``diffood_imagenet`` with OpenOOD (idempotent; raises ImportError without OpenOOD),
    and let the ``Evaluator`` run without CUDA (see the module docstring).
    Also rebinds the name in OpenOOD modules that already imported ``get_postprocessor`` (the Evaluator and the
    pipelines), so calling this after ``import openood...`` works too."""
    for name in PATCHED_MODULES:
        patch_module(require_openood(name))
    pipelines = sys.modules["openood.postprocessors"].get_postprocessor
    evaluator_lookup = sys.modules["openood.evaluation_api.postprocessor"].get_postprocessor
    for mod_name, module in list(sys.modules.items()):
        if module is None or not mod_name.startswith("openood.") or mod_name.startswith("openood.postprocessors"):
            continue
        current = getattr(module, "get_postprocessor", None)
        if current is None or getattr(current, WRAPPED, False) or mod_name == "openood.evaluation_api.postprocessor":
            continue
        module.get_postprocessor = evaluator_lookup if mod_name.startswith("openood.evaluation_api") else pipelines
