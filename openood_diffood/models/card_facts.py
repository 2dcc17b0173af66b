"""Model facts the engine relies on, in the model card's YAML metadata ``diffood`` mapping (``max_timestep``,
``null_class``), written by ``train`` / ``convert`` and read with huggingface_hub's ``ModelCard``; older cards'
Markdown ``max_timestep`` is still read."""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional

from ..errors import ConfigError

#: The metadata key holding the facts.
FACTS_KEY = "diffood"
_PROSE_MAX_TIMESTEP = re.compile(r"^\|\s*max_timestep\s*\|\s*`?(\d+)`?\s*\|", re.M)


@dataclass(frozen=True)
class ModelFacts:
    """``max_timestep``: the model was trained on timesteps below it; ``null_class``: guidance's null label."""

    max_timestep: Optional[int] = None
    null_class: Optional[int] = None


def card_header(tags: Iterable[str], facts: ModelFacts) -> str:
    """The card's YAML metadata block (``---`` ... ``---``) with the diffusers library, ``tags`` and the facts."""
    from huggingface_hub import ModelCardData

    known = {k: v for k, v in dataclasses.asdict(facts).items() if v is not None}
    data = ModelCardData(library_name="diffusers", tags=list(tags), **({FACTS_KEY: known} if known else {}))
    return f"---\n{data.to_yaml()}\n---\n"


def read_facts(model_dir: str) -> ModelFacts:
    """The facts the model card of a local model directory records (none without a card)."""
    path = os.path.join(model_dir, "README.md")
    if not os.path.isfile(path):
        return ModelFacts()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    facts = {}
    if text.startswith("---"):
        from huggingface_hub import ModelCard

        facts = ModelCard.load(path).data.to_dict().get(FACTS_KEY) or {}
        if not isinstance(facts, dict):
            raise ConfigError(f"{path}: metadata '{FACTS_KEY}' must be a mapping (max_timestep, null_class), got "
                              f"{facts!r}; fix the model card")
    if "max_timestep" not in facts and (match := _PROSE_MAX_TIMESTEP.search(text)):
        facts = {**facts, "max_timestep": match.group(1)}
    try:
        return ModelFacts(**{f.name: None if facts.get(f.name) is None else int(facts[f.name])
                             for f in dataclasses.fields(ModelFacts)})
    except ValueError:
        raise ConfigError(f"{path}: metadata '{FACTS_KEY}' holds a non-integer ({facts}); fix the model card") from None
