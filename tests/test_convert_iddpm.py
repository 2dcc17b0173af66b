"""``convert --from iddpm``: an independent improved-diffusion ``UNetModel`` (network/iddpm/unet.py names: fused
multi-head qkv, scale-shift norm, 6 output channels, label_emb with the null class last), converted, predicts the
same noise (the epsilon half of the learned-variance output) and DiffOOD scores with it as the official loop does."""
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from convert_helpers import convert, engine_and_official_scores, one_thread, relative_error, write_yaml  # noqa: F401
from openood_diffood.models.diffusion import PixelUNetBackend
from openood_diffood.models.loading import load_diffusion
from reference_nets import random_weights
from reference_nets.official_loop import official_alphas_cumprod
from reference_nets.openai import UNetModel

ARCH = dict(in_channels=3, model_channels=32, out_channels=6, num_res_blocks=2, attention_resolutions=[2],
            channel_mult=[1, 2, 2], num_heads=2, num_heads_upsample=2, use_scale_shift_norm=True)


def official_config(**changes):
    model = {"struc": "iDDPM", "image_size": 8, "num_classes": 3, "dropout": 0.3, "dims": 2, "conv_resample": True,
             "use_checkpoint": False, **ARCH, **changes}
    return {"Model": model, "Schedule": {"type": "cosine", "diffusion_step": 1000, "learn_sigma": True,
                                         "noise_schedule": "cosine", "rescale_timesteps": True}}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("iddpm")
    net = random_weights(UNetModel(**ARCH, num_classes=3, learned_sigma=True), seed=7)
    torch.save(net.state_dict(), root / "iddpm.ckpt")
    config = write_yaml(root / "iddpm.yml", official_config())
    assert convert("--from", "iddpm", root / "iddpm.ckpt", root / "out", "--config", config) == 0
    return net, root


@torch.no_grad()
def test_same_noise_prediction_for_every_class_and_the_null_class(converted):
    net, root = converted
    unet = UNet2DModel.from_pretrained(root / "out" / "unet")
    assert unet.config.out_channels == 6 and unet.config.attention_head_dim == 32
    backend = load_diffusion(root / "out")
    assert isinstance(backend, PixelUNetBackend) and (backend.num_classes, backend.null_class) == (3, 3)
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (0, 500, 999):
        steps = torch.full((2,), t)
        for label in range(4):
            y = torch.full((2,), label)
            want = net(x, steps, y)                     # the official forward returns the epsilon half
            full = unet(x, steps, class_labels=y).sample
            assert full.shape[1] == 6 and relative_error(want, full[:, :3]) < 1e-5
            assert relative_error(want, backend.network(x, steps, y)) < 1e-5


def test_cosine_schedule_is_the_officials(converted):
    scheduler = DDPMScheduler.from_pretrained(converted[1] / "out" / "scheduler")
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2" and scheduler.config.variance_type == "learned_range"
    torch.testing.assert_close(scheduler.alphas_cumprod, official_alphas_cumprod("cosine"), rtol=1e-6, atol=0)


def test_scores_equal_the_official_loop(converted):
    net, root = converted
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    ours, theirs = engine_and_official_scores(root / "out", images, lambda x, t, y: net(x, t, y),
                                              official_alphas_cumprod("cosine"), null=3)
    assert ours.abs().min() > 0
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("changes, message", [
    (dict(num_heads_upsample=1), "head sizes [32.0, 64.0]"),
    (dict(use_scale_shift_norm=False), "'input_blocks.1.0.emb_layers.1.weight' has shape (64, 128)"),
    (dict(num_res_blocks=3), "checkpoint key 'input_blocks.3.0.op.weight' of shape (32, 32, 3, 3) has no place"),
    (dict(channel_mult=[1, 2]), "'input_blocks.6.0.op.weight' of shape (64, 64, 3, 3) has no place"),
])
def test_config_that_does_not_describe_the_checkpoint_is_one_clear_error(converted, capsys, tmp_path, changes,
                                                                        message):
    config = write_yaml(tmp_path / "bad.yml", official_config(**changes))
    assert convert("--from", "iddpm", converted[1] / "iddpm.ckpt", tmp_path / "out", "--config", config) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@torch.no_grad()
def test_the_per_head_qkv_split_matters(converted, tmp_path):
    """With one head the fused qkv splits into contiguous thirds; this network has two heads, each holding its own
    [q, k, v]: a conversion that split it the one-head way would predict other noise, and the test above sees it."""
    net, root = converted
    config = write_yaml(tmp_path / "one_head.yml", official_config(num_heads=1, num_heads_upsample=1))
    assert convert("--from", "iddpm", root / "iddpm.ckpt", tmp_path / "out", "--config", config) == 0
    unet = UNet2DModel.from_pretrained(tmp_path / "out" / "unet")
    x, steps, y = torch.randn(2, 3, 8, 8), torch.tensor([10, 700]), torch.tensor([0, 3])
    assert relative_error(net(x, steps, y), unet(x, steps, class_labels=y).sample[:, :3]) > 1e-2
