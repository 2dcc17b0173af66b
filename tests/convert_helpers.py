"""Shared pieces of the conversion tests: writing configs, running the CLI, relative errors, and the comparison of
engine scores with the official loop."""
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TinyNet
from openood_diffood import DiffOOD, cli
from openood_diffood.method.noise import content_keys, sample_noise
from reference_nets.official_loop import official_scores

#: The package's settings of the comparisons with the official loop (the official loop's stride: 1000 // 50).
LOOP = dict(timestep=100, stride=20, guidance=3.0, repeats=2)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest on one thread (and a loaded machine's thread contention cannot slow them)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_yaml(path: Path, mapping) -> str:
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def convert(*args) -> int:
    """``python -m openood_diffood convert ARGS`` in-process; its exit status."""
    return cli.main(["convert", *map(str, args)])


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def classifier(seed=1) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet().eval()


def engine_and_official_scores(model_dir, images01, eps_model, abar, null, conditional=True, encode=None,
                               decode=None, protocol="package", **settings):
    """(engine scores of ``model_dir``, the official loop's scores with the same noise), both under ``protocol``
    (package: the loop with the package's two differences switched off); ``settings`` override :data:`LOOP`."""
    net = classifier()
    loop = {**LOOP, **settings}
    engine = DiffOOD(net, str(model_dir), protocol=protocol, **loop)
    norm = engine.settings.normalization
    x = norm.normalize(images01)
    keys = content_keys(images01)
    latent_shape = tuple((encode or (lambda v: v))(images01[:1] * 2 - 1).shape[1:])
    eps = sample_noise(keys, engine.settings.seed, loop["repeats"], latent_shape, torch.device("cpu"))
    ours = engine.score(x, keys=keys).score
    theirs = official_scores(net, eps_model, images01, norm.normalize, [eps[:, r] for r in range(loop["repeats"])],
                             loop["timestep"], loop["stride"], loop["guidance"], abar, null, conditional=conditional,
                             official=protocol == "official", encode=encode, decode=decode)
    return ours, theirs
