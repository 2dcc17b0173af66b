"""Make ``diffood`` / ``diffood_imagenet`` resolvable by OpenOOD without editing OpenOOD.

OpenOOD looks postprocessors up in two places: ``openood.evaluation_api.postprocessor`` (the ``Evaluator``; a
dict plus a config file under ``config_root``, downloaded when missing) and ``openood.postprocessors``'
``get_postprocessor(config)`` (``main.py`` pipelines; a dict local to the function). We add our class to the dict
and wrap both ``get_postprocessor`` functions so that our names resolve, with our packaged configs used when
``config_root`` has none (nothing is downloaded).
"""
from __future__ import annotations

import functools
import os
import sys
from importlib import resources
from types import ModuleType
from typing import Any, Callable

from .compat import require_openood

#: The postprocessor names this package provides, each with its packaged config.
NAMES = ("diffood", "diffood_imagenet")
_MARK = "__openood_diffood__"


def config_path(name: str = "diffood") -> str:
    """Path of a packaged postprocessor config (``configs/postprocessors/<name>.yml``)."""
    if name not in NAMES:
        raise ValueError(f"unknown DiffOOD config {name!r}; known: {NAMES}")
    return str(resources.files("openood_diffood") / "configs" / "postprocessors" / f"{name}.yml")


def _make(config: Any) -> Any:
    from .postprocessor import DiffOODPostprocessor

    return DiffOODPostprocessor(config)


def _wrap_pipeline_lookup(original: Callable) -> Callable:
    """``get_postprocessor(config)`` of ``openood.postprocessors`` with our names added."""
    if getattr(original, _MARK, False):
        return original

    @functools.wraps(original)
    def get_postprocessor(config: Any) -> Any:
        if config.postprocessor.name in NAMES:
            return _make(config)
        return original(config)

    setattr(get_postprocessor, _MARK, True)
    return get_postprocessor


def _wrap_evaluator_lookup(original: Callable) -> Callable:
    """``get_postprocessor(config_root, name, id_name)`` of the evaluation API, reading our packaged config."""
    if getattr(original, _MARK, False):
        return original

    @functools.wraps(original)
    def get_postprocessor(config_root: str, postprocessor_name: str, id_data_name: str) -> Any:
        if postprocessor_name not in NAMES:
            return original(config_root, postprocessor_name, id_data_name)
        from openood.utils.config import Config, merge_configs

        path = os.path.join(config_root or "", "postprocessors", f"{postprocessor_name}.yml")
        config = Config(path if os.path.isfile(path) else config_path(postprocessor_name))
        config = merge_configs(config, Config(**{"dataset": {"name": id_data_name}}))
        postprocessor = _make(config)
        postprocessor.APS_mode = config.postprocessor.APS_mode
        postprocessor.hyperparam_search_done = False
        return postprocessor

    setattr(get_postprocessor, _MARK, True)
    return get_postprocessor


def patch_module(module: ModuleType) -> None:
    """Patch one freshly imported OpenOOD module (used by the import hook and by :func:`register`)."""
    if module.__name__ in ("openood.postprocessors", "openood.postprocessors.utils"):
        module.get_postprocessor = _wrap_pipeline_lookup(module.get_postprocessor)
    elif module.__name__ == "openood.evaluation_api.postprocessor":
        from .postprocessor import DiffOODPostprocessor

        for name in NAMES:
            module.postprocessors[name] = DiffOODPostprocessor
        module.get_postprocessor = _wrap_evaluator_lookup(module.get_postprocessor)


def register() -> None:
    """Register ``diffood`` and ``diffood_imagenet`` with OpenOOD (idempotent; raises ImportError without OpenOOD).

    Also rebinds the name in OpenOOD modules that already imported ``get_postprocessor`` (the Evaluator and the
    pipelines), so calling this after ``import openood...`` works too.
    """
    for name in ("openood.postprocessors.utils", "openood.postprocessors", "openood.evaluation_api.postprocessor"):
        patch_module(require_openood(name))
    pipelines = sys.modules["openood.postprocessors"].get_postprocessor
    evaluator_lookup = sys.modules["openood.evaluation_api.postprocessor"].get_postprocessor
    for mod_name, module in list(sys.modules.items()):
        if module is None or not mod_name.startswith("openood.") or mod_name.startswith("openood.postprocessors"):
            continue
        current = getattr(module, "get_postprocessor", None)
        if current is None or getattr(current, _MARK, False) or mod_name == "openood.evaluation_api.postprocessor":
            continue
        module.get_postprocessor = evaluator_lookup if mod_name.startswith("openood.evaluation_api") else pipelines
