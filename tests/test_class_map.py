"""The class map found, not typed: the postprocessor's setup derives ImageNet-200 -> ImageNet-1K ids from the ID loaders
OpenOOD hands it (its ImglistDataset over a data root in OpenOOD's layout); a configured map wins; and bad input
(a class that cannot be mapped, a missing list, a map of the wrong length, too few diffusion classes, a 32 px
model on 224 px crops without resize) is one clear error in setup, before any scoring."""
import shutil
from types import SimpleNamespace

import pytest
import torch

from conftest import DictDataset, imagenet_images, write_openood_data_root, write_tiny_diffusion, write_tiny_dit
from convert_helpers import one_thread  # noqa: F401  (an autouse fixture)
from openood_diffood.config import ConfigError
from openood_diffood.openood.compat import require_openood
from openood_diffood.openood.imagenet import class_map_from_loaders
from openood_diffood.openood.registry import postprocessor_from_config
from test_imagenet_benchmarks import EXPECTED_MAP, imagenet_lists, imagenet_path, wnid
from test_latent import TinyImageNet

CHEAP = {"timestep": 20, "stride": 20, "repeats": 1, "guidance": 3.0}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """An OpenOOD data root with both ImageNet benchmarks' lists and a tiny 1000-class DiT."""
    root = tmp_path_factory.mktemp("inet")
    for benchmark in ("imagenet200", "imagenet"):
        write_openood_data_root(root / "data", 1, id_data=benchmark, images=imagenet_lists, path_of=imagenet_path)
    write_tiny_dit(root / "dit", classes=1000)
    return root


def id_loaders(data_root):
    """OpenOOD's ID loaders for ImageNet-200, as its Evaluator builds them (ImglistDataset, default preprocessing)."""
    datasets = require_openood("openood.evaluation_api.datasets")
    preprocessor = require_openood("openood.evaluation_api.preprocessor").get_default_preprocessor("imagenet200")
    loaders = {}
    for split, entry in datasets.DATA_INFO["imagenet200"]["id"].items():
        dataset = require_openood("openood.datasets.imglist_dataset").ImglistDataset(
            name=f"imagenet200_{split}", imglist_pth=str(data_root / entry["imglist_path"]),
            data_dir=str(data_root / entry["data_dir"]), num_classes=200, preprocessor=preprocessor,
            data_aux_preprocessor=preprocessor)
        loaders[split] = torch.utils.data.DataLoader(dataset, batch_size=2)
    return loaders


def postprocessor(diffusion, name="diffood_imagenet", **args):
    overrides = {f"postprocessor.postprocessor_args.{k}": v for k, v in {"diffusion": str(diffusion), **CHEAP,
                                                                         **args}.items()}
    return postprocessor_from_config(name, None, "imagenet200", overrides)


def test_setup_derives_the_imagenet200_map_from_openood_loaders_and_scores_with_it(root, capsys):
    net = TinyImageNet(200).eval()
    pp = postprocessor(root / "dit")
    loaders = id_loaders(root / "data")
    pp.setup(net, loaders, {})
    assert list(pp.settings.class_map) == EXPECTED_MAP and pp.engine.settings.class_map == pp.settings.class_map
    said = [line for line in capsys.readouterr().out.splitlines() if "class_map" in line]
    assert len(said) == 1 and "200 ID classes mapped to the diffusion model's 1000 classes" in said[0], said
    assert str(root / "data" / "benchmark_imglist" / "imagenet") in said[0]
    seen = []
    network = pp.engine.diffusion.denoiser.network
    pp.engine.diffusion.denoiser.network = lambda z, t, labels: seen.append(labels.clone()) or network(z, t, labels)
    pred, conf = pp.postprocess(net, next(iter(loaders["test"]))["data"])
    assert torch.isfinite(conf).all()
    assert seen[0][:len(pred)].tolist() == [5 * p + 3 for p in pred.tolist()]  # conditioned on the ImageNet-1K ids


def test_a_configured_class_map_wins(root, capsys):
    given = list(range(999, 799, -1))
    pp = postprocessor(root / "dit", class_map=given)
    pp.setup(TinyImageNet(200).eval(), id_loaders(root / "data"), {})
    assert list(pp.settings.class_map) == given and "class_map:" not in capsys.readouterr().out


def test_a_data_root_without_the_imagenet_1k_lists_is_one_error(root, tmp_path):
    data = tmp_path / "data"
    (data / "benchmark_imglist").mkdir(parents=True)
    shutil.copytree(root / "data" / "benchmark_imglist" / "imagenet200", data / "benchmark_imglist" / "imagenet200")
    (data / "images_largescale").symlink_to(root / "data" / "images_largescale")
    with pytest.raises(FileNotFoundError, match="no OpenOOD image list for imagenet under .*benchmark_imglist/imagenet"):
        postprocessor(root / "dit").setup(TinyImageNet(200).eval(), id_loaders(data), {})


def _loaders(lines, data_dir):
    return {"train": SimpleNamespace(dataset=SimpleNamespace(imglist=lines, data_dir=data_dir, name="train"))}


def test_a_class_that_cannot_be_mapped_is_named(root):
    data_dir = str(root / "data" / "images_largescale") + "/"
    lines = [f"imagenet_1k/train/{wnid(5 * i + 3)}/{wnid(5 * i + 3)}_0.JPEG {i}\n" for i in range(200)]
    cmap, source = class_map_from_loaders(_loaders(lines, data_dir), 200, 1000)
    assert cmap == EXPECTED_MAP and "ImageNet-1K ids of" in source
    no_wnid = lines[:7] + ["imagenet_1k/train/misc/img_7.JPEG 7\n"] + lines[8:]
    with pytest.raises(ValueError, match="ID class 7 cannot be mapped"):
        class_map_from_loaders(_loaders(no_wnid, data_dir), 200, 1000)
    foreign = lines[:3] + ["imagenet_21k/train/n99999999/n99999999_0.JPEG 3\n"] + lines[4:]
    with pytest.raises(ValueError, match=r"ID class 3 \(n99999999\) is not an ImageNet-1K class"):
        class_map_from_loaders(_loaders(foreign, data_dir), 200, 1000)
    with pytest.raises(ValueError, match="has 10 classes, not ImageNet-1K's 1000"):
        class_map_from_loaders(_loaders(lines, data_dir), 200, 10)
    assert class_map_from_loaders({"train": SimpleNamespace(dataset=DictDataset([], []))}, 200, 1000) is None


def test_bad_maps_and_models_are_one_error_in_setup(root, tmp_path):
    net, loaders = TinyImageNet(200).eval(), id_loaders(root / "data")
    with pytest.raises(ConfigError, match="class_map has 2 entries but the classifier has 200 classes"):
        postprocessor(root / "dit", class_map=[1, 2]).setup(net, loaders, {})
    with pytest.raises(ConfigError, match=r"class_map ids must lie in 0 \.\. 999"):
        postprocessor(root / "dit", class_map=[1000] * 200).setup(net, loaders, {})
    few = write_tiny_dit(tmp_path / "dit10", classes=10)
    with pytest.raises(ConfigError, match="200 classes but the diffusion model is conditioned on 10, fewer"):
        postprocessor(few).setup(net, loaders, {})
    cifar = write_tiny_diffusion(tmp_path / "cifar", num_classes=3, sample_size=32)
    val = {"val": torch.utils.data.DataLoader(DictDataset(imagenet_images(1), torch.zeros(1)))}
    pp = postprocessor(cifar, name="diffood")  # imagenet200 statistics, from the config's dataset
    with pytest.raises(ValueError, match="images are 224x224 but the diffusion model works at 32x32.* set resize"):
        pp.setup(TinyImageNet(3).eval(), val, {})
