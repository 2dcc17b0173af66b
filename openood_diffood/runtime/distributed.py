"""``torchrun --nproc-per-node N``: each rank scores a disjoint part of the data and every rank gets all results
back in single-process order (OpenOOD's evaluator expects whole-set arrays); scores match a single process since
each image's noise depends only on the seed and the image. An in-order ``DataLoader`` over a map-style dataset is
re-batched per rank over a contiguous index range; any other iterable goes batch i to rank i mod N."""
from __future__ import annotations

import os
from typing import Any, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, SequentialSampler, Subset
from tqdm import tqdm

from ..errors import ConfigError
from .engine import DiffOOD, DiffOODOutput

T = TypeVar("T")


def rank_and_world() -> Tuple[int, int]:
    """(rank, world size) of the initialized process group, or (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_from_env() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1) if not done yet; True when distributed.
    Uses NCCL and this rank's GPU (``LOCAL_RANK``) when CUDA is available, gloo otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return False
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return True


def local_device() -> Optional[torch.device]:
    """This rank's GPU under torchrun with CUDA, else None (keep the classifier's device)."""
    if rank_and_world()[1] > 1 and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return None


def shard_range(n: int, rank: int, world: int) -> range:
    """Rank's contiguous share of ``range(n)``: sizes differ by at most one, no index twice, none left out."""
    return range(n * rank // world, n * (rank + 1) // world)


def _reloadable(loader: Any) -> bool:
    return (isinstance(loader, DataLoader) and not isinstance(loader.dataset, IterableDataset)
            and isinstance(loader.sampler, SequentialSampler))


def shard_batches(loader: Any, rank: int, world: int, batch_size: Optional[int] = None
                  ) -> Tuple[Iterator[Tuple[int, Any]], Optional[int]]:
    """(iterator of (order, batch) for this rank, number of its batches or None).
    ``order`` sorts the batches of all ranks into the single-process order. A re-batchable ``DataLoader`` (see
    the module docstring) yields batches of ``batch_size`` (default: the loader's) over this rank's indices."""
    if _reloadable(loader):
        indices = shard_range(len(loader.dataset), rank, world)
        size = batch_size or loader.batch_size or 1
        kwargs = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory)
        if loader.num_workers:
            kwargs.update(prefetch_factor=loader.prefetch_factor, worker_init_fn=loader.worker_init_fn)
        part = DataLoader(Subset(loader.dataset, indices), batch_size=size, shuffle=False, **kwargs)
        batches = ((indices.start + i * size, batch) for i, batch in enumerate(part))
        return batches, len(part)
    total = len(loader) if hasattr(loader, "__len__") else None
    mine = None if total is None else len(range(rank, total, world))
    return ((i, batch) for i, batch in enumerate(loader) if i % world == rank), mine


def gather_ordered(parts: List[Tuple[int, T]]) -> List[T]:
    """Every rank's (order, item) pairs, on every rank, sorted by order (a no-op in a single process)."""
    if rank_and_world()[1] > 1:
        gathered: List[Optional[List[Tuple[int, T]]]] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, parts)
        parts = [p for rank_parts in gathered for p in rank_parts]
    return [item for _, item in sorted(parts, key=lambda p: p[0])]


def score_loader(engine: DiffOOD, loader: Any, progress: bool = True) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, predictions, labels) over a loader of OpenOOD-style batches (dicts with ``data`` and ``label``),
    sharded over the process group's ranks (finished batches stay in the engine's score cache, if it has one)."""
    rank, world = rank_and_world()
    size = engine.micro_batch_size(_first_images(loader)) if _reloadable(loader) else None
    batches, total = shard_batches(loader, rank, world, size)
    parts = []
    for order, batch in tqdm(batches, total=total, desc="DiffOOD", disable=not progress or rank != 0):
        out = engine.score(torch.as_tensor(batch["data"]))
        parts.append((order, (out.score.numpy(), out.pred.numpy(), np.asarray(batch["label"]))))
    parts = gather_ordered(parts)
    if not parts:
        raise ConfigError("empty data loader: there are no images to score")
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _first_images(loader: DataLoader) -> torch.Tensor:
    """A one-image batch of a map-style loader (sizes ``batch_size="auto"`` before the loader is re-batched)."""
    if len(loader.dataset) == 0:
        raise ConfigError("empty data loader: there are no images to score")
    return torch.as_tensor(loader.collate_fn([loader.dataset[0]])["data"])


def sharded_score(engine: DiffOOD, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                  keys: Optional[Sequence[Any]] = None) -> DiffOODOutput:
    """``engine.score`` with the images split over the ranks and the results gathered on every rank."""
    rank, world = rank_and_world()
    part = shard_range(x.shape[0], rank, world)
    sl = slice(part.start, part.stop)
    if len(part):
        out = engine.score(x[sl], None if labels is None else labels[sl], None if keys is None else list(keys)[sl])
    else:  # more ranks than images
        out = DiffOODOutput(torch.empty(0), torch.empty(0, dtype=torch.long))
    scores, preds = zip(*gather_ordered([(rank, (out.score, out.pred))]))
    return DiffOODOutput(torch.cat(scores), torch.cat(preds))
