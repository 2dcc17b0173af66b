"""The algorithm's two steps (reconstruct, then score), what a round trip's key covers, and the one cost rule."""
import warnings

import pytest
import torch

from conftest import write_tiny_diffusion
from openood_diffood import DiffOOD, DiffOODSettings, load_diffusion
from openood_diffood.method.diffood import (SCORING_ONLY, changes, network_evaluations, reconstruct,
                                            round_trip_settings)
from openood_diffood.method.features import as_classifier
from openood_diffood.method.noise import content_keys


def test_round_trip_key_has_every_field_but_the_scoring_only_ones():
    settings = DiffOODSettings()
    assert set(round_trip_settings(settings)) == set(DiffOODSettings.field_names()) - set(SCORING_ONLY)
    assert round_trip_settings(settings.replace(protocol="official")) != round_trip_settings(settings)
    for change in (dict(space="feature", threshold=0.5), dict(space="layer1"), dict(combine="energy")):
        assert round_trip_settings(settings.replace(**change)) == round_trip_settings(settings)
    explicit = settings.replace(mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.2435, 0.2616))
    assert round_trip_settings(explicit)["mean"] == round_trip_settings(settings)["mean"]


def test_scoring_only_settings_leave_the_round_trip_as_it_is(tiny_net, tiny_diffusion_dir, images):
    """What SCORING_ONLY claims: the space, its threshold, combine and its weight never change a reconstruction."""
    backend, net = load_diffusion(tiny_diffusion_dir), as_classifier(tiny_net)
    base = DiffOODSettings(timestep=100, stride=50, repeats=2)
    keys = content_keys(base.normalization.unnormalize(images))
    with torch.no_grad():
        ref = reconstruct(net, backend, images, keys, base)
        for other in (base.replace(space="feature", threshold=0.1),
                      base.replace(space="layer1", combine="knn", combine_weight=3.0)):
            trip = reconstruct(net, backend, images, keys, other)
            assert torch.equal(trip.reconstructions, ref.reconstructions) and torch.equal(trip.logits, ref.logits)
        official = reconstruct(net, backend, images, keys, base.replace(protocol="official"))
    assert ref.reference is None and official.reference.shape == ref.reconstructions.shape
    assert not torch.equal(official.reconstructions, ref.reconstructions)  # the network sees t - 1
    # the score step in several spaces at once equals it in each space alone
    with torch.no_grad():
        both = changes(net, images, ref, base, ["logit", "layer1"])
        alone = changes(net, images, ref, base.replace(space="layer1"))
    assert set(both) == {"logit", "layer1"} and torch.equal(both["layer1"], alone["layer1"])
    assert both["logit"].shape == (8, 2) and (both["logit"] > 0).all()


@pytest.fixture(scope="module")
def unconditional_dir(tmp_path_factory):
    return write_tiny_diffusion(tmp_path_factory.mktemp("uncond"), num_classes=None)


@pytest.mark.parametrize("solver", ["ddim", "dpmpp2m", "plms"])
def test_network_evaluations_are_the_network_calls_made(solver, tiny_net, tiny_diffusion_dir, unconditional_dir,
                                                        images):
    """network_evaluations(settings, model): one evaluation per step at w = 0 (null class only), at w = 1
    (conditional only) and with an unconditional model, two otherwise; times the solver's steps and the repeats."""
    x = images[:3]
    for model_dir, conditional in ((tiny_diffusion_dir, True), (unconditional_dir, False)):
        for w, timestep in ((0.0, 100), (1.0, 100), (3.0, 100), (3.0, 0)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # guidance on an unconditional model
                engine = DiffOOD(tiny_net, load_diffusion(model_dir), timestep=timestep, stride=50, repeats=2,
                                 guidance=w, solver=solver, batch_size=3)
            samples, network = [], engine.diffusion.network
            engine.diffusion.network = lambda z, t, labels: samples.append(z.shape[0]) or network(z, t, labels)
            engine.score(x)
            expected = {"ddim": 2, "dpmpp2m": 2, "plms": 3}[solver] if timestep else 0
            expected *= 2 * (2 if conditional and w == 3.0 else 1)
            assert network_evaluations(engine.settings, engine.diffusion) == expected, (conditional, w, timestep)
            assert sum(samples) == len(x) * expected, (conditional, w, timestep)
