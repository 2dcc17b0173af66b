"""What a conversion produces: the diffusers parts of the output directory and the facts its model card records."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List


@dataclass
class Conversion:
    """``parts``: subfolder -> an object with ``save_pretrained`` (model or scheduler); ``settings``: the source
    config values the conversion used; ``notes``: how the source maps onto diffusers, one line each."""

    format: str
    config_source: str
    parts: Dict[str, Any]
    settings: Dict[str, Any]
    notes: List[str] = field(default_factory=list)

    def save(self, out_dir: str) -> None:
        """Write every part into ``out_dir/<subfolder>`` as safetensors + config.json."""
        for name, part in self.parts.items():
            part.save_pretrained(os.path.join(out_dir, name))
