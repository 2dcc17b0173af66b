"""Sharding over torch.distributed ranks (gloo, 2 CPU processes): the same scores as one process, in order."""
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from conftest import DictDataset, TinyNet
from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.runtime.distributed import gather_ordered, shard_batches, shard_range, score_loader, \
    sharded_score

SETTINGS = dict(timestep=100, stride=50, repeats=2, guidance=2.0)
N = 11


def _setup(model_dir):
    """The same classifier, engine and data in every process. Micro-batches of one image make each image's
    computation identical whatever the sharding, so scores can be compared bit for bit."""
    torch.set_num_threads(1)
    torch.manual_seed(1)
    net = TinyNet().eval()
    engine = DiffOOD(net, load_diffusion(model_dir), batch_size=1, **SETTINGS)
    g = torch.Generator().manual_seed(5)
    x = (torch.rand(N, 3, 8, 8, generator=g) - 0.45) / 0.25
    y = torch.arange(N) % 3
    loader = DataLoader(DictDataset(x, y), batch_size=4)
    batches = [{"data": x[i:i + 3], "label": y[i:i + 3]} for i in range(0, N, 3)]  # a plain iterable: 4 batches
    return engine, x, loader, batches


def _run_all(engine, x, loader, batches, cache_dir):
    out = {f"loader_{k}": v for k, v in zip(("score", "pred", "label"), score_loader(engine, loader, progress=False))}
    cached = score_loader(engine.replace(cache_dir=str(cache_dir)), batches, progress=False)
    out.update({f"batches_{k}": v for k, v in zip(("score", "pred", "label"), cached)})
    tensor = sharded_score(engine, x)
    out.update(tensor_score=tensor.score.numpy(), tensor_pred=tensor.pred.numpy())
    return out


def _worker(rank, world, init_file, model_dir, out_dir, cache_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        engine, x, loader, batches = _setup(model_dir)
        calls, network = [], engine.diffusion.network
        engine.diffusion.network = lambda z, t, labels: calls.append(z.shape[0]) or network(z, t, labels)
        out = _run_all(engine, x, loader, batches, cache_dir)
        np.savez(f"{out_dir}/rank{rank}.npz", calls=len(calls), **out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process(tmp_path, tiny_diffusion_dir):
    threads = torch.get_num_threads()
    try:
        engine, x, loader, batches = _setup(tiny_diffusion_dir)
        single = _run_all(engine, x, loader, batches, tmp_path / "single_cache")
    finally:
        torch.set_num_threads(threads)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tiny_diffusion_dir), str(tmp_path), str(tmp_path / "cache")),
             nprocs=2, join=True)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    for key, value in single.items():
        for r in ranks:  # every rank returns the whole set, in the single-process order
            np.testing.assert_array_equal(r[key], value, err_msg=key)
    np.testing.assert_array_equal(single["loader_label"], np.arange(N) % 3)
    # the work was split, not repeated: 3 runs x 11 images x 2 steps in all, shared about evenly
    counts = [int(r["calls"]) for r in ranks]
    assert sum(counts) == 3 * N * 2 and abs(counts[0] - counts[1]) <= 3 * 2 * 2

    # the units both ranks wrote are one cache: a single process now recomputes nothing
    engine, x, loader, batches = _setup(tiny_diffusion_dir)
    torch.set_num_threads(threads)
    calls, network = [], engine.diffusion.network
    engine.diffusion.network = lambda z, t, labels: calls.append(1) or network(z, t, labels)
    score, _, _ = score_loader(engine.replace(cache_dir=str(tmp_path / "cache")), batches, progress=False)
    assert calls == []
    np.testing.assert_array_equal(score, single["batches_score"])


@pytest.mark.parametrize("n", range(0, 12))
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_ranges_cover_everything_once(n, world):
    parts = [shard_range(n, r, world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_plain_iterables_are_split_by_batch_and_reordered():
    batches = [{"id": i} for i in range(7)]
    got = {r: shard_batches(batches, r, 3) for r in range(3)}
    assert [len(range(r, 7, 3)) for r in range(3)] == [got[r][1] for r in range(3)]
    parts = [(order, b["id"]) for r in range(3) for order, b in got[r][0]]
    assert sorted(b for _, b in parts) == list(range(7))
    assert gather_ordered(parts[::-1]) == list(range(7))


def test_map_style_loader_is_rebatched_over_a_contiguous_range(images):
    loader = DataLoader(DictDataset(images, torch.arange(8)), batch_size=3)
    for rank, expected in [(0, [[0, 1], [2, 3]]), (1, [[4, 5], [6, 7]])]:
        batches, total = shard_batches(loader, rank, 2, batch_size=2)
        got = [(order, b["label"].tolist()) for order, b in batches]
        assert total == 2 and got == [(e[0], e) for e in expected]
    shuffled = DataLoader(DictDataset(images, torch.arange(8)), batch_size=3, shuffle=True)
    batches, total = shard_batches(shuffled, 0, 1, batch_size=2)  # a sampler of its own: batches kept as given
    assert total == 3 and sorted(i for _, b in batches for i in b["label"].tolist()) == list(range(8))
