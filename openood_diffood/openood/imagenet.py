"""ImageNet class ids: map OpenOOD's ImageNet-200 classes (or any ID set whose classes are ImageNet-1K classes) to
the ImageNet-1K ids of a 1000-class diffusion model.

OpenOOD ships no class list of its own; the classes are defined by its image lists
(``benchmark_imglist/imagenet200/*.txt`` and ``benchmark_imglist/imagenet/*.txt``), which its ``Evaluator``
downloads into ``data_root`` on first use. Each line is ``<relative image path> <label>`` and the image path
names the WordNet id of its class (``.../n01443537/...`` or ``n01443537_123.JPEG``). ImageNet-1K's labels in those
lists are its standard order (the sorted WordNet ids), which is the order of DiT's and LDM cin256-v2's class ids.
These lists are read at run time, from the ID loaders OpenOOD hands to ``setup`` and from the user's data folder;
nothing is copied into this package and nothing is downloaded.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import ConfigError, MissingFileError

_WNID = re.compile(r"(?:^|/)(n\d{8})(?=/|_)")
_SPLITS = ("test", "val", "train")
#: The classes of ImageNet-1K, the class set of a diffusion model conditioned on 1000 classes (DiT, cin256-v2).
IMAGENET_CLASSES = 1000


def wnid_labels(lines: Iterable[str], where: str) -> Dict[str, int]:
    """WordNet id -> label over the lines of an OpenOOD image list (every line whose path names a WordNet id)."""
    labels: Dict[str, int] = {}
    for line_no, line in enumerate(lines, 1):
        parts = line.split()
        if len(parts) < 2:
            continue
        match = _WNID.search(parts[0])
        if match is None:
            continue
        wnid, label = match.group(1), int(parts[1])
        if labels.setdefault(wnid, label) != label:
            raise ConfigError(f"{where}:{line_no}: {wnid} has label {label} here but {labels[wnid]} earlier")
    return labels


def imglist_wnid_labels(paths: Sequence[Union[str, os.PathLike]]) -> Dict[str, int]:
    """WordNet id -> label over OpenOOD image list files."""
    labels: Dict[str, int] = {}
    for path in paths:
        with open(path) as f:
            found = wnid_labels(f, os.fspath(path))
        clash = next((w for w in found if labels.setdefault(w, found[w]) != found[w]), None)
        if clash is not None:
            raise ConfigError(f"{path}: {clash} has label {found[clash]} here but {labels[clash]} in another list")
    return labels


def _lists(data_root: str, benchmark: str) -> List[str]:
    folder = os.path.join(data_root, "benchmark_imglist", benchmark)
    paths = [os.path.join(folder, f"{split}_{benchmark}.txt") for split in _SPLITS]
    found = [p for p in paths if os.path.isfile(p)]
    if not found:
        raise MissingFileError(
            f"no OpenOOD image list for {benchmark} under {folder!r} (looked for "
            f"{', '.join(os.path.basename(p) for p in paths)}); pass the data_root you give OpenOOD's Evaluator "
            "(it downloads benchmark_imglist/ there on first use), or give class_map in postprocessor_args")
    return found


def map_classes(sub: Mapping[str, int], full: Mapping[str, int], classes: int, where: str) -> List[int]:
    """``full``'s id of each of the ``classes`` ID classes, matched by WordNet id (``sub``: WordNet id -> ID
    label); one error naming the first class that cannot be mapped."""
    by_label = {label: wnid for wnid, label in sub.items()}
    absent = sorted(set(range(classes)) - set(by_label))
    if absent:
        raise ConfigError(f"ID class {absent[0]} cannot be mapped to the diffusion model's classes: no image path of "
                          f"the ID image lists ({where}) names its WordNet id ({len(absent)} of {classes} classes "
                          "lack one); use OpenOOD's complete image lists or give class_map in postprocessor_args")
    unknown = [i for i in range(classes) if by_label[i] not in full]
    if unknown:
        raise ConfigError(f"ID class {unknown[0]} ({by_label[unknown[0]]}) is not an ImageNet-1K class of the lists "
                          f"under {where} ({len(unknown)} such classes): a 1000-class diffusion model cannot be "
                          "conditioned on it; give class_map in postprocessor_args")
    return [full[by_label[i]] for i in range(classes)]


def imagenet200_class_map(data_root: Union[str, os.PathLike] = "./data") -> List[int]:
    """ImageNet-1K class id for each of OpenOOD's ImageNet-200 classes (``class_map`` for DiffOODSettings).

    ``data_root`` is OpenOOD's data folder (the Evaluator's ``data_root``), holding
    ``benchmark_imglist/imagenet200/`` and ``benchmark_imglist/imagenet/``.
    """
    root = os.fspath(data_root)
    return map_classes(imglist_wnid_labels(_lists(root, "imagenet200")), imglist_wnid_labels(_lists(root, "imagenet")),
                       200, root)


def _imglist_datasets(loaders: Any) -> List[Any]:
    """The OpenOOD ``ImglistDataset`` s (``imglist`` lines and ``data_dir``) behind a dict of ID loaders."""
    values = loaders.values() if isinstance(loaders, Mapping) else ()
    datasets = [getattr(loader, "dataset", None) for loader in values]
    return [d for d in datasets if isinstance(getattr(d, "imglist", None), list) and getattr(d, "data_dir", None)]


def class_map_from_loaders(id_loaders: Any, classes: int, diffusion_classes: int,
                           id_name: Optional[str] = None) -> Optional[Tuple[List[int], str]]:
    """The class map of an ID set whose classes are ImageNet-1K classes, and where it came from; None when the
    loaders are not OpenOOD image lists that name WordNet ids (then nothing can be derived).

    The ID classes' WordNet ids come from the ID loaders' image lists (``imagenet_1k/train/n01443537/...``; when
    their paths name none, from ``benchmark_imglist/<id_name>/`` of the data root), ImageNet-1K's ids from the data
    root's ``benchmark_imglist/imagenet/`` lists. The data root is the folder above the loaders' ``data_dir``
    (``<data_root>/images_largescale/``), as OpenOOD's Evaluator and pipelines lay it out.
    """
    datasets = _imglist_datasets(id_loaders)
    if not datasets:
        return None
    root = os.path.dirname(os.path.normpath(datasets[0].data_dir))
    sub: Dict[str, int] = {}
    for d in datasets:
        for wnid, label in wnid_labels(d.imglist, getattr(d, "name", "ID image list")).items():
            if sub.setdefault(wnid, label) != label:
                raise ConfigError(f"the ID image lists give {wnid} the labels {label} and {sub[wnid]}")
    where = "the ID loaders' image lists"
    if not sub and id_name and os.path.isdir(os.path.join(root, "benchmark_imglist", id_name)):
        sub, where = imglist_wnid_labels(_lists(root, id_name)), os.path.join(root, "benchmark_imglist", id_name)
    if not sub:
        return None
    if diffusion_classes != IMAGENET_CLASSES:
        raise ConfigError(f"the ID classes are ImageNet classes (WordNet ids in {where}) but the diffusion model has "
                          f"{diffusion_classes} classes, not ImageNet-1K's {IMAGENET_CLASSES}: use an ImageNet-1K "
                          "model (DiT-XL/2, cin256-v2) or give class_map in postprocessor_args")
    full_lists = _lists(root, "imagenet")
    cmap = map_classes(sub, imglist_wnid_labels(full_lists), classes, os.path.dirname(full_lists[0]))
    return cmap, f"WordNet ids of {where} -> ImageNet-1K ids of {os.path.dirname(full_lists[0])}"
