"""Load a set of images as uint8 NHWC from a *spec*: an ``.npz`` (``images``, optional ``labels``, ``classes``),
an image folder (ImageFolder layout, or flat without labels), or an OpenOOD image list ``list.txt[::image_root]``
(without a root, looked for under the data root holding ``benchmark_imglist``). ``size`` resizes as OpenOOD's test
transform does (``Resize`` then ``CenterCrop``)."""
from __future__ import annotations

import hashlib
import os
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..errors import ConfigError, MissingFileError
from ..hashing import file_sha256

_SEP = "::"

Images = Tuple[np.ndarray, Optional[np.ndarray], List[str]]


def load_images(spec: str, size: Optional[int] = None) -> Images:
    """(images uint8 N x H x W x C, labels int64 or None when the source has none, class names) of a spec.
    ``size``: resize every image to ``size`` x ``size``. Without it, images of different sizes are an error."""
    path = spec.split(_SEP, 1)[0]
    if not os.path.exists(path):
        raise MissingFileError(f"image source {path!r} does not exist: give an .npz file, an image folder or an "
                               "OpenOOD image list (.txt)")
    if os.path.isdir(path):
        files, labels, classes = _folder_files(path)
        images = _read_files(files, size, source=path)
    elif path.endswith(".npz"):
        images, labels, classes = _read_npz(path, size)
    elif path.endswith(".txt"):
        files, labels = _imglist_files(spec)
        images, classes = _read_files(files, size, source=path), []
    else:
        raise ConfigError(f"unsupported image source {path!r}: expected an .npz file, an image folder or an OpenOOD "
                          "image list (.txt)")
    if labels is not None:
        _check_labels(labels, len(images), classes, path)
    return images, labels, classes


def source_identity(spec: str) -> Dict[str, str]:
    """What identifies a source on disk: its kind, path and a sha256 (of the .npz file, or of the sorted list of
    image files with their sizes for folders and image lists)."""
    path = spec.split(_SEP, 1)[0]
    if os.path.isfile(path) and path.endswith(".npz"):
        return {"kind": "npz", "path": os.path.abspath(path), "sha256": file_sha256(path)}
    files = _folder_files(path)[0] if os.path.isdir(path) else _imglist_files(spec)[0]
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{os.path.relpath(f, path if os.path.isdir(path) else os.path.dirname(f))}\0"
                 f"{os.path.getsize(f)}\n".encode())
    kind = "folder" if os.path.isdir(path) else "imglist"
    return {"kind": kind, "path": os.path.abspath(path), "file_list_sha256": h.hexdigest()}


def _check_labels(labels: np.ndarray, n: int, classes: Sequence[str], path: str) -> None:
    if labels.shape != (n,):
        raise ConfigError(f"{path!r}: labels have shape {labels.shape} but there are {n} images; give one label per "
                          "image")
    if labels.min() < -1:
        raise ConfigError(f"{path!r}: label {int(labels.min())} is negative (only -1, 'no class', is allowed)")
    if classes and labels.max() >= len(classes):
        raise ConfigError(f"{path!r}: label {int(labels.max())} is out of range for its {len(classes)} classes "
                          f"(0..{len(classes) - 1}); fix the labels or the `classes` list")


def _read_npz(path: str, size: Optional[int]) -> Images:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f.files:
                raise ConfigError(f"{path!r} has no 'images' array (it has {sorted(f.files)}); save the images as "
                                  "np.savez(path, images=uint8 N x H x W x C, labels=...)")
            images = f["images"]
            labels = f["labels"].astype(np.int64) if "labels" in f.files else None
            classes = [str(c) for c in f["classes"]] if "classes" in f.files else []
    except (zipfile.BadZipFile, OSError) as exc:
        raise ConfigError(f"{path!r} is not a readable .npz archive ({exc}); write it with np.savez") from None
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise ConfigError(f"{path!r} holds object arrays (pickled Python objects), which are never loaded; save "
                          "plain arrays: images uint8 N x H x W x C, labels int, classes str") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise ConfigError(f"{path!r}: 'images' must be uint8 N x H x W x C with C = 1 or 3, got {images.dtype} "
                          f"{images.shape}")
    if len(images) == 0:
        raise ConfigError(f"{path!r} holds no images (its 'images' array is empty); pass a set with images")
    if size is not None and images.shape[1:3] != (size, size):
        from PIL import Image

        images = _stack([_to_size(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im), size)
                         for im in images], path)
    if labels is not None and not classes:
        classes = [str(c) for c in range(int(labels.max()) + 1)]
    return images, labels, classes


def _folder_files(path: str) -> Tuple[List[str], Optional[np.ndarray], List[str]]:
    """(files, labels, classes) of an ImageFolder (labels = sorted sub-folder index) or a flat folder."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    with os.scandir(path) as entries:  # closed even when any() stops at the first class folder
        flat = not any(d.is_dir() and not d.name.startswith(".") for d in entries)
    if flat:
        files = sorted(os.path.join(path, n) for n in os.listdir(path) if has_file_allowed_extension(n, IMG_EXTENSIONS))
        return _nonempty(files, path), None, []
    try:
        folder = ImageFolder(path, loader=str, allow_empty=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"image folder {path!r}: {exc}") from None
    files = _nonempty([f for f, _ in folder.samples], path)
    return files, np.asarray(folder.targets, dtype=np.int64), list(folder.classes)


def _nonempty(files: List[str], source: str) -> List[str]:
    if not files:
        raise ConfigError(f"image source {source!r} holds no images (.png, .jpg, ...); point it at a folder of images")
    return files


def _imglist_files(spec: str) -> Tuple[List[str], Optional[np.ndarray]]:
    """(files, labels) of an OpenOOD image list; labels None when its lines carry none."""
    listfile, _, root = spec.partition(_SEP)
    with open(listfile) as f:
        rows = [line.strip().split(" ", 1) for line in f if line.strip()]
    if not rows:
        raise ConfigError(f"image list {listfile!r} is empty; it needs one 'relative/path label' line per image")
    root = root or _imglist_root(listfile, rows[0][0])
    files = [os.path.join(root, r[0]) for r in rows]
    if not all(len(r) == 2 for r in rows):
        return files, None
    try:
        labels = np.asarray([int(r[1].split()[0]) for r in rows], dtype=np.int64)
    except ValueError:
        raise ConfigError(f"image list {listfile!r}: expected 'path label' lines with an integer label") from None
    return files, labels


def _imglist_root(listfile: str, first: str) -> str:
    """The folder an OpenOOD image list's paths are relative to, found from the first listed image."""
    parts = os.path.abspath(listfile).split(os.sep)
    data_root = os.sep.join(parts[:parts.index("benchmark_imglist")]) if "benchmark_imglist" in parts \
        else os.path.dirname(os.path.abspath(listfile))
    candidates = [os.path.join(data_root, d) for d in ("images_classic", "images_largescale")] + [data_root]
    for c in candidates:
        if os.path.isfile(os.path.join(c, first)):
            return c
    raise MissingFileError(f"image list {listfile!r}: its first image {first!r} is not under any of {candidates}; "
                           f"give the image folder as {listfile}{_SEP}<image root>")


def _to_size(img, size: int) -> np.ndarray:
    """torchvision's ``Resize(size)`` (shorter side, bilinear) then ``CenterCrop(size)``."""
    from torchvision.transforms import functional as TF

    return np.asarray(TF.center_crop(TF.resize(img, size), size))


def _read_files(files: Sequence[str], size: Optional[int], source: str) -> np.ndarray:
    """Decode image files to one uint8 N x H x W x C array (grey when every file is grey, else RGB)."""
    from PIL import Image

    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise MissingFileError(f"{len(missing)} images listed by {source!r} are missing, e.g. {missing[0]!r}")
    arrays = []
    for f in tqdm(files, desc=f"reading {os.path.basename(source)}", leave=False, disable=len(files) < 1000):
        with Image.open(f) as im:
            im = im.convert("L" if im.mode in ("L", "1", "I;16") else "RGB")
            arrays.append(np.asarray(im) if size is None else _to_size(im, size))
    return _stack(arrays, source, files)


def _stack(arrays: List[np.ndarray], source: str, files: Optional[Sequence[str]] = None) -> np.ndarray:
    """One N x H x W x C array from grey (H x W) and RGB (H x W x 3) images (grey ones are made RGB if any is)."""
    sizes = {a.shape[:2]: i for i, a in enumerate(arrays)}
    if len(sizes) > 1:
        names = files or [f"image {i}" for i in range(len(arrays))]
        examples = ", ".join(f"{names[i]} is {h}x{w}" for (h, w), i in list(sizes.items())[:2])
        raise ConfigError(f"images of {source!r} have mixed sizes ({examples}); resize them to one size first "
                          "(eval --image-size N)")
    if all(a.ndim == 2 for a in arrays):
        return np.stack(arrays)[..., None]
    return np.stack([np.repeat(a[..., None], 3, -1) if a.ndim == 2 else a for a in arrays])
