"""The DiffOOD engine against diffusers' own scheduler and hand computation (tiny models, CPU)."""
import pytest
import torch
from diffusers import DDPMScheduler

from conftest import TinyNet, write_tiny_diffusion
from openood_diffood import DiffOOD, DiffOODSettings, load_diffusion
from openood_diffood.config import ConfigError
from openood_diffood.method.diffood import guided_noise
from openood_diffood.method.features import Classifier
from openood_diffood.method.noise import content_keys, sample_noise
from openood_diffood.method.scoring import feature_change
from openood_diffood.method.solvers import add_noise, ddim, solver_timesteps
from openood_diffood.models.networks import resnet18_32x32


@pytest.fixture(scope="module")
def backend(tiny_diffusion_dir):
    return load_diffusion(tiny_diffusion_dir)


def test_loaded_backend_reads_the_model_and_schedule(backend, tiny_diffusion_dir):
    sched = DDPMScheduler.from_pretrained(tiny_diffusion_dir, subfolder="scheduler")
    assert backend.num_classes == 3 and backend.null_class == 3 and backend.sample_size == 8
    torch.testing.assert_close(backend.alphas_cumprod.float(), sched.alphas_cumprod, rtol=0, atol=1e-7)


def test_noising_equals_ddpm_add_noise(backend, tiny_diffusion_dir):
    sched = DDPMScheduler.from_pretrained(tiny_diffusion_dir, subfolder="scheduler")
    x0, eps = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    for t in (1, 300, 999):
        expected = sched.add_noise(x0, eps, torch.full((4,), t))
        torch.testing.assert_close(add_noise(x0, eps, backend.alphas_cumprod, t), expected, rtol=0, atol=1e-5)
    assert add_noise(x0, eps, backend.alphas_cumprod, 0) is x0


def test_guidance_combination_by_hand(backend):
    z, labels = torch.randn(3, 3, 8, 8), torch.tensor([2, 0, 1])
    t = torch.full((3,), 250)
    with torch.no_grad():
        eps_y = backend.unet(z, t, class_labels=labels).sample
        eps_null = backend.unet(z, t, class_labels=torch.full((3,), 3)).sample
        for w in (0.0, 1.0, 3.0, 6.0):
            guided = guided_noise(backend, labels, w)(z, 250)
            torch.testing.assert_close(guided, eps_null + w * (eps_y - eps_null), rtol=0, atol=1e-5)


def test_one_branch_when_guidance_is_zero_or_one(backend, monkeypatch):
    """w = 0 (unconditional: null class only) and w = 1 (conditional only) make one call on N samples."""
    calls = []
    network = backend.network
    monkeypatch.setattr(backend, "network", lambda z, t, y: calls.append((z.shape[0], y.tolist())) or network(z, t, y))
    z, labels = torch.randn(2, 3, 8, 8), torch.tensor([2, 0])
    with torch.no_grad():
        for w in (0.0, 1.0, 3.0):
            guided_noise(backend, labels, w)(z, 100)
    assert calls == [(2, [3, 3]), (2, [2, 0]), (4, [2, 0, 3, 3])]


def test_score_formula_by_hand():
    feat = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    rec = torch.tensor([[[3.0, 4.0], [4.0, 3.0]], [[0.0, 2.0], [1.0, 1.0]]])
    # image 0: 0 and |0.6-0.8| + |0.8-0.6| = 0.4 -> 0.2; image 1: (1 + 1) and |1 - 0.7071| + 0.7071 -> mean
    expected = torch.tensor([0.2, (2.0 + (1 - 2 ** -0.5) + 2 ** -0.5) / 2])
    torch.testing.assert_close(feature_change(feat, rec), expected)


def test_engine_score_matches_its_parts(tiny_net, backend, images):
    """score = mean_r |n(f(x)) - n(f(D(noise_r(x))))|_1 recomputed step by step from the public pieces."""
    eng = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=2, guidance=3.0, seed=7)
    out = eng.score(images)
    norm = eng.settings.normalization
    x01 = norm.unnormalize(images)
    eps = sample_noise(content_keys(x01), 7, 2, (3, 8, 8), torch.device("cpu")).reshape(16, 3, 8, 8)
    with torch.no_grad():
        logits = tiny_net(images)
        y = logits.argmax(1).repeat_interleave(2)
        zt = add_noise((x01 * 2 - 1).repeat_interleave(2, 0), eps, backend.schedule, 100)
        rec01 = (ddim(guided_noise(backend, y, 3.0), zt, solver_timesteps(100, 50), backend.schedule).clamp(-1, 1)
                 + 1) / 2
        rec_logits = tiny_net(norm.normalize(rec01)).view(8, 2, -1)
    torch.testing.assert_close(out.score, feature_change(logits, rec_logits), rtol=0, atol=1e-5)
    assert torch.equal(out.pred, logits.argmax(1))
    assert (out.score > 0).all()


def test_scores_do_not_depend_on_batch_size_or_order(tiny_net, backend, images):
    ref = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=3, batch_size=8).score(images).score
    for bs in (1, 3):
        got = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=3, batch_size=bs).score(images).score
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    shuffled = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=3, batch_size=3).score(images[perm]).score
    torch.testing.assert_close(shuffled, ref[perm], rtol=0, atol=1e-5)
    other_seed = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=3, seed=1).score(images).score
    assert not torch.allclose(other_seed, ref)


def test_timestep_zero_scores_exactly_zero(tiny_net, backend, images):
    out = DiffOOD(tiny_net, backend, timestep=0, repeats=4).score(images)
    assert torch.equal(out.score, torch.zeros(8))


def test_caller_labels_condition_the_model(tiny_net, backend, images):
    eng = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=1)
    pseudo = eng.score(images)
    same = eng.score(images, labels=pseudo.pred)
    other = eng.score(images, labels=(pseudo.pred + 1) % 3)
    torch.testing.assert_close(same.score, pseudo.score, rtol=0, atol=1e-6)
    assert not torch.allclose(other.score, pseudo.score)


def test_unconditional_model_works_and_guidance_is_said_to_do_nothing(tmp_path, tiny_net, images):
    backend = load_diffusion(write_tiny_diffusion(tmp_path, num_classes=None))
    assert not backend.conditional
    with pytest.warns(UserWarning, match="unconditional: guidance has no effect"):
        engine = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=2, guidance=3.0)
    out = engine.score(images)
    assert out.score.shape == (8,) and torch.isfinite(out.score).all() and (out.score > 0).all()
    same = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=2, guidance=1.0).score(images)
    assert torch.equal(out.score, same.score)  # guidance really has no effect


@pytest.mark.parametrize("space,dim", [("logit", 3), ("feature", 16), ("layer1", 8 * 8 * 8), ("layer2", 16),
                                       ("image", 3 * 8 * 8)])
def test_feature_spaces(tiny_net, backend, images, space, dim):
    s = DiffOODSettings(space=space, timestep=100, stride=50, repeats=1)
    if space != "image":
        logits, feat = Classifier(tiny_net).features(images, space)
        assert feat.shape == (8, dim)
    assert torch.isfinite(DiffOOD(tiny_net, backend, s).score(images).score).all()


def test_feature_space_is_input_of_last_linear_and_clipped(tiny_net, images):
    _, feat = Classifier(tiny_net).features(images, "feature", 0.05)
    expected = tiny_net.layer2(tiny_net.layer1(images)).mean((2, 3)).clip(max=0.05)
    torch.testing.assert_close(feat, expected)


def test_openood_style_net_uses_its_feature_list():
    net = resnet18_32x32().eval()
    x = torch.randn(2, 3, 32, 32)
    clf = Classifier(net)
    assert clf.openood_style and clf.num_classes == 10
    with torch.no_grad():
        _, layer2 = clf.features(x, "layer2")
        _, feat = clf.features(x, "feature")
    assert layer2.shape == (2, 128 * 16 * 16) and feat.shape == (2, 512)


# ------------------------------------------------------------------ clear errors
def test_error_wrong_image_size(tiny_net, backend, images):
    eng = DiffOOD(tiny_net, backend)
    with pytest.raises(ValueError, match="8x8.*--resize"):
        eng.score(torch.zeros(2, 3, 16, 16))
    big = torch.nn.functional.interpolate(images[:2], size=(16, 16), mode="nearest")
    assert DiffOOD(tiny_net, backend, timestep=40, stride=20, resize=True).score(big).score.shape == (2,)


def test_error_class_count_mismatch(backend, images):
    with pytest.raises(ValueError, match="classifier has 5 classes.*conditioned on 3"):
        DiffOOD(TinyNet(num_classes=5), backend)
    eng = DiffOOD(TinyNet(num_classes=5), backend, class_map=[0, 1, 2, 0, 1], timestep=40)
    assert eng.score(images[:1]).score.shape == (1,)


@pytest.mark.parametrize("kwargs,match", [
    ({"timestep": 1000}, "outside the diffusion model's schedule"),
    ({"timestep": 10, "stride": 20}, "stride 20 is larger than timestep 10"),
    ({"space": "logits"}, "space must be"),
    ({"solver": "euler"}, "solver must be one of ddim, dpmpp2m, plms"),
    ({"guidance": -2}, "guidance must be >= 0"),
    ({"timesteps": 600}, "unknown config key 'timesteps' \\(did you mean 'timestep'\\?\\)"),
])
def test_error_bad_settings(tiny_net, backend, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffOOD(tiny_net, backend, **kwargs)


def test_error_bad_inputs(tiny_net, backend, images):
    eng = DiffOOD(tiny_net, backend, timestep=40)
    bad = images.clone()
    bad[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf.*\[3\]"):
        eng.score(bad)
    with pytest.raises(ValueError, match="empty batch"):
        eng.score(images[:0])
    with pytest.raises(ValueError, match="far outside"):
        eng.score(images * 255)
    with pytest.raises(ValueError, match="labels must lie in 0 .. 2"):
        eng.score(images, labels=torch.full((8,), 3))


def test_error_missing_or_incomplete_model_dir(tmp_path, tiny_diffusion_dir):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_diffusion(tmp_path / "nope")
    (tmp_path / "half" / "unet").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="missing scheduler/scheduler_config.json, unet/config.json"):
        load_diffusion(tmp_path / "half")


def test_engines_share_a_backend_without_changing_it(tiny_net, backend, images):
    """compile, channels_last and settings changes live in each engine's own view of the backend."""
    weights = {k: v.clone() for k, v in backend.state_dict().items()}
    network = backend.network
    strides = [p.stride() for p in backend.parameters()]
    plain = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=1)
    reference = plain.score(images).score
    fancy = DiffOOD(tiny_net, backend, timestep=100, stride=50, repeats=1, channels_last=True,
                    compile=lambda gm, example_inputs: gm.forward)
    torch.testing.assert_close(fancy.score(images).score, reference, rtol=0, atol=1e-6)
    view = plain.replace(timestep=60)
    assert view.diffusion is backend and plain.settings.timestep == 100 and view.settings.timestep == 60
    assert backend.network == network and [p.stride() for p in backend.parameters()] == strides
    assert all(torch.equal(weights[k], v) for k, v in backend.state_dict().items())
    torch.testing.assert_close(plain.score(images).score, reference, rtol=0, atol=0)
    torch._dynamo.reset()


def test_named_layers_mean_the_same_on_openood_and_torchvision_nets():
    """layer4 was the pooled feature on OpenOOD nets and the unpooled 2048x7x7 map on torchvision ones (issue 20):
    a torchvision ResNet and the same weights in OpenOOD's ResNet18_224x224 form give the same features."""
    from torchvision.models.resnet import BasicBlock, ResNet, resnet18

    class OpenOODStyle(ResNet):  # OpenOOD's ResNet18_224x224.forward (openood/networks/resnet18_224x224.py)
        def __init__(self):
            super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=10)

        def forward(self, x, return_feature=False, return_feature_list=False):
            feats = [self.maxpool(self.relu(self.bn1(self.conv1(x))))]
            for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
                feats.append(stage(feats[-1]))
            feats[-1] = self.avgpool(feats[-1])
            logits = self.fc(feats[-1].flatten(1))
            if return_feature:
                return logits, feats[-1].flatten(1)
            return (logits, feats) if return_feature_list else logits

    torch.manual_seed(0)
    tv = resnet18(num_classes=10).eval()
    oo = OpenOODStyle().eval()
    oo.load_state_dict(tv.state_dict())
    x = torch.randn(2, 3, 64, 64)
    a, b = Classifier(tv), Classifier(oo)
    assert b.openood_style and not a.openood_style
    with torch.no_grad():
        for space in ("layer0", "layer1", "layer2", "layer3", "layer4", "feature", "logit"):
            (la, fa), (lb, fb) = a.features(x, space), b.features(x, space)
            assert fa.shape == fb.shape, space
            torch.testing.assert_close(fa, fb, msg=space)
            torch.testing.assert_close(la, lb)
        assert a.features(x, "layer4")[1].shape == (2, 512)
        torch.testing.assert_close(a.features(x, "layer4")[1], a.features(x, "feature")[1])
    with pytest.raises(ValueError, match="has no child module 'layer5'"):
        a.features(x, "layer5")
