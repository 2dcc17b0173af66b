"""Latent diffusion backends (DiT and latent UNet behind an AutoencoderKL), ImageNet classifiers, class maps,
resizing and the memory probe: tiny random models written in the real diffusers layouts, CPU only."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import imagenet_images as _images, is_latent_layout, tiny_scheduler, write_tiny_diffusion, \
    write_tiny_dit, write_tiny_latent_unet
from openood_diffood import DiffOOD, load_diffusion
from openood_diffood.method.diffood import guided_noise
from openood_diffood.method.features import Classifier
from openood_diffood.method.solvers import ddim, solver_timesteps
from openood_diffood.models.diffusion import PixelUNetBackend
from openood_diffood.models.latent import DiTDenoiser, LatentBackend
from openood_diffood.openood.imagenet import imagenet200_class_map
from openood_diffood.runtime.memory import fit_batch_size


@pytest.fixture(scope="module")
def dit_dir(tmp_path_factory) -> Path:
    return write_tiny_dit(tmp_path_factory.mktemp("dit"))


@pytest.fixture(scope="module")
def dit(dit_dir) -> LatentBackend:
    return load_diffusion(dit_dir)


class TinyImageNet(torch.nn.Module):
    """A small classifier for 224x224 inputs whose head is named ``fc`` (as torchvision's ResNets)."""

    def __init__(self, num_classes):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 7, stride=8)
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


# ---------------------------------------------------------------------------------------------- layouts
def test_backend_is_chosen_from_the_directory_files(tmp_path, dit_dir):
    unet_dir = write_tiny_latent_unet(tmp_path / "lunet")
    pixel_dir = write_tiny_diffusion(tmp_path / "pixel")
    assert is_latent_layout(dit_dir) and is_latent_layout(unet_dir) and not is_latent_layout(pixel_dir)
    assert isinstance(load_diffusion(dit_dir).denoiser, DiTDenoiser)
    unet_backend = load_diffusion(unet_dir)
    assert isinstance(unet_backend, LatentBackend) and isinstance(unet_backend.denoiser, PixelUNetBackend)
    assert isinstance(load_diffusion(pixel_dir), PixelUNetBackend)
    # a model_index.json alone marks the layout latent, so the missing files are named for that layout
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "model_index.json").write_text((dit_dir / "model_index.json").read_text())
    with pytest.raises(FileNotFoundError, match="missing scheduler/scheduler_config.json, vae/config.json, "
                                                "transformer/config.json or unet/config.json"):
        load_diffusion(tmp_path / "partial")


def test_hub_style_transformer_config_loads(tmp_path, dit_dir, dit):
    """facebook/DiT-XL-2-256 names its transformer class Transformer2DModel, with that class's extra keys."""
    hub = write_tiny_dit(tmp_path / "hub")
    config = json.loads((hub / "transformer" / "config.json").read_text())
    config.update(_class_name="Transformer2DModel", num_vector_embeds=None, cross_attention_dim=None,
                  use_linear_projection=False, only_cross_attention=False, double_self_attention=False)
    (hub / "transformer" / "config.json").write_text(json.dumps(config))
    index = json.loads((hub / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "Transformer2DModel"]
    (hub / "model_index.json").write_text(json.dumps(index))
    backend = load_diffusion(hub)
    z, t = torch.randn(2, 4, 32, 32), torch.tensor([5, 500])
    labels = torch.tensor([1, 9])
    torch.testing.assert_close(backend.network(z, t, labels), dit.network(z, t, labels), rtol=0, atol=0)


def test_latent_channel_mismatch_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="expects 3 input channels but the VAE makes 4-channel latents"):
        load_diffusion(write_tiny_latent_unet(tmp_path / "bad", in_channels=3))


# ---------------------------------------------------------------------------------------------- DiT backend
def test_dit_sizes_classes_and_null_class(dit, dit_dir):
    assert (dit.sample_size, dit.latent_size, dit.vae_scale_factor) == (256, 32, 8)
    assert (dit.num_classes, dit.null_class, dit.conditional) == (10, 10, True)
    assert dit.num_train_timesteps == 1000
    torch.testing.assert_close(dit.alphas_cumprod.float(), tiny_scheduler().alphas_cumprod, rtol=0, atol=1e-7)
    # null class 10 is the extra (classifier-free) row of the 11-row label table; no label predicts with it
    z, t = torch.randn(2, 4, 32, 32), torch.tensor([300, 300])
    torch.testing.assert_close(dit.network(z, t, None), dit.network(z, t, torch.tensor([10, 10])))
    assert not torch.allclose(dit.network(z, t, torch.tensor([0, 0])), dit.network(z, t, torch.tensor([10, 10])))
    with pytest.raises(ValueError, match="null class 11 outside the model's 11 class embeddings"):
        load_diffusion(dit_dir, null_class=11)


def test_encode_uses_the_scaled_posterior_mean_and_decode_inverts_the_scaling(dit):
    x = torch.rand(2, 3, 256, 256) * 2 - 1
    z = dit.encode(x)
    assert z.shape == (2, 4, 32, 32)
    vae = dit.vae
    torch.testing.assert_close(z, vae.encode(x).latent_dist.mean * 0.18215)
    torch.testing.assert_close(dit.encode(x), z, rtol=0, atol=0)  # deterministic: no posterior sample
    torch.testing.assert_close(dit.decode(z), vae.decode(z / 0.18215).sample)


def test_learned_sigma_first_half_is_the_noise(dit):
    z, t, y = torch.randn(3, 4, 32, 32), torch.tensor([1, 400, 999]), torch.tensor([0, 4, 9])
    raw = dit.denoiser.transformer(z, timestep=t, class_labels=y).sample
    assert raw.shape == (3, 8, 32, 32)
    torch.testing.assert_close(dit.network(z, t, y), raw[:, :4], rtol=0, atol=0)


def test_one_guided_latent_ddim_step_equals_hand_computation(dit):
    z, y, w, t = torch.randn(2, 4, 32, 32), torch.tensor([3, 7]), 6.0, 20
    raw = dit.denoiser.transformer(torch.cat([z, z]), timestep=torch.full((4,), t),
                                   class_labels=torch.tensor([3, 7, 10, 10])).sample[:, :4]
    eps_y, eps_null = raw.chunk(2)
    eps = eps_null + w * (eps_y - eps_null)
    a_t, a_0 = tiny_scheduler().alphas_cumprod[t].double(), tiny_scheduler().alphas_cumprod[0].double()
    x0 = (z.double() - (1 - a_t).sqrt() * eps.double()) / a_t.sqrt()
    expected = a_0.sqrt() * x0 + (1 - a_0).sqrt() * eps.double()
    ours = ddim(guided_noise(dit, y, w), z, solver_timesteps(t, t), dit.schedule)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-5, atol=1e-5)


def test_latent_unet_backend(tmp_path):
    backend = load_diffusion(write_tiny_latent_unet(tmp_path / "lunet"))
    assert (backend.sample_size, backend.num_classes, backend.null_class) == (256, 3, 3)
    z, t, y = torch.randn(2, 4, 32, 32), torch.tensor([10, 10]), torch.tensor([0, 2])
    expected = backend.denoiser.unet(z, t, class_labels=y).sample
    torch.testing.assert_close(backend.network(z, t, y), expected, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- engine
def test_score_is_zero_at_t0_and_positive_later_in_latent_mode(dit):
    net = TinyImageNet(10)
    x = _images(2)
    s0 = DiffOOD(net, dit, dataset="imagenet", resize=True, timestep=0, repeats=2).score(x).score
    assert torch.equal(s0, torch.zeros(2))
    s = DiffOOD(net, dit, dataset="imagenet", resize=True, timestep=40, stride=20, repeats=2).score(x).score
    assert torch.isfinite(s).all() and (s > 0).all()


def test_resize_round_trip_224_256_224(dit):
    net = TinyImageNet(10)
    engine = DiffOOD(net, dit, dataset="imagenet", resize=True, timestep=20, stride=20, repeats=2)
    rec, out = engine.reconstruct(_images(2))
    assert rec.shape == (2, 2, 3, 224, 224) and out.score.shape == (2,)
    assert rec.min() >= 0 and rec.max() <= 1
    seen = []
    encode = dit.encode
    dit.encode = lambda x: seen.append(x.clone()) or encode(x)
    try:  # a constant image is resized into 256 x 256 as the same constant (in [-1, 1]: 2 * 0.37 - 1)
        engine.score(engine.settings.normalization.normalize(torch.full((1, 3, 224, 224), 0.37)))
    finally:
        del dit.encode
    assert seen[0].shape[-2:] == (256, 256)
    torch.testing.assert_close(seen[0], torch.full_like(seen[0], 2 * 0.37 - 1))
    with pytest.raises(ValueError, match="set resize"):
        DiffOOD(net, dit, dataset="imagenet", timestep=20, stride=20).score(_images(1))


def test_vae_encodes_each_image_once_not_once_per_repeat(dit):
    engine = DiffOOD(TinyImageNet(10), dit, dataset="imagenet", resize=True, timestep=20, stride=20, repeats=3)
    encoded, decoded = [], []
    encode, decode = dit.vae.encode, dit.vae.decode
    dit.vae.encode = lambda x: encoded.append(x.shape[0]) or encode(x)
    dit.vae.decode = lambda z: decoded.append(z.shape[0]) or decode(z)
    try:
        engine.score(_images(2))
    finally:
        del dit.vae.encode, dit.vae.decode
    assert (sum(encoded), sum(decoded)) == (2, 6)


def test_class_map_sends_classifier_classes_to_diffusion_ids(dit):
    net = TinyImageNet(3).eval()
    x = _images(3)
    engine = DiffOOD(net, dit, dataset="imagenet", resize=True, timestep=20, stride=20, repeats=2, guidance=6.0,
                     class_map=(7, 2, 5))
    seen = []
    network = dit.denoiser.network
    dit.denoiser.network = lambda z, t, labels: seen.append(labels.clone()) or network(z, t, labels)
    try:
        out = engine.score(x)
    finally:
        del dit.denoiser.network
    mapped = torch.tensor([7, 2, 5])[out.pred].repeat_interleave(2)
    assert torch.equal(seen[0], torch.cat([mapped, torch.full_like(mapped, 10)]))
    with pytest.raises(ValueError, match="give class_map"):
        DiffOOD(net, dit, dataset="imagenet")
    with pytest.raises(ValueError, match="class_map has 2 entries but the classifier has 3 classes"):
        DiffOOD(net, dit, dataset="imagenet", class_map=(1, 2))
    with pytest.raises(ValueError, match="class_map ids must lie in 0 .. 9"):
        DiffOOD(net, dit, dataset="imagenet", class_map=(1, 2, 10))


# ---------------------------------------------------------------------------------------------- classifiers
def test_torchvision_resnet50_penultimate_is_the_clipped_fc_input():
    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50(weights=None).eval()
    clf = Classifier(net)
    x = _images(2)
    with torch.no_grad():
        logits, feat = clf.features(x, "feature", 0.3)
        body = torch.nn.Sequential(*list(net.children())[:-1])
        expected = body(x).flatten(1)
    assert clf.num_classes == 1000 and feat.shape == (2, 2048)
    torch.testing.assert_close(feat, expected.clip(max=0.3))
    torch.testing.assert_close(logits, net.fc(expected))
    assert (expected > 0.3).any()  # the clip is active


@pytest.mark.parametrize("name", ["ResNet50", "ResNet18_224x224"])
def test_openood_imagenet_nets_feature_is_their_return_feature_clipped(name):
    """``space: feature`` on OpenOOD's ImageNet nets: the pooled penultimate feature ``return_feature`` gives, clipped
    at the config's threshold (what DiffOOD's ImageNet setting compares)."""
    import yaml

    from openood_diffood.openood.compat import require_openood
    from openood_diffood.openood.registry import config_path

    args = yaml.safe_load(open(config_path("diffood_imagenet")))["postprocessor"]["postprocessor_args"]
    torch.manual_seed(0)
    net = getattr(require_openood("openood.networks"), name)().eval()
    x = _images(1)
    with torch.no_grad():
        logits, feat = Classifier(net).features(x, args["space"], args["threshold"])
        ref_logits, ref = net(x, return_feature=True)
    assert feat.shape == (1, net.fc.in_features) and (ref > 0.3).any()  # the clip is active
    torch.testing.assert_close(feat, ref.clip(max=0.3))
    torch.testing.assert_close(logits, ref_logits)


def test_a_diffusion_model_with_fewer_classes_than_the_classifier_is_an_error(dit):
    with pytest.raises(ValueError, match="the classifier has 200 classes but the diffusion model is conditioned on "
                                         "10, fewer"):
        DiffOOD(TinyImageNet(200), dit, dataset="imagenet")


def test_openood_resnet18_224_imagenet200_with_the_class_map(tmp_path):
    from openood_diffood.openood.compat import require_openood

    ResNet18_224x224 = require_openood("openood.networks.resnet18_224x224").ResNet18_224x224

    torch.manual_seed(0)
    net = ResNet18_224x224(num_classes=200).eval()
    clf = Classifier(net)
    assert clf.openood_style and clf.num_classes == 200
    with torch.no_grad():
        _, feat = clf.features(_images(1), "feature", 0.3)
        _, raw = net(_images(1), return_feature=True)
    torch.testing.assert_close(feat, raw.clip(max=0.3))

    cmap = imagenet200_class_map(_write_imglists(tmp_path))
    backend = load_diffusion(write_tiny_dit(tmp_path / "dit1k", classes=1000))
    assert backend.null_class == 1000
    engine = DiffOOD(net, backend, dataset="imagenet200", space="feature", threshold=0.3, resize=True,
                     timestep=20, stride=20, repeats=1, class_map=cmap)
    seen = []
    network = backend.denoiser.network
    backend.denoiser.network = lambda z, t, labels: seen.append(labels.clone()) or network(z, t, labels)
    try:
        out = engine.score(_images(2))
    finally:
        del backend.denoiser.network
    assert torch.isfinite(out.score).all() and out.pred.max() < 200
    assert seen[0][:2].tolist() == [cmap[p] for p in out.pred.tolist()]


# ---------------------------------------------------------------------------------------------- ImageNet-200 map
def _wnid(k: int) -> str:
    return f"n{1000000 + 37 * k:08d}"


def _write_imglists(root: Path) -> Path:
    """OpenOOD-style image lists: 1000 ImageNet classes (labels = sorted WordNet ids) and every 5th in a
    200-class subset, whose labels are its own 0..199 (class i -> ImageNet class 5 i + 3)."""
    (root / "benchmark_imglist" / "imagenet").mkdir(parents=True)
    (root / "benchmark_imglist" / "imagenet200").mkdir(parents=True)
    full = [f"imagenet_1k/val/{_wnid(k)}/ILSVRC2012_val_{k:08d}.JPEG {k}\n" for k in range(1000)]
    (root / "benchmark_imglist" / "imagenet" / "test_imagenet.txt").write_text("".join(full))
    sub = [f"imagenet_1k/train/{_wnid(5 * i + 3)}/{_wnid(5 * i + 3)}_{j}.JPEG {i}\n"
           for i in range(200) for j in (1, 2)]
    (root / "benchmark_imglist" / "imagenet200" / "train_imagenet200.txt").write_text("".join(sub))
    return root


def test_imagenet200_class_map_from_openood_image_lists(tmp_path):
    assert imagenet200_class_map(_write_imglists(tmp_path)) == [5 * i + 3 for i in range(200)]
    with pytest.raises(FileNotFoundError, match="no OpenOOD image list for imagenet200"):
        imagenet200_class_map(tmp_path / "empty")


# ---------------------------------------------------------------------------------------------- memory
def test_fit_batch_size_extrapolates_the_measured_peaks():
    gib = 2 ** 30
    assert fit_batch_size({1: 11 * gib, 4: 14 * gib}, 20 * gib) == 10  # base 10 GiB + 1 GiB per image
    assert fit_batch_size({1: 11 * gib, 4: 14 * gib}, 11 * gib) == 1
    with pytest.raises(ValueError, match="does not hold one image"):
        fit_batch_size({1: 11 * gib, 4: 14 * gib}, 10 * gib)



def test_backends_and_the_execution_wrapper_are_denoisers(dit, tiny_diffusion_dir):
    """The contract diffood() relies on (method/protocols.py), met by pixel, latent and wrapped models."""
    from openood_diffood.method.protocols import Denoiser
    from openood_diffood.runtime.execution import Execution

    pixel = load_diffusion(tiny_diffusion_dir)
    cpu = torch.device("cpu")
    for model in (pixel, dit, Execution(pixel, cpu, "fp32"), Execution(dit, cpu, "auto")):
        assert isinstance(model, Denoiser), type(model).__name__
        assert isinstance(model.schedule, tuple) and isinstance(model.sample_size, int) and model.conditional
    assert not isinstance(torch.nn.Linear(2, 2), Denoiser)
