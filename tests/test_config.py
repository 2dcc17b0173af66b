"""The one config model: strict keys, re-derived normalization, immutable settings, generated CLI flags."""
import argparse
import dataclasses

import pytest
import torch

from openood_diffood import DiffOOD, DiffOODSettings, RunOptions, cli
from openood_diffood.config import ConfigError, add_arguments, from_arguments, split_mapping
from openood_diffood.method.normalization import DATASET_STATS


def test_dataset_given_to_the_engine_sets_its_normalization(tiny_net, tiny_diffusion_dir):
    """DiffOOD(net, model, dataset='imagenet') normalized with CIFAR-10's statistics before (a silent bug)."""
    engine = DiffOOD(tiny_net, tiny_diffusion_dir, dataset="imagenet", timestep=40)
    assert (engine.settings.normalization.mean, engine.settings.normalization.std) == DATASET_STATS["imagenet"]
    view = engine.replace(dataset="cifar100")
    assert (view.settings.normalization.mean, view.settings.normalization.std) == DATASET_STATS["cifar100"]


def test_dataset_change_rederives_mean_and_std_unless_they_change_too():
    s = DiffOODSettings(mean=(0.5,), std=(0.25,))
    assert s.normalization.mean == (0.5,)
    assert s.replace(dataset="cifar100").normalization.mean == DATASET_STATS["cifar100"][0]
    assert s.replace(dataset="cifar100", mean=(0.1,), std=(0.2,)).normalization.mean == (0.1,)
    assert s.replace(timestep=200).normalization.mean == (0.5,)  # other changes keep explicit statistics


def test_unknown_keys_name_the_nearest_known_one():
    with pytest.raises(ConfigError, match="unknown config key 'timesteps' \\(did you mean 'timestep'\\?\\)"):
        split_mapping({"timesteps": 600})
    with pytest.raises(ConfigError, match="did you mean 'cache_dir'"):
        split_mapping({"cachedir": "x"})
    with pytest.raises(ConfigError, match="unknown config key 'stide'"):
        DiffOODSettings().replace(stide=10)
    settings, options = split_mapping({"timestep": 600, "batch_size": "auto", "diffusion": None})
    assert settings.timestep == 600 and options.batch_size == "auto" and options.diffusion is None


def test_postprocessor_args_are_strict_too(tmp_path):
    from openood_diffood.openood.compat import require_openood
    from openood_diffood.openood.postprocessor import DiffOODPostprocessor
    from openood_diffood.openood.registry import config_path

    Config = require_openood("openood.utils.config").Config
    config = Config(config_path("diffood"))
    config.postprocessor.postprocessor_args["timesteps"] = 600
    with pytest.raises(ConfigError, match="did you mean 'timestep'"):
        DiffOODPostprocessor(config)


def test_settings_are_immutable_and_checked_on_every_change():
    s = DiffOODSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.timestep = 10
    with pytest.raises(ConfigError, match="stride 20 is larger than timestep 10"):
        s.replace(timestep=10)
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        DiffOODSettings(repeats=0)
    assert RunOptions(batch_size="8").batch_size == 8 and RunOptions(compile="inductor").compile == "inductor"


def test_environment_overrides_the_run_options(monkeypatch):
    monkeypatch.setenv("DIFFOOD_DIFFUSION", "/models/cifar10")
    monkeypatch.setenv("DIFFOOD_CACHE_DIR", "/tmp/cache")
    options = RunOptions(diffusion="elsewhere").with_environment()
    assert (options.diffusion, options.cache_dir) == ("/models/cifar10", "/tmp/cache")


def test_cli_flags_are_generated_from_the_fields_and_their_help():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    text = parser.format_help()
    for cls in (DiffOODSettings, RunOptions):
        for f in dataclasses.fields(cls):
            if f.metadata["flag"] is None:
                continue
            flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
            assert flag in text, flag
            assert f.metadata["help"].split()[0] in text
    args = parser.parse_args(["--timestep", "120", "--stride", "40", "--resize", "--diffood-batch-size", "auto",
                              "--cache-dir", "c"])
    settings, options = from_arguments(args)
    assert (settings.timestep, settings.stride, settings.resize) == (120, 40, True)
    assert (options.batch_size, options.cache_dir) == ("auto", "c")


def test_eval_and_demo_parsers_take_the_generated_flags():
    parser = cli.build_parser()
    args = parser.parse_args(["eval", "--guidance", "6", "--solver", "plms", "--allow-untrained-timestep"])
    settings, options = from_arguments(args)
    assert settings.guidance == 6.0 and settings.solver == "plms" and options.allow_untrained_timestep
    demo = parser.parse_args(["demo", "--repeats", "2"])
    assert from_arguments(demo)[0].repeats == 2 and not hasattr(demo, "diffusion")


def test_importing_the_package_stays_light():
    """`import openood_diffood` (the start-up hook does it in every Python process) imports neither torch nor
    OpenOOD; the public names load on first use."""
    import subprocess
    import sys

    code = ("import sys, openood_diffood, openood_diffood.openood.hook; "
            "print(sorted(m for m in ('torch', 'openood', 'diffusers') if m in sys.modules)); "
            "openood_diffood.DiffOOD; print('torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["[]", "True"]


def test_the_readme_config_reference_lists_every_key():
    import re

    from conftest import REPO

    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text.split("## Config reference")[1].split("\n\n")[1]
    listed = {k for row in table.splitlines()[2:] for k in re.findall(r"`(\w+)`", row.split("|")[1])}
    fields = set(DiffOODSettings.field_names() + RunOptions.field_names())
    assert listed == fields, (sorted(fields - listed), sorted(listed - fields))


def test_replace_with_none_sets_none():
    """replace(field=None) / split_mapping({field: None}) used to keep the old value silently (issue 20)."""
    s = DiffOODSettings(space="feature", threshold=0.3, class_map=(2, 0, 1), combine="energy")
    for name in ("threshold", "class_map", "combine"):
        assert getattr(s.replace(**{name: None}), name) is None, name
    settings, options = split_mapping({"threshold": None, "cache_dir": None}, s, RunOptions(cache_dir="c"))
    assert settings.threshold is None and options.cache_dir is None
    with pytest.raises(ConfigError, match="timestep must be an integer, got None"):
        s.replace(timestep=None)


def test_engine_replace_unsets_the_class_map(tiny_net, tiny_diffusion_dir, images):
    """An engine view without class_map conditions on the predictions themselves, as a fresh engine does."""
    kw = dict(timestep=100, stride=50, repeats=1)
    mapped = DiffOOD(tiny_net, tiny_diffusion_dir, class_map=(2, 0, 1), **kw)
    plain_engine = DiffOOD(tiny_net, tiny_diffusion_dir, **kw)
    view = mapped.replace(class_map=None)
    assert view.settings.class_map is None
    torch.testing.assert_close(view.score(images).score, plain_engine.score(images).score, rtol=0, atol=0)
    assert not torch.equal(mapped.score(images).score, plain_engine.score(images).score)


def test_yaml_null_keeps_the_base_value(tmp_path):
    """In a --config yml, ``null`` means "not set here": the base (the dataclass default or a flag) stays."""
    yml = tmp_path / "c.yml"
    yml.write_text("timestep: 200\ncache_dir: null\nthreshold: null\n")
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_arguments(parser)
    settings, options = from_arguments(parser.parse_args(["--config", str(yml)]),
                                       DiffOODSettings(space="feature", threshold=0.3), RunOptions(cache_dir="c"))
    assert (settings.timestep, settings.threshold, options.cache_dir) == (200, 0.3, "c")


def test_postprocessor_can_unset_the_class_map(tmp_path, tiny_net, tiny_diffusion_dir, images):
    """pp.settings without class_map used to leave the engine scoring with the old map."""
    from test_openood import diffood_postprocessor

    pp = diffood_postprocessor(tmp_path, tiny_diffusion_dir)
    pp.settings = pp.settings.replace(timestep=100, stride=50, repeats=1, class_map=(2, 0, 1))
    pp.setup(tiny_net)
    mapped = pp.postprocess(tiny_net, images)[1]
    pp.settings = pp.settings.replace(class_map=None)
    unmapped = pp.postprocess(tiny_net, images)[1]
    assert pp.engine.settings.class_map is None
    expected = DiffOOD(tiny_net, tiny_diffusion_dir, pp.settings).score(images).score
    torch.testing.assert_close(unmapped, -expected, rtol=0, atol=0)
    assert not torch.equal(mapped, unmapped)


def test_a_misspelt_keyword_names_the_nearest_field():
    """DiffOODSettings(timestpe=100) was Python's bare TypeError (issue 19)."""
    with pytest.raises(ConfigError, match="unknown config key 'timestpe' \\(did you mean 'timestep'\\?\\)"):
        DiffOODSettings(timestpe=100)
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        RunOptions(batchsize=8)
    assert DiffOODSettings(timestep=100).timestep == 100


def test_checks_and_flags_come_from_the_annotations():
    """Issue 20: a field is its annotation plus help: Literal choices come from the modules that own them, bounds
    from Annotated[..., Ge(n)], and add_arguments makes the flag's choices and type from the same annotation."""
    from openood_diffood.method.diffood import PROTOCOLS
    from openood_diffood.method.features import SPACES
    from openood_diffood.method.solvers import SOLVERS
    from openood_diffood.runtime.execution import PRECISIONS

    for name, owner in (("solver", tuple(SOLVERS)), ("precision", PRECISIONS), ("protocol", PROTOCOLS)):
        with pytest.raises(ConfigError, match=f"^{name} must be one of {', '.join(owner)}, got 'x'$"):
            DiffOODSettings(**{name: "x"})
    with pytest.raises(ConfigError, match=f"space must be one of {', '.join(SPACES)} or layer<k>"):
        DiffOODSettings(space="logits")
    with pytest.raises(ConfigError, match="^seed must be >= 0, got -1$"):
        DiffOODSettings(seed=-1)
    with pytest.raises(ConfigError, match="^combine_weight must be >= 0, got -0.5$"):
        DiffOODSettings(combine_weight=-0.5)
    assert DiffOODSettings(seed=0).seed == 0 and DiffOODSettings(guidance="0").guidance == 0.0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    actions = {a.dest: a for a in parser._actions}
    assert tuple(actions["solver"].choices) == tuple(SOLVERS) and tuple(actions["protocol"].choices) == PROTOCOLS
    assert actions["repeats"].type("3") == 3 and actions["stride"].choices is None
    with pytest.raises(argparse.ArgumentTypeError, match="repeats must be >= 1, got 0"):
        actions["repeats"].type("0")
    assert isinstance(actions["resize"], argparse.BooleanOptionalAction)
