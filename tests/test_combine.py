"""Several timesteps in one score and ``combine: <postprocessor>`` (issue 21): both z-normalised on ID validation."""
import argparse

import numpy as np
import pytest
import torch
import yaml

from openood_diffood import DiffOOD, DiffOODSettings, load_diffusion
from openood_diffood.config import ConfigError, add_arguments, from_arguments, split_mapping
from openood_diffood.method.diffood import network_evaluations, reconstruct, round_trip_settings
from test_openood import diffood_postprocessor

SMALL = dict(stride=50, repeats=2, guidance=3.0)


@pytest.fixture(scope="module")
def backend(tiny_diffusion_dir):
    return load_diffusion(tiny_diffusion_dir)


def test_timestep_lists_from_yaml_cli_and_python_with_clear_errors(tmp_path):
    assert DiffOODSettings(timestep=[300, 100]).timestep == (100, 300)       # kept sorted: one key per set
    assert DiffOODSettings(timestep=[200]).timestep == 200 and DiffOODSettings(timestep="250").timestep == 250
    yml = tmp_path / "d.yml"
    yml.write_text(yaml.safe_dump({"postprocessor": {"postprocessor_args": {"timestep": [100, 300]}}}))
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser)
    assert from_arguments(parser.parse_args(["--config", str(yml)]))[0].timestep == (100, 300)
    assert from_arguments(parser.parse_args(["--timestep", "300,100"]))[0].timestep == (100, 300)
    assert split_mapping({"timestep": [100, 300]})[0].as_dict()["timestep"] == [100, 300]
    for bad, says in (([100, 100], "distinct"), ([0, 100], ">= 1"), ("100,x", "must be an integer"),
                      ([], "distinct"), ([40, 100], "stride 50 is larger than timestep 40")):
        with pytest.raises(ConfigError, match=says):
            DiffOODSettings(timestep=bad, stride=50)
    with pytest.raises(SystemExit):  # argparse: "argument --timestep: timestep must be one integer or distinct ..."
        parser.parse_args(["--timestep", "100,100"])


def test_cost_of_a_list_is_the_sum_over_its_timesteps(backend):
    both = DiffOODSettings(timestep=[100, 300], stride=20, solver="plms")
    singles = [network_evaluations(both.replace(timestep=t), backend) for t in (100, 300)]
    assert network_evaluations(both, backend) == sum(singles) == (6 + 16) * 4 * 2


def test_several_timesteps_sum_their_z_scores_on_id_validation(tiny_net, backend, images):
    val, test = images[:5], images[5:]
    engine = DiffOOD(tiny_net, backend, timestep=[60, 100], **SMALL)
    with pytest.raises(ValueError, match=r"timestep=\[60, 100\] needs ID validation statistics"):
        engine.score(test)
    with pytest.raises(ConfigError, match="one timestep"):
        reconstruct(engine.classifier, engine.diffusion, test, list(range(3)), engine.settings)
    cal = engine.calibrate(val)
    by_hand = 0
    for t in (60, 100):
        both = DiffOOD(tiny_net, backend, timestep=t, **SMALL).score(images).score.double()  # noise: per image
        v, s = both[:5], both[5:]
        by_hand = by_hand + (s - v.mean()) / v.std()
    assert cal.count == 5 and len(cal.means) == 2
    torch.testing.assert_close(engine.score(test).score.double(), by_hand, rtol=1e-4, atol=1e-4)
    recs, _ = engine.reconstruct(test)
    assert recs.shape[1] == 2 * SMALL["repeats"]  # the round trips of both timesteps
    assert round_trip_settings(engine.settings)["timestep"] == [60, 100]  # the store key comes from the settings


def test_combine_knn_is_openoods_knn_fitted_on_id_train_and_z_normalised(tiny_diffusion_dir, tmp_path):
    from conftest import TinyNet
    from openood.evaluation_api.postprocessor import get_postprocessor
    from openood_diffood.evaluate.baselines import OpenOODNet, openood_postprocessors
    from openood_diffood.openood.compat import cuda_calls_stay_put

    pp = diffood_postprocessor(tmp_path, tiny_diffusion_dir)
    pp.settings = pp.settings.replace(combine="knn", combine_weight=2.0, timestep=100, **SMALL)
    assert pp.result_name == "diffood+knn"
    torch.manual_seed(0)
    net = TinyNet().eval()
    g = torch.Generator().manual_seed(3)
    batch = lambda n, label: {"data": torch.randn(n, 3, 8, 8, generator=g) * 0.5, "label": label}  # noqa: E731
    train = [batch(6, torch.arange(6) % 3) for _ in range(2)]
    val = [batch(4, torch.arange(4) % 3) for _ in range(2)]
    test = [batch(3, torch.full((3,), -1))]
    with pytest.raises(ConfigError, match="'train' loader"):
        pp.setup(net, {"val": val}, {})
    with pytest.warns(UserWarning, match="K=50 is more than the 12 fit images"):
        pp.setup(net, {"train": train, "val": val, "test": None}, {"val": test})
    _, conf, _ = pp.inference(net, test, progress=False)

    knn = get_postprocessor(str(openood_postprocessors()[1]), "knn", "cifar10")  # OpenOOD's own, run separately
    knn.K, adapter = 12, OpenOODNet(net)
    with cuda_calls_stay_put():
        knn.setup(adapter, {"train": train}, {})
        knn_val, knn_test = [-torch.cat([knn.postprocess(adapter, b["data"])[1] for b in s]).double()
                             for s in (val, test)]
    plain = DiffOOD(net, pp.engine.diffusion, pp.settings.replace(combine=None))
    c_val, c_test = [plain.score(torch.cat([b["data"] for b in s])).score.double() for s in (val, test)]
    expected = (c_test - c_val.mean()) / c_val.std() + 2.0 * (knn_test - knn_val.mean()) / knn_val.std()
    np.testing.assert_allclose(conf, -expected.numpy(), rtol=1e-4, atol=1e-4)
    calibration = pp.engine.calibration
    pp.args_dict = {"combine_weight_list": [0.5, 1.0]}
    pp.set_hyperparam([0.5])  # APS's weight: the same ID statistics, weighted again
    _, conf_half, _ = pp.inference(net, test, progress=False)
    assert pp.engine.calibration is calibration
    expected = (c_test - c_val.mean()) / c_val.std() + 0.5 * (knn_test - knn_val.mean()) / knn_val.std()
    np.testing.assert_allclose(conf_half, -expected.numpy(), rtol=1e-4, atol=1e-4)


def test_diffood_knn_config_resolves_by_name_and_names_its_results():
    from openood_diffood.openood.registry import config_path, postprocessor_config, postprocessor_from_config, \
        result_name

    pp = postprocessor_from_config("diffood_knn", None, "cifar10")
    assert pp.settings.combine == "knn" and pp.result_name == "diffood+knn"
    assert set(pp.args_dict) >= {"combine_weight_list"} and len(pp.args_dict["combine_weight_list"]) > 1
    assert config_path("diffood_knn").endswith("diffood_knn.yml")
    assert result_name("diffood", postprocessor_config("diffood", None, "cifar10")) == "diffood"
    overridden = postprocessor_config("diffood", None, "cifar10", {"postprocessor.postprocessor_args.combine": "vim"})
    assert result_name("diffood", overridden) == "diffood+vim" and result_name("knn", overridden) == "knn"
    from openood_diffood.openood.leaderboard import results_name  # eval_ood.py mode: pickles, scores, CSV

    args = argparse.Namespace(postprocessor="diffood_knn", config_root=None, id_data="cifar10")
    assert results_name(args, {}) == "diffood+knn"
    assert results_name(args, {"postprocessor.postprocessor_args.combine": None}) == "diffood_knn"


def test_the_studys_z_sum_is_the_engines_calibration():
    from benchmarks.cifar10_choices import z_sum

    rng = np.random.default_rng(0)
    val = [rng.normal(1, 2, 50), rng.normal(-3, 0.5, 50)]
    test = [rng.normal(2, 2, 7), rng.normal(-2, 0.5, 7)]
    by_hand = sum(w * (t - v.mean()) / v.std(ddof=1) for w, t, v in zip((1.0, 3.0), test, val))
    np.testing.assert_allclose(z_sum(val, weights=(1.0, 3.0))(test), by_hand, rtol=1e-5)
