"""combine='energy': the change plus the energy score, z-normalised on ID validation images."""
import numpy as np
import pytest
import torch

from openood_diffood import DiffOOD, DiffOODSettings, load_diffusion
from openood_diffood.evaluate.benchmark import CALIBRATION_IMAGES, Benchmark, ImageSet, calibration_batches
from openood_diffood.method.calibration import Calibration
from openood_diffood.method.normalization import Normalization
from openood_diffood.method.scoring import energy_score
from test_openood import diffood_postprocessor

SMALL = dict(timestep=100, stride=50, repeats=2, guidance=3.0)


@pytest.fixture(scope="module")
def backend(tiny_diffusion_dir):
    return load_diffusion(tiny_diffusion_dir)


def test_calibration_by_hand():
    cal = Calibration.fit(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-4.0, -2.0, 0.0]))
    assert (cal.means, cal.stds, cal.count) == ((2.0, -2.0), (1.0, 2.0), 3)
    torch.testing.assert_close(cal.combine(torch.tensor([4.0, 2.0]), torch.tensor([-2.0, -6.0])),
                               torch.tensor([2.0 + 0.0, 0.0 - 2.0]))
    torch.testing.assert_close(energy_score(torch.tensor([[0.0, 0.0]])), -torch.log(torch.tensor([2.0])))
    with pytest.raises(ValueError, match="at least two"):
        Calibration.fit(torch.tensor([1.0]), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="zero spread"):
        Calibration.fit(torch.ones(4), torch.arange(4.0))
    with pytest.raises(ValueError, match="combine must be energy or an OpenOOD postprocessor's name"):
        DiffOODSettings(combine="k nn")
    with pytest.raises(ValueError, match="combine must be energy"):
        DiffOODSettings(combine="diffood")


def test_engine_combines_on_its_calibration(tiny_net, backend, images):
    val, test = images[:5], images[5:]
    engine = DiffOOD(tiny_net, backend, combine="energy", **SMALL)
    with pytest.raises(ValueError, match="calibrate"):
        engine.score(test)
    plain = DiffOOD(tiny_net, backend, **SMALL)
    with torch.no_grad():
        energy_val, energy_test = energy_score(tiny_net(val)), energy_score(tiny_net(test))
    change_val, change_test = plain.score(val).score, plain.score(test).score
    cal = engine.calibrate(iter([val[:2], val[2:]]))  # an iterable of batches
    assert cal.count == 5 and engine.calibration is cal
    assert cal.means[0] == pytest.approx(change_val.double().mean().item(), rel=1e-5)
    assert cal.stds[1] == pytest.approx(energy_val.double().std().item(), rel=1e-5)
    expected = ((change_test - change_val.mean()) / change_val.std()
                + (energy_test - energy_val.mean()) / energy_val.std())
    torch.testing.assert_close(engine.score(test).score, expected, rtol=1e-4, atol=1e-4)
    other = engine.replace(timestep=60)  # statistics of another setting do not carry over
    assert other.calibration is None and engine.replace(batch_size=2).calibration is cal
    with pytest.raises(ValueError, match="current settings"):
        other.score(test)


def test_cache_key_covers_the_calibration(tiny_net, backend, images):
    engine = DiffOOD(tiny_net, backend, combine="energy", **SMALL)
    engine.calibrate(images[:4])
    first = engine.identity()
    engine.calibrate(images[4:])
    assert engine.identity() != first and first["calibration"]["count"] == 4
    assert "calibration" not in DiffOOD(tiny_net, backend, **SMALL).identity()


def test_detector_fit_calibrates(tiny_net, backend, images):
    from openood_diffood.detector import DiffOODDetector

    det = DiffOODDetector(tiny_net, backend, combine="energy", **SMALL)
    with pytest.raises(ValueError, match="fit"):
        det.fit(None)
    det.fit([(images[:4], torch.zeros(4)), (images[4:6], torch.zeros(2))])
    assert det.engine.calibration.count == 6 and det.predict(images[6:]).shape == (2,)


def test_postprocessor_calibrates_on_the_id_val_loader_and_again_after_aps_changes(tiny_diffusion_dir, tmp_path):
    from conftest import TinyNet

    pp = diffood_postprocessor(tmp_path, tiny_diffusion_dir)
    pp.settings = pp.settings.replace(combine="energy", **SMALL)
    net = TinyNet()
    g = torch.Generator().manual_seed(3)
    val = [{"data": torch.randn(4, 3, 8, 8, generator=g) * 0.5, "label": torch.arange(4) % 3} for _ in range(2)]
    test = [{"data": torch.randn(3, 3, 8, 8, generator=g) * 0.5, "label": torch.full((3,), -1)}]
    pp.setup(net, {"train": val, "val": val, "test": None}, {"val": test})
    _, conf, _ = pp.inference(net, test, progress=False)
    ref = DiffOOD(net, pp.engine.diffusion, pp.settings)
    ref.calibrate(torch.cat([b["data"] for b in val]))
    np.testing.assert_allclose(conf, -ref.score(test[0]["data"]).score.numpy(), atol=1e-5)
    pp.args_dict = {"timestep_list": [60]}
    pp.set_hyperparam([60])
    _, conf60, _ = pp.inference(net, test, progress=False)  # recalibrated under t = 60
    assert pp.engine.calibration is not None and pp.engine.settings.timestep == 60
    assert not np.allclose(conf60, conf)


def test_eval_calibrates_on_up_to_1000_fit_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (1200, 8, 8, 3), dtype=np.uint8)
    labels = np.zeros(1200, dtype=np.int64)
    bench = Benchmark(ImageSet("id", images[:4], labels[:4]), {"near": [ImageSet("ood", images[4:8])]},
                      Normalization((0.5,) * 3, (0.25,) * 3))
    with pytest.raises(ValueError, match="--fit-data"):
        calibration_batches(bench, 64, 0)
    bench.fit = ImageSet("fit", images, labels)
    batches = list(calibration_batches(bench, 300, 0))
    assert [b.shape[0] for b in batches] == [300, 300, 300, 100] and CALIBRATION_IMAGES == 1000
    assert batches[0].shape[1:] == (3, 8, 8) and abs(float(batches[0].mean())) < 0.2  # normalized: ~ (u - .5) / .25
