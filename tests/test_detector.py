"""DiffOOD as a pytorch-ood Detector, inside a pytorch-ood evaluation loop."""
import numpy as np
import pytest
import torch
from pytorch_ood.api import Detector
from pytorch_ood.metrics import OODMetrics
from torch.utils.data import DataLoader, TensorDataset

from openood_diffood import DiffOOD, DiffOODDetector
from openood_diffood.evaluate import metrics

FAST = dict(timestep=100, stride=50, repeats=1, batch_size=4)


def test_detector_scores_like_the_engine_and_feeds_ood_metrics(tiny_net, tiny_diffusion_dir, images):
    det = DiffOODDetector(tiny_net, tiny_diffusion_dir, **FAST)
    assert isinstance(det, Detector) and det.requires_fit is False
    assert det.fit(None) is det and det.fit_features(torch.zeros(2, 3), torch.zeros(2)) is det

    ood = torch.randn(8, 3, 8, 8).clamp(-1.9, 1.9)  # noise images, in the valid normalized range
    engine = DiffOOD(tiny_net, tiny_diffusion_dir, **FAST)
    np.testing.assert_allclose(det.predict(images), engine.score(images).score, rtol=1e-6)

    loader = DataLoader(TensorDataset(torch.cat([images, ood]), torch.tensor([0] * 8 + [-1] * 8)), batch_size=5)
    pod_metrics, seen = OODMetrics(), []
    for x, y in loader:
        s = det(x)  # Detector.__call__ -> predict
        assert s.shape == (x.shape[0],) and torch.isfinite(s).all()
        pod_metrics.update(s, y)
        seen.append(s)
    result = pod_metrics.compute()
    scores = torch.cat(seen).numpy()
    ours = metrics.ood_metrics(scores[:8], scores[8:])
    assert result["AUROC"] == pytest.approx(ours["AUROC"])


#: The demo's trained models: 60 ID digits against 60 photo patches (far-OOD) separate well even at cheap settings
#: (3 DDIM steps, one repeat; measured 0.95; the full demo's far AUROC is 97.2).
MIN_DEMO_AUROC = 0.9


def test_detector_separates_the_demo_sets_in_a_pytorch_ood_loop():
    from openood_diffood.evaluate.demo_data import demo_sets
    from openood_diffood.method.normalization import Normalization
    from openood_diffood.models.demo import DEMO_MEAN, DEMO_STD, load_demo_models

    sets, (net, diffusion), norm = demo_sets(0), load_demo_models(), Normalization(DEMO_MEAN, DEMO_STD)
    x = torch.cat([norm.from_uint8(sets["test"][0][::5][:60]), norm.from_uint8(sets["far"]["photo_patches"][::5][:60])])
    det = DiffOODDetector(net, diffusion, mean=DEMO_MEAN, std=DEMO_STD, timestep=300, stride=100, repeats=1,
                          space="feature", batch_size=32)
    loader = DataLoader(TensorDataset(x, torch.tensor([0] * 60 + [-1] * 60)), batch_size=40)
    pod_metrics = OODMetrics()
    for xb, yb in loader:
        pod_metrics.update(det(xb), yb)
    assert pod_metrics.compute()["AUROC"] >= MIN_DEMO_AUROC


def test_detector_from_engine_and_errors(tiny_net, tiny_diffusion_dir, images):
    engine = DiffOOD(tiny_net, tiny_diffusion_dir, **FAST)
    det = DiffOODDetector(engine)
    assert det.engine is engine and det.device == torch.device("cpu")
    assert det.to("cpu") is det
    with pytest.raises(NotImplementedError, match="needs the images, not features"):
        det.predict_features(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="either a DiffOOD engine alone"):
        DiffOODDetector(engine, tiny_diffusion_dir)
    with pytest.raises(ValueError, match="a diffusion model is needed"):
        DiffOODDetector(tiny_net)
