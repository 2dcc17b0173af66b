"""The sets of an OpenOOD v1.5 benchmark under its data root (``benchmark_imglist/`` + ``images_classic/`` ...)."""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Tuple

from ..openood.compat import BENCHMARKS
from .benchmark import ImageSet
from .images import load_images, openood_spec

Entry = Tuple[str, str, str]


def openood_imglists(data_root: str, id_name: str) -> Dict[str, List[Entry]]:
    """``{role: [(set name, imglist path, image dir)]}`` of an OpenOOD data root, for roles id/fit/near/far/csid."""
    if id_name not in BENCHMARKS:
        raise ValueError(f"unknown OpenOOD benchmark {id_name!r}; known: {', '.join(sorted(BENCHMARKS))}")
    _, near, far, csid = BENCHMARKS[id_name]
    large = id_name.startswith("imagenet")

    def entry(name: str, listfile: str) -> Entry:
        folder = "images_largescale" if large and name != "textures" else "images_classic"
        return (name, os.path.join(data_root, "benchmark_imglist", id_name, listfile),
                os.path.join(data_root, folder))

    def csid_list(name: str) -> str:
        return f"test_{id_name}_{name[len('imagenet_'):]}.txt" if name.startswith("imagenet_") else f"test_{name}.txt"

    return {"id": [entry(id_name, f"test_{id_name}.txt")], "fit": [entry(id_name, f"train_{id_name}.txt")],
            "near": [entry(n, f"test_{n}.txt") for n in near], "far": [entry(n, f"test_{n}.txt") for n in far],
            "csid": [entry(n, csid_list(n)) for n in csid]}


def load_set(name: str, spec: str, size: Optional[int]) -> ImageSet:
    """One named set from an image source spec (see :mod:`.images`)."""
    images, labels, classes = load_images(spec, size)
    return ImageSet(name, images, labels, classes or None)


def openood_root_sets(data_root: str, id_name: str, size: int, fsood: bool,
                      with_fit: bool) -> Tuple[Dict[str, List[ImageSet]], List[str]]:
    """Every set of benchmark ``id_name`` under ``data_root``, and the roles:names skipped because their image
    lists are missing (OpenOOD would download them; this never downloads). The ID test list must be there."""
    sets: Dict[str, List[ImageSet]] = {}
    skipped: List[str] = []
    for role, entries in openood_imglists(data_root, id_name).items():
        sets[role] = []
        if (role == "csid" and not fsood) or (role == "fit" and not with_fit):
            continue
        for name, listfile, image_dir in entries:
            if not os.path.isfile(listfile):
                if role == "id":
                    raise FileNotFoundError(f"--data-root {data_root!r} has no {os.path.relpath(listfile, data_root)}"
                                            f"; pass OpenOOD's data folder (get it with OpenOOD's download script)")
                skipped.append(f"{role}:{name}")
                warnings.warn(f"{role} set {name!r} skipped: {listfile} is missing (get it with OpenOOD's download "
                              "script)")
                continue
            sets[role].append(load_set(name, openood_spec(listfile, image_dir), size))
    return sets, skipped
