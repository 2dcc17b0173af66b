"""``convert --from ddim``: an independent DDIM ``Model`` (network/ddim/ddim.py names and layout), saved as the
official EMA state dict and converted, predicts the same noise in diffusers for every class and the null class, and
DiffOOD with it scores as the official loop does; unconditional checkpoints and mismatched configs too."""
import warnings

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from convert_helpers import convert, engine_and_official_scores, one_thread, relative_error, write_yaml  # noqa: F401
from openood_diffood import DiffOOD, DiffOODSettings
from openood_diffood.config import ConfigError
from openood_diffood.hashing import file_sha256
from openood_diffood.models.diffusion import PixelUNetBackend
from openood_diffood.models.loading import load_diffusion
from reference_nets import random_weights
from reference_nets.ddpm import DDIMModel
from reference_nets.official_loop import official_alphas_cumprod

ARCH = dict(image_size=8, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2], num_res_blocks=2, attn_resolutions=[4])
TIMESTEPS = (0, 500, 999)


def official_config(num_classes=3, **changes):
    model = {"struc": "DDIM", "type": "simple", "num_classes": num_classes, "dropout": 0.1, "var_type": "fixedlarge",
             "resamp_with_conv": True, **ARCH, **changes}
    return {"Model": model, "Schedule": {"type": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                                         "diffusion_step": 1000}}


def write_checkpoint(root, num_classes):
    net = random_weights(DDIMModel(**{k: v for k, v in ARCH.items()}, num_classes=num_classes), seed=num_classes)
    torch.save(net.state_dict(), root / "ddim.ckpt")  # the official EMA checkpoints are plain state dicts
    return net, root / "ddim.ckpt", write_yaml(root / "ddim.yml", official_config(num_classes))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddim")
    net, ckpt, config = write_checkpoint(root, num_classes=3)
    assert convert("--from", "ddim", ckpt, root / "out", "--config", config) == 0
    return net, ckpt, root / "out"


@torch.no_grad()
def test_same_noise_prediction_for_every_class_and_the_null_class(converted):
    net, _, out = converted
    unet = UNet2DModel.from_pretrained(out / "unet")  # diffusers alone
    backend = load_diffusion(out)
    assert isinstance(backend, PixelUNetBackend) and (backend.num_classes, backend.null_class) == (3, 3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in TIMESTEPS:
        steps = torch.full((2,), t)
        for label in range(4):
            y = torch.full((2,), label)
            want = net(x, steps, y)
            assert relative_error(want, unet(x, steps, class_labels=y).sample) < 1e-5
            assert relative_error(want, backend.network(x, steps, y)) < 1e-5


def test_scheduler_has_the_configs_betas(converted):
    _, _, out = converted
    scheduler = DDPMScheduler.from_pretrained(out / "scheduler")
    assert scheduler.config.beta_schedule == "linear" and scheduler.config.prediction_type == "epsilon"
    torch.testing.assert_close(scheduler.alphas_cumprod, official_alphas_cumprod("linear"), rtol=1e-6, atol=0)


def test_scores_equal_the_official_loop(converted):
    net, _, out = converted
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    ours, theirs = engine_and_official_scores(out, images, lambda x, t, y: net(x, t, y),
                                              official_alphas_cumprod("linear"), null=3)
    assert ours.abs().min() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_protocol_official_equals_the_official_loop_exactly_as_released(converted):
    """Label t - 1 for noise level t and per-repeat references noised to abar_0; t = 90 is no multiple of the
    stride (both visit the noise levels 90, 70, ..., 10, then 0)."""
    net, _, out = converted
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    eps_model = lambda x, t, y: net(x, t, y)
    abar = official_alphas_cumprod("linear")
    ours, theirs = engine_and_official_scores(out, images, eps_model, abar, null=3, protocol="official", timestep=90)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    package, _ = engine_and_official_scores(out, images, eps_model, abar, null=3, timestep=90)
    assert (package - ours).abs().max() > 1e-3  # the two protocols differ


def test_protocol_is_checked():
    assert DiffOODSettings().protocol == "package"
    with pytest.raises(ConfigError, match="protocol must be one of package, official"):
        DiffOODSettings(protocol="released")


def test_model_card_records_source_hash_format_and_settings(converted):
    _, ckpt, out = converted
    card = (out / "README.md").read_text()
    assert file_sha256(ckpt) in card and "`ddim`" in card and "network/ddim/ddim.py" in card
    assert "ch_mult: [1, 2, 2]" in card and "beta_end: 0.02" in card and "max_timestep" not in card


def test_unconditional_checkpoint_runs_and_guidance_has_no_effect(tmp_path):
    net, ckpt, config = write_checkpoint(tmp_path, num_classes=0)
    assert convert("--from", "ddim", ckpt, tmp_path / "out", "--config", config) == 0
    unet = UNet2DModel.from_pretrained(tmp_path / "out" / "unet")
    assert unet.config.num_class_embeds is None
    x, steps = torch.randn(2, 3, 8, 8), torch.tensor([0, 999])
    with torch.no_grad():
        assert relative_error(net(x, steps), unet(x, steps).sample) < 1e-5
    images = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, theirs = engine_and_official_scores(tmp_path / "out", images, lambda x, t, y: net(x, t),
                                                  official_alphas_cumprod("linear"), null=None, conditional=False)
    said = [w for w in caught if "unconditional" in str(w.message)]
    assert len(said) == 1 and "guidance has no effect" in str(said[0].message)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    engine = DiffOOD(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)), str(tmp_path / "out"),
                     timestep=100, stride=20, repeats=1, guidance=1.0)
    x = engine.settings.normalization.normalize(images)
    torch.testing.assert_close(engine.score(x).score, engine.replace(guidance=5.0).score(x).score)


def test_diffusers_own_ddpm_pipeline_layout_loads_unconditional(tmp_path):
    """google/ddpm-cifar10-32's layout: DDPMPipeline.save_pretrained (model_index.json, unet/, scheduler/)."""
    net, ckpt, config = write_checkpoint(tmp_path, num_classes=0)
    assert convert("--from", "ddim", ckpt, tmp_path / "converted", "--config", config) == 0
    unet = UNet2DModel.from_pretrained(tmp_path / "converted" / "unet")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(tmp_path / "converted" / "scheduler")
                 ).save_pretrained(tmp_path / "pipeline")
    backend = load_diffusion(tmp_path / "pipeline")
    assert isinstance(backend, PixelUNetBackend) and not backend.conditional
    with pytest.warns(UserWarning, match="unconditional: guidance has no effect"):
        DiffOOD(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3)), backend, timestep=100, stride=20)


def test_built_in_architecture_is_the_released_one(tmp_path, capsys):
    _, ckpt, _ = write_checkpoint(tmp_path, num_classes=3)
    assert convert("--from", "ddim", ckpt, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "released checkpoints' architecture" in err and "ch 128" in err
    assert "'temb.dense.0.weight' has shape (128, 32)" in err and "needs (512, 128)" in err


@pytest.mark.parametrize("changes, message", [
    (dict(num_res_blocks=1), "checkpoint key 'down.0.block.1.norm1.weight' of shape (32,) has no place"),
    (dict(ch_mult=[1, 2, 4]), "'down.2.block.0.conv1.weight' has shape (64, 64, 3, 3), but the DDIM Model"),
    (dict(attn_resolutions=[4, 2]), "no weights for diffusers' 'down_blocks.2.attentions.0.group_norm.weight'"),
    (dict(num_classes=0), "'label_emb.weight' of shape (4, 128) has no place"),
    (dict(struc="iDDPM"), "describes a iDDPM network (Model.struc), not DDIM: use --from iddpm"),
])
def test_config_that_does_not_describe_the_checkpoint_is_one_clear_error(tmp_path, capsys, changes, message):
    _, ckpt, _ = write_checkpoint(tmp_path, num_classes=3)
    config = write_yaml(tmp_path / "bad.yml", official_config(**{"num_classes": 3, **changes}))
    assert convert("--from", "ddim", ckpt, tmp_path / "out", "--config", config) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_bad_paths_are_errors_before_any_work(tmp_path, capsys, converted):
    _, ckpt, out = converted
    assert convert("--from", "ddim", tmp_path / "none.ckpt", tmp_path / "o") == 2
    assert "does not exist" in capsys.readouterr().err
    assert convert("--from", "ddim", ckpt, tmp_path / "o", "--config", tmp_path / "none.yml") == 2
    assert "config" in capsys.readouterr().err
    assert convert("--from", "ddim", ckpt, out) == 2
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    assert convert("--from", "ddim", tmp_path / "text.ckpt", tmp_path / "o") == 2
    assert "not a torch checkpoint" in capsys.readouterr().err


def official_layout(dataset: str, num_classes: int) -> dict:
    """The sections of the official config/ddim_<dataset>_cond.yml (CIFAR-10 and CIFAR-100 differ only in the
    dataset's name and num_classes), with this test's small Model architecture."""
    config = official_config(num_classes)
    config["Dataset"] = {"name": dataset, "image_size": ARCH["image_size"], "num_classes": num_classes, "channels": 3,
                         "rescaled": True, "random_flip": True}
    config["Train"] = {"num_classes": num_classes, "cond_ratio": 0.9, "ema_rate": 0.9999, "ema": True}
    return config


@torch.no_grad()
def test_official_cifar100_layout_converts_100_classes_and_the_null_class(tmp_path, capsys):
    """config/ddim_cifar100_cond.yml's layout: label_emb of 101 rows, the null class 100; a CIFAR-10 config for
    the CIFAR-100 checkpoint is one clear error."""
    net, ckpt, _ = write_checkpoint(tmp_path, num_classes=100)
    config = write_yaml(tmp_path / "ddim_cifar100_cond.yml", official_layout("CIFAR100", 100))
    assert convert("--from", "ddim", ckpt, tmp_path / "out", "--config", config) == 0
    unet = UNet2DModel.from_pretrained(tmp_path / "out" / "unet")
    backend = load_diffusion(tmp_path / "out")
    assert unet.config.num_class_embeds == 101 and (backend.num_classes, backend.null_class) == (100, 100)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    steps, y = torch.tensor([0, 300, 600, 999]), torch.tensor([0, 57, 99, 100])
    want = net(x, steps, y)
    assert relative_error(want, unet(x, steps, class_labels=y).sample) < 1e-5
    assert relative_error(want, backend.network(x, steps, y)) < 1e-5
    assert "num_classes: 100" in (tmp_path / "out" / "README.md").read_text()
    cifar10 = write_yaml(tmp_path / "ddim_cifar10_cond.yml", official_layout("CIFAR10", 10))
    assert convert("--from", "ddim", ckpt, tmp_path / "wrong", "--config", cifar10) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "label_emb" in err and "(101, 128)" in err and "(11, 128)" in err
    assert not (tmp_path / "wrong").exists()
