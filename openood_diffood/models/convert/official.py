"""The configs of the official DiffOOD repository (luping-liu/DiffOOD, ``config/*.yml``): the ``Model`` section
(the network's architecture, ``struc`` DDIM or iDDPM) and the ``Schedule`` section (its betas)."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from ...errors import ConfigError
from ...fields import read_yaml
from .source_config import require

#: ``Schedule.type`` -> diffusers' ``beta_schedule``: linear betas, the square of linear square roots ("quad"), and
#: improved DDPM's cosine alpha-bar with betas capped at 0.999 (``squaredcos_cap_v2``).
BETA_SCHEDULES = {"linear": "linear", "quad": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def official_sections(path: Optional[str], struc: str, released: Mapping[str, Any],
                      released_schedule: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any], str]:
    """(Model section, Schedule section, where they came from) of an official config (``struc`` DDIM or iDDPM),
    or the released checkpoints' architecture and schedule when ``path`` is None."""
    if path is None:
        return dict(released), dict(released_schedule), "the released checkpoints' architecture (built in)"
    what = f"an official DiffOOD config (config/{struc.lower()}_cifar10_cond.yml)"
    loaded = read_yaml(path, what)
    model, schedule = loaded.get("Model"), loaded.get("Schedule")
    if not isinstance(model, dict) or not isinstance(schedule, dict):
        raise ConfigError(f"config {path!r} has no Model and Schedule sections; pass {what}")
    found = str(model.get("struc", struc))
    if found.lower() != struc.lower():
        raise ConfigError(f"config {path!r} describes a {found} network (Model.struc), not {struc}: use --from "
                          f"{found.lower()} or the {struc} config")
    return model, schedule, path


def scheduler_config(schedule: Mapping[str, Any], variance_type: str, where: str) -> Dict[str, Any]:
    """``DDPMScheduler`` settings of a ``Schedule`` section."""
    require(schedule, ("type", "diffusion_step"), f"the Schedule section of {where}")
    kind = schedule["type"]
    if kind not in BETA_SCHEDULES:
        raise ConfigError(f"Schedule.type {kind!r} of {where} is not one of {', '.join(BETA_SCHEDULES)}")
    config = {"num_train_timesteps": int(schedule["diffusion_step"]), "beta_schedule": BETA_SCHEDULES[kind],
              "variance_type": variance_type, "clip_sample": False, "prediction_type": "epsilon"}
    if kind != "cosine":
        require(schedule, ("beta_start", "beta_end"), f"the Schedule section of {where}")
        config.update(beta_start=float(schedule["beta_start"]), beta_end=float(schedule["beta_end"]))
    return config


def class_count(model: Mapping[str, Any], state: Mapping[str, Any], configured: bool) -> int:
    """Real classes of the network: the config's ``num_classes``, or with the built-in architecture the rows of the
    checkpoint's ``label_emb`` less the null class (0 without one: an unconditional network)."""
    if configured:
        return int(model.get("num_classes", 0))
    return state["label_emb.weight"].shape[0] - 1 if "label_emb.weight" in state else 0
