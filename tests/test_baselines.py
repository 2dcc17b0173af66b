"""Baselines by OpenOOD's names: pytorch-ood's detectors (checked against the formulas), OpenOOD's postprocessors
(checked against pytorch-ood's on the same net), selection and errors."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import REPO
from openood_diffood.evaluate import baselines
from openood_diffood.evaluate.baselines import make_baseline, make_baselines

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture()
def no_openood(monkeypatch):
    """Behave as if OpenOOD could not be imported."""
    monkeypatch.setattr(baselines, "openood_postprocessors", lambda: (None, None, "OpenOOD is not importable (test)"))


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(0)
    x_fit, y_fit = torch.randn(120, 3, 8, 8, generator=g), torch.randint(0, 3, (120,), generator=g)
    x = torch.randn(30, 3, 8, 8, generator=g) * torch.linspace(0.2, 3, 30).view(-1, 1, 1, 1)
    return list(zip(x_fit.split(40), y_fit.split(40))), x


def _features(net, x):
    """TinyNet's penultimate feature: the input of its head."""
    return net.layer2(net.layer1(x)).mean((2, 3))


def test_pytorch_ood_baselines_follow_their_formulas(no_openood, tiny_net, data):
    fit, x = data
    with torch.no_grad():
        logits, feat = tiny_net(x), _features(tiny_net, x)
        fit_feat = torch.cat([_features(tiny_net, xb) for xb, _ in fit])
    made = {b.name: b for b in make_baselines(["msp", "ebo", "mls", "react", "knn"], tiny_net)}
    assert {b.backend for b in made.values()} == {"pytorch-ood"}
    score = {n: b.fit(fit).score([x[:17], x[17:]], progress=False) for n, b in made.items()}
    np.testing.assert_allclose(score["msp"], -logits.softmax(1).max(1).values, rtol=1e-5)
    np.testing.assert_allclose(score["ebo"], -torch.logsumexp(logits, 1), rtol=1e-5)
    np.testing.assert_allclose(score["mls"], -logits.max(1).values, rtol=1e-5)
    threshold = np.percentile(fit_feat.numpy(), 90)  # OpenOOD's default percentile
    with torch.no_grad():
        react = -torch.logsumexp(tiny_net.head(feat.clip(max=threshold)), 1)
    np.testing.assert_allclose(score["react"], react, rtol=1e-5)
    normed = lambda z: z / z.norm(dim=1, keepdim=True)  # noqa: E731
    kth = torch.cdist(normed(feat), normed(fit_feat)).sort(1).values[:, 49]  # K = 50
    np.testing.assert_allclose(score["knn"], kth, rtol=1e-4)


def test_vim_and_knn_adapt_to_small_fits_and_features(no_openood, tiny_net, data):
    fit, x = data
    with pytest.warns(UserWarning, match="ViM: dim=256 is not below the feature dimension 16; using 8"):
        vim = make_baseline("vim", tiny_net).fit(fit)
    assert vim.detector.d == 8 and np.isfinite(vim.score([x], progress=False)).all()
    with pytest.warns(UserWarning) as caught:
        knn = make_baseline("knn", tiny_net).fit(fit[:1])
    assert knn.detector.k == 40
    assert [str(w.message)[:48] for w in caught] == ["KNN: K=50 is more than the 40 fit images; using ",
                                                      "KNN: K=40 exceeds the ~13 fit images per class, "]
    with pytest.warns(UserWarning, match="K=50 exceeds the ~40 fit images per class"):
        knn = make_baseline("knn", tiny_net).fit(fit)
    assert knn.detector.k == 50


def test_selection_errors(no_openood, tiny_net):
    with pytest.raises(ValueError, match=r"unknown baseline 'odin'.*available are ebo, knn, mls, msp, react, vim"
                                         r".*OpenOOD is not importable \(test\)"):
        make_baselines(["msp", "odin"], tiny_net)
    with pytest.raises(ValueError, match="unknown baseline 'msp' for backend 'openood'"):
        make_baseline("msp", tiny_net, backend="openood")
    with pytest.raises(ValueError, match="unknown baseline backend"):
        make_baseline("msp", tiny_net, backend="sklearn")
    with pytest.raises(ValueError, match="fitted on ID training images"):
        make_baseline("knn", tiny_net).fit(None)
    assert make_baseline("msp", tiny_net).fit(None).needs_fit is False


def test_openood_postprocessors_agree_with_pytorch_ood():
    """OpenOOD's msp/ebo/mls/react/vim/knn on our net adapter give pytorch-ood's scores (KNN: squared distances)."""
    code = textwrap.dedent("""
        import json, warnings, torch, numpy as np
        import openood_shims; openood_shims.install()
        from conftest import TinyNet
        from openood_diffood.evaluate.baselines import make_baselines
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        net = TinyNet().eval()
        x, y = torch.randn(120, 3, 8, 8), torch.randint(0, 3, (120,))
        fit = list(zip(x.split(40), y.split(40)))
        names = ["msp", "ebo", "mls", "react", "vim", "knn"]
        out = {}
        for a, b in zip(make_baselines(names, net, "openood"), make_baselines(names, net, "pytorch-ood")):
            s, t = (m.fit(fit).score([x[:25], x[25:50]], progress=False) for m in (a, b))
            out[a.name] = [a.backend, b.backend, s.tolist(), t.tolist()]
        print("RESULT" + json.dumps(out))
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, str(REPO)])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    out = __import__("json").loads(res.stdout.split("RESULT")[-1])
    for name, (backend_a, backend_b, s, t) in out.items():
        assert (backend_a, backend_b) == ("openood", "pytorch-ood")
        s, t = np.array(s), np.array(t)
        if name == "knn":  # OpenOOD (faiss) reports squared distances
            np.testing.assert_allclose(s, t ** 2, rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_allclose(s, t, rtol=1e-4, atol=1e-5, err_msg=name)
