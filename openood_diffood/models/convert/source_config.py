"""The source's own config sections: one clear error for a missing key (the files are read by
:func:`openood_diffood.fields.read_yaml`)."""
from __future__ import annotations

from typing import Any, Mapping, Tuple

from ...errors import ConfigError


def require(section: Mapping[str, Any], keys: Tuple[str, ...], where: str) -> None:
    """Name the first of ``keys`` that ``section`` lacks."""
    for key in keys:
        if key not in section:
            raise ConfigError(f"{where} lacks {key!r}, which the conversion needs; add it (see the released configs)")
