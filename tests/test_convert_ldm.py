"""``convert --from ldm``: an independent class-conditional LatentDiffusion (openai UNet with spatial transformers,
VQ first stage, ClassEmbedder), saved as a Lightning checkpoint with its pickled callback entries and converted:
the UNet predicts the same noise with the class token as context for every class and the null class, the VQ model
encodes without quantizing and decodes through the quantizer as LDM does, the latent backend applies the yaml's
scale_factor, and DiffOOD scores as the same loop written directly on the original network."""
import os

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel, VQModel
from safetensors.torch import load_file

from convert_helpers import convert, engine_and_official_scores, one_thread, relative_error, write_yaml  # noqa: F401
from openood_diffood.models.latent import ClassTokenUNet, VQLatentBackend
from openood_diffood.models.loading import load_diffusion
from reference_nets import random_weights
from reference_nets.ldm import (ClassEmbedder, LatentDiffusion, VQModelInterface, save_lightning_checkpoint,
                                scaled_linear_alphas_cumprod)
from reference_nets.openai import UNetModel

UNET = dict(in_channels=3, out_channels=3, model_channels=32, attention_resolutions=[1, 2], num_res_blocks=1,
            channel_mult=[1, 2], num_heads=1, transformer_depth=1, context_dim=16)
DDCONFIG = dict(double_z=False, z_channels=3, resolution=32, in_channels=3, out_ch=3, ch=32, ch_mult=[1, 2, 2],
                num_res_blocks=1, attn_resolutions=[], dropout=0.0)
SCALE = 0.7


def ldm_yaml(unet=None, **params):
    return {"model": {"target": "ldm.models.diffusion.ddpm.LatentDiffusion", "params": {
        "linear_start": 0.0015, "linear_end": 0.0195, "timesteps": 1000, "conditioning_key": "crossattn",
        "image_size": 8, "channels": 3, "cond_stage_trainable": True, "use_ema": False, "scale_factor": SCALE,
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
                        "params": {"image_size": 8, "use_spatial_transformer": True, **UNET, **(unet or {})}},
        "first_stage_config": {"target": "ldm.models.autoencoder.VQModelInterface",
                               "params": {"embed_dim": 3, "n_embed": 16, "ddconfig": DDCONFIG,
                                          "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.ClassEmbedder",
                              "params": {"n_classes": 4, "embed_dim": 16, "key": "class_label"}},
        **params}}}


def reference_ldm(seed=11, **kwargs):
    unet = UNetModel(**{k: v for k, v in UNET.items() if k != "attention_resolutions"},
                     attention_resolutions=UNET["attention_resolutions"], attention="transformer")
    vq = VQModelInterface(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=3, embed_dim=3, n_embed=16)
    return random_weights(LatentDiffusion(unet, vq, ClassEmbedder(embed_dim=16, n_classes=4), **kwargs), seed=seed)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    ldm = reference_ldm(scale_factor=SCALE)
    save_lightning_checkpoint(ldm, root / "model.ckpt")
    config = write_yaml(root / "cin.yaml", ldm_yaml())
    assert convert("--from", "ldm", root / "model.ckpt", root / "out", "--config", config) == 0
    return ldm, root


@torch.no_grad()
def test_same_noise_prediction_with_the_class_token_for_every_class_and_the_null_class(converted):
    ldm, root = converted
    unet = UNet2DConditionModel.from_pretrained(root / "out" / "unet")
    table = load_file(root / "out" / "class_embedder" / "diffusion_pytorch_model.safetensors")
    assert set(table) == {"embedding.weight"} and table["embedding.weight"].shape == (4, 16)
    backend = load_diffusion(root / "out")
    assert isinstance(backend, VQLatentBackend) and isinstance(backend.denoiser, ClassTokenUNet)
    assert (backend.num_classes, backend.null_class, backend.sample_size, backend.latent_size) == (3, 3, 32, 8)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in (0, 500, 999):
        steps = torch.full((2,), t)
        for label in range(4):
            y = torch.full((2,), label)
            want = ldm.apply_model(z, steps, y)
            context = table["embedding.weight"][y][:, None]      # diffusers alone: the token is a table row
            assert relative_error(want, unet(z, steps, encoder_hidden_states=context).sample) < 1e-5
            assert relative_error(want, backend.network(z, steps, y)) < 1e-5
    assert relative_error(ldm.apply_model(z, steps, torch.full((2,), 3)), backend.network(z, steps, None)) < 1e-5


@torch.no_grad()
def test_vq_encodes_without_quantizing_and_decodes_through_the_quantizer(converted):
    ldm, root = converted
    vq = VQModel.from_pretrained(root / "out" / "vqvae")
    assert vq.config.scaling_factor == SCALE
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    h = ldm.first_stage_model.encode(x)
    assert relative_error(h, vq.encode(x).latents) < 1e-5
    assert relative_error(ldm.first_stage_model.decode(h), vq.decode(h).sample) < 1e-5
    assert not torch.allclose(ldm.first_stage_model.quantize(h), h, atol=1e-3)  # quantizing does change h
    backend = load_diffusion(root / "out")
    assert relative_error(ldm.encode(x), backend.encode(x)) < 1e-5              # scale_factor * unquantized h
    assert relative_error(ldm.decode(ldm.encode(x)), backend.decode(backend.encode(x))) < 1e-5


def test_scheduler_is_ldms_linear_schedule(converted):
    scheduler = DDPMScheduler.from_pretrained(converted[1] / "out" / "scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear"
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), scaled_linear_alphas_cumprod(0.0015, 0.0195),
                               rtol=1e-5, atol=0)


def test_scores_equal_the_loop_on_the_original_network(converted):
    ldm, root = converted
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    abar = scaled_linear_alphas_cumprod(0.0015, 0.0195).float()
    for protocol in ("package", "official"):
        ours, theirs = engine_and_official_scores(root / "out", images, lambda z, t, y: ldm.apply_model(z, t, y),
                                                  abar, null=3, encode=ldm.encode, decode=ldm.decode,
                                                  protocol=protocol)
        assert ours.abs().min() > 0
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_learned_scale_factor_buffer_replaces_the_yamls(tmp_path):
    ldm = reference_ldm(seed=3)
    ldm.register_buffer("scale_factor_buffer", torch.tensor(0.25))
    state = {("scale_factor" if k == "scale_factor_buffer" else k): v for k, v in ldm.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "model.ckpt")
    config = write_yaml(tmp_path / "cin.yaml", ldm_yaml(scale_by_std=True, scale_factor=1.0))
    assert convert("--from", "ldm", tmp_path / "model.ckpt", tmp_path / "out", "--config", config) == 0
    assert VQModel.from_pretrained(tmp_path / "out" / "vqvae").config.scaling_factor == 0.25


@pytest.mark.parametrize("params, message", [
    (dict(linear_end=0.012), "the checkpoint's alphas_cumprod buffer differs from the schedule"),
    (dict(parameterization="x0"), "parameterization must be eps"),
    (dict(unet={"model_channels": 64}), "'model.diffusion_model.time_embed.0.weight' has shape (128, 32), but"),
    (dict(unet={"transformer_depth": 2}), "no weights for diffusers' 'down_blocks.0.attentions.0.transformer_blocks."
                                          "1.norm1.weight' (from the source module 'model.diffusion_model."),
    (dict(use_ema=True), "use_ema: true"),
])
def test_config_that_does_not_describe_the_checkpoint_is_one_clear_error(converted, capsys, tmp_path, params,
                                                                        message):
    config = write_yaml(tmp_path / "bad.yaml", ldm_yaml(**params))
    assert convert("--from", "ldm", converted[1] / "model.ckpt", tmp_path / "out", "--config", config) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and not (tmp_path / "out").exists()


class RunsCode:
    """Pickles as a call of os.system: loading it with plain torch.load would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_checkpoint_that_would_run_code_is_refused_unread(converted, capsys, tmp_path):
    ldm, _ = converted
    marker = tmp_path / "ran"
    torch.save({"state_dict": ldm.state_dict(), "hyper_parameters": RunsCode(marker)}, tmp_path / "evil.ckpt")
    assert convert("--from", "ldm", tmp_path / "evil.ckpt", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "system" in err and "not known to be harmless" in err and not marker.exists()


def test_a_pixel_checkpoint_is_not_an_ldm(converted, capsys, tmp_path):
    torch.save({"conv_in.weight": torch.zeros(1)}, tmp_path / "pixel.ckpt")
    assert convert("--from", "ldm", tmp_path / "pixel.ckpt", tmp_path / "out") == 2
    assert "belongs to no part of a LatentDiffusion checkpoint" in capsys.readouterr().err
