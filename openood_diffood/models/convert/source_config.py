"""The source's own config files: read as YAML, with one clear error for a missing file or a missing key."""
from __future__ import annotations

import os
from typing import Any, Dict, Mapping, Tuple

import yaml

from ...errors import ConfigError, MissingFileError


def read_yaml(path: str, what: str) -> Dict[str, Any]:
    """A yml file as a mapping; a missing, invalid or non-mapping file is an error naming ``what`` it should be."""
    if not os.path.isfile(path):
        raise MissingFileError(f"config {path!r} does not exist; pass {what} with --config")
    with open(path) as f:
        try:
            loaded = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config {path!r} is not valid YAML ({exc}); pass {what}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config {path!r} is not a mapping; pass {what}")
    return loaded


def require(section: Mapping[str, Any], keys: Tuple[str, ...], where: str) -> None:
    """Name the first of ``keys`` that ``section`` lacks."""
    for key in keys:
        if key not in section:
            raise ConfigError(f"{where} lacks {key!r}, which the conversion needs; add it (see the released configs)")
