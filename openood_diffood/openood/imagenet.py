"""ImageNet class ids: map OpenOOD's ImageNet-200 classes to the ImageNet-1K ids of a 1000-class diffusion model.

OpenOOD ships no class list of its own; the classes are defined by its image lists
(``benchmark_imglist/imagenet200/*.txt`` and ``benchmark_imglist/imagenet/*.txt``), which its ``Evaluator``
downloads into ``data_root`` on first use. Each line is ``<relative image path> <label>`` and the image path
names the WordNet id of its class (``.../n01443537/...`` or ``n01443537_123.JPEG``). These lists are read at
run time from the user's data folder; nothing is copied into this package.
"""
from __future__ import annotations

import os
import re
from typing import Dict, List, Sequence, Union

from ..errors import ConfigError, MissingFileError

_WNID = re.compile(r"(?:^|/)(n\d{8})(?=/|_)")
_SPLITS = ("test", "val", "train")


def imglist_wnid_labels(paths: Sequence[Union[str, os.PathLike]]) -> Dict[str, int]:
    """WordNet id -> label over OpenOOD image lists (every line whose path names a WordNet id)."""
    labels: Dict[str, int] = {}
    for path in paths:
        with open(path) as f:
            for line_no, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) < 2:
                    continue
                match = _WNID.search(parts[0])
                if match is None:
                    continue
                wnid, label = match.group(1), int(parts[1])
                if labels.setdefault(wnid, label) != label:
                    raise ConfigError(f"{path}:{line_no}: {wnid} has label {label} here but {labels[wnid]} earlier")
    return labels


def _lists(data_root: str, benchmark: str) -> List[str]:
    folder = os.path.join(data_root, "benchmark_imglist", benchmark)
    paths = [os.path.join(folder, f"{split}_{benchmark}.txt") for split in _SPLITS]
    found = [p for p in paths if os.path.isfile(p)]
    if not found:
        raise MissingFileError(
            f"no OpenOOD image list for {benchmark} under {folder!r} (looked for "
            f"{', '.join(os.path.basename(p) for p in paths)}); pass the data_root you give OpenOOD's Evaluator "
            "(it downloads benchmark_imglist/ there on first use)")
    return found


def imagenet200_class_map(data_root: Union[str, os.PathLike] = "./data") -> List[int]:
    """ImageNet-1K class id for each of OpenOOD's ImageNet-200 classes (``class_map`` for DiffOODSettings).

    ``data_root`` is OpenOOD's data folder (the Evaluator's ``data_root``), holding
    ``benchmark_imglist/imagenet200/`` and ``benchmark_imglist/imagenet/``. The ImageNet-1K ids are OpenOOD's
    ImageNet labels, i.e. the standard order of torchvision's classifiers and of DiT's class ids.
    """
    root = os.fspath(data_root)
    sub = imglist_wnid_labels(_lists(root, "imagenet200"))
    full = imglist_wnid_labels(_lists(root, "imagenet"))
    by_label = {label: wnid for wnid, label in sub.items()}
    absent = sorted(set(range(200)) - set(by_label))
    if absent or len(by_label) != 200:
        raise ConfigError(f"the ImageNet-200 image lists under {root!r} name WordNet ids for {len(by_label)} labels, "
                          f"not the 200 labels 0..199 (missing e.g. {absent[:5]}); are the lists complete?")
    unknown = sorted(w for w in sub if w not in full)
    if unknown:
        raise ConfigError(f"ImageNet-200 classes {unknown[:5]} do not occur in the ImageNet-1K image lists "
                          f"under {root!r}")
    return [full[by_label[i]] for i in range(200)]
