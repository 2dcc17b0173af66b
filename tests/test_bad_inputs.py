"""Bad input fails fast with one ``error: <problem>; <fix>`` line (exit status 2, no traceback), and an interrupted
run loses nothing: a table of bad inputs to ``eval`` and ``train``, the Python API, Ctrl-C, the figures."""
import json
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import rgb_images, save_npz, write_tiny_diffusion
from openood_diffood import DiffOOD, cli
from openood_diffood.models.networks import cifar_resnet

NORM = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
FAST = ["--timestep", "100", "--stride", "50", "--repeats", "1"]


def eval_args(tiny, *extra, norm=NORM, arch="cifar_resnet20", **specs):
    specs = {"--ckpt": tiny["ckpt"], "--id-test": tiny["id"], "--near": f"n={tiny['near']}",
             "--far": f"f={tiny['far']}", "--fit-data": tiny["fit"], **specs}
    args = ["eval", "--arch", arch, "--postprocessor", "msp", "--no-plots", "--no-progress", *norm]
    for k, v in specs.items():
        if v is not None:
            args += [k, v]
    return args + list(extra)


class _Code:
    """A checkpoint holding a pickled object besides tensors."""


def _bad_inputs(tiny, tmp_path):
    """problem -> (arguments, expected fragment of the one error line)."""
    grey = save_npz(tmp_path / "grey.npz", rgb_images(6, 4)[..., :1], np.arange(6) % 3)
    torch.save({"state_dict": cifar_resnet(20, 3).state_dict(), "extra": _Code()}, tmp_path / "code.pt")
    np.savez(tmp_path / "empty.npz", images=np.zeros((0, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "objects.npz", images=np.array([{"a": 1}], dtype=object))
    weightless = write_tiny_diffusion(tmp_path / "weightless")
    (weightless / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    capped = write_tiny_diffusion(tmp_path / "capped")
    (capped / "README.md").write_text("| setting | value |\n|---|---|\n| max_timestep | `600` |\n")
    wide = save_npz(tmp_path / "wide.npz", rgb_images(6, 5, size=12), np.arange(6) % 3)
    return {
        "missing diffusion dir": (eval_args(tiny, "--postprocessor", "diffood", "--diffusion", "runs/my_diff"),
                                  "diffusion model directory 'runs/my_diff' does not exist"),
        "arch": ([a if a != "cifar_resnet20" else "cifar_resnet32" for a in eval_args(tiny)],
                 "does not fit --arch cifar_resnet32"),
        "num classes": (eval_args(tiny, "--num-classes", "5"), "--num-classes 5 does not match"),
        "cuda without a GPU": (eval_args(tiny, "--device", "cuda"), "CUDA is not available here; use --device cpu"),
        "grey sets, RGB classifier": (eval_args(tiny, "--mean", "0.5", "--std", "0.25",
                                                **{"--id-test": grey, "--near": f"n={grey}", "--far": None,
                                                   "--fit-data": None}),
                                      "it takes 3 channel(s): give the ID test set with 3 channel(s) (grey images "
                                      "repeated to RGB) and 3-value --mean/--std"),
        "grey ID set, RGB statistics": (eval_args(tiny, norm=(), **{"--id-test": grey, "--near": f"n={grey}",
                                                                    "--far": None, "--fit-data": None}),
                                        "has 1 channel(s) but the normalization 3 value(s); give 1-value "
                                        "--mean/--std"),
        "misspelt method": (eval_args(tiny, "--postprocessor", "difood"),
                            "unknown baseline 'difood' (did you mean 'diffood'?)"),
        "misspelt id data": (eval_args(tiny, "--id-data", "cifar-10", norm=(), arch="resnet18_32x32"),
                             "unknown --id-data 'cifar-10' (did you mean 'cifar10'?); known: cifar10, cifar100, "
                             "imagenet, imagenet200; for other data give --mean and --std"),
        "missing local-looking dir": (eval_args(tiny, "--postprocessor", "diffood", "--diffusion", "./my_diff"),
                                      "diffusion model directory './my_diff' does not exist"),
        "checkpoint with code": (eval_args(tiny, **{"--ckpt": str(tmp_path / "code.pt")}),
                                 "holds pickled Python objects besides tensors, so it was not loaded"),
        "empty npz": (eval_args(tiny, **{"--near": f"n={tmp_path / 'empty.npz'}"}), "holds no images"),
        "object arrays": (eval_args(tiny, **{"--near": f"n={tmp_path / 'objects.npz'}"}), "holds object arrays"),
        "size vs diffusion model": (eval_args(tiny, "--postprocessor", "diffood", "--diffusion", str(tiny["root"] /
                                              "diffusion"), *FAST, **{"--id-test": wide, "--near": None,
                                                                      "--far": f"f={wide}", "--fit-data": None}),
                                    "works at 8x8: resize the inputs to 8x8 or set resize (--resize"),
        "weights missing": (eval_args(tiny, "--postprocessor", "diffood", "--diffusion", str(weightless), *FAST),
                            "missing unet/diffusion_pytorch_model.safetensors (the weights)"),
        "untrained timestep": (eval_args(tiny, "--postprocessor", "diffood", "--diffusion", str(capped),
                                         "--timestep", "800", "--stride", "100"),
                               "allow_untrained_timestep (--allow-untrained-timestep)"),
        "fit data for knn": (eval_args(tiny, "--postprocessor", "diffood", "knn", "--diffusion", str(tiny["root"] /
                                       "diffusion"), *FAST, **{"--fit-data": None}),
                             "knn is fitted on ID training images: give --fit-data"),
    }


PROBLEMS = ["missing diffusion dir", "missing local-looking dir", "arch", "num classes", "cuda without a GPU",
            "grey sets, RGB classifier", "grey ID set, RGB statistics", "misspelt method", "misspelt id data",
            "checkpoint with code", "empty npz", "object arrays", "size vs diffusion model", "weights missing",
            "untrained timestep", "fit data for knn"]


@pytest.mark.parametrize("problem", PROBLEMS)
def test_bad_eval_input_is_one_error_line_before_any_scoring(tiny, tmp_path, capsys, monkeypatch, problem):
    if problem == "cuda without a GPU" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")  # CI machines have none: the case always runs there
    args, fragment = _bad_inputs(tiny, tmp_path)[problem]
    (tmp_path / "runs").mkdir()  # so that runs/my_diff reads as a local path, not a hub id
    monkeypatch.chdir(tmp_path)
    scored = []
    monkeypatch.setattr(DiffOOD, "_score", lambda *a, **k: scored.append(1) or pytest.fail("scored"))
    started = time.perf_counter()
    code = cli.main(args + ["--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert "Traceback" not in err and not scored and not (tmp_path / "out" / "metrics.csv").exists()
    assert time.perf_counter() - started < 60  # no network retries


@pytest.mark.parametrize("flag,value,fragment", [
    ("--limit", "-3", ">= 1"), ("--limit", "0", ">= 1"), ("--batch-size", "0", ">= 1"),
    ("--diffood-batch-size", "0", ">= 1"), ("--fit-limit", "0", ">= 1"), ("--guidance", "-2", "guidance must be >= 0"),
    ("--solver", "euler", "solver must be one of ddim, dpmpp2m, plms"), ("--space", "logits", "space must be one of"),
    ("--near", "cifar100:file.npz", "'cifar100:file.npz' is not a file; name a set as NAME=PATH: cifar100=file.npz"),
])
def test_argparse_rejects_nonsense_values(tiny, capsys, flag, value, fragment):
    with pytest.raises(SystemExit) as exc:
        cli.main(eval_args(tiny, flag, value))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and f"argument {flag}: " in err and fragment in err.splitlines()[-1]


def test_hub_id_offline_fails_within_seconds_and_says_how_to_give_a_directory(monkeypatch):
    from openood_diffood.models.loading import load_diffusion

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    started = time.perf_counter()
    with pytest.raises(OSError, match="download it where there is a network.*pass that directory"):
        load_diffusion("openood-diffood-tests/no-such-model")
    assert time.perf_counter() - started < 20


def test_typo_in_a_config_key_names_the_nearest_one(tiny, tmp_path, capsys):
    config = tmp_path / "diffood.yml"
    config.write_text("postprocessor:\n  postprocessor_args:\n    timesteps: 600\n")
    assert cli.main(eval_args(tiny, "--config", str(config))) == 2
    assert "unknown config key 'timesteps' (did you mean 'timestep'?)" in capsys.readouterr().err


def test_grey_ood_sets_are_made_rgb_with_a_warning(tiny, tmp_path, capsys):
    grey = save_npz(tmp_path / "grey.npz", rgb_images(6, 4)[..., :1])
    code = cli.main(eval_args(tiny, "--out", str(tmp_path / "out"), **{"--far": f"g={grey}"}))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "warning: grey set(s) g repeated to three channels" in captured.err


def test_api_warns_once_about_inputs_that_were_never_normalized(tiny_net, tiny_diffusion_dir, images):
    engine = DiffOOD(tiny_net, tiny_diffusion_dir, timestep=40, stride=20, repeats=1)
    x01 = engine.settings.normalization.unnormalize(images).clamp(0, 1)
    with pytest.warns(UserWarning, match="never normalized"):
        engine.score(x01)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        engine.score(images)  # properly normalized inputs: no warning
    assert not [w for w in seen if "never normalized" in str(w.message)]


def test_ctrl_c_keeps_finished_methods_and_says_how_to_resume(tiny, tmp_path, capsys, monkeypatch):
    from openood_diffood.evaluate import baselines

    out = tmp_path / "out"
    args = eval_args(tiny, "--postprocessor", "msp", "ebo", "--baseline-backend", "pytorch-ood", "--out", str(out))
    original = baselines.PytorchOODBaseline.score
    calls = []

    def interrupted(self, *a, **k):
        calls.append(self.name)
        if self.name == "ebo":
            raise KeyboardInterrupt
        return original(self, *a, **k)

    monkeypatch.setattr(baselines.PytorchOODBaseline, "score", interrupted)
    assert cli.main(args) == 130
    err = capsys.readouterr().err
    assert f"interrupted: finished scores are kept in {out / 'cache'}; run the same command again to resume: " \
           "python -m openood_diffood" in err
    done = json.loads((out / "metrics.json").read_text())
    assert list(done["methods"]) == ["msp"]  # written when msp finished, before the interruption
    calls.clear()
    monkeypatch.setattr(baselines.PytorchOODBaseline, "score", lambda self, *a, **k: calls.append(self.name) or
                        original(self, *a, **k))
    assert cli.main(args) == 0
    assert set(calls) == {"ebo"}  # msp's three sets came from the cache
    assert list(json.loads((out / "metrics.json").read_text())["methods"]) == ["msp", "ebo"]


def test_eval_keeps_diffood_scores_in_the_cache_dir_from_the_environment(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFOOD_CACHE_DIR", str(tmp_path / "shared_cache"))
    args = eval_args(tiny, "--postprocessor", "diffood", "--diffusion", str(tiny["root"] / "diffusion"), *FAST,
                     "--out", str(tmp_path / "out"))
    assert cli.main(args) == 0, capsys.readouterr().err
    assert list((tmp_path / "shared_cache").glob("*/unit-*.npz")) and not (tmp_path / "out" / "cache").exists()
    monkeypatch.setattr(DiffOOD, "_score", lambda *a, **k: pytest.fail("recomputed a cached score"))
    assert cli.main(args) == 0


def test_train_ctrl_c_leaves_no_temporary_checkpoint_and_resume_says_the_step(tmp_path, capsys, monkeypatch):
    from openood_diffood.train import trainer as trainer_module

    data = save_npz(tmp_path / "data.npz", rgb_images(24, 0)[..., :1], np.arange(24) % 3)
    argv = ["train", data, "-o", str(tmp_path / "run"), "--block-out-channels", "8", "16", "--norm-groups", "4",
            "--layers-per-block", "1", "--attention-levels", "--steps", "6", "--batch-size", "8",
            "--checkpoint-every", "2", "--max-timestep", "50", "--warmup-steps", "1", "--no-progress"]
    step = trainer_module.Trainer.train_step

    def stop_at_three(self):
        if self.step == 3:
            (Path(self.checkpoint_dir) / "step_000004.tmp").mkdir()  # as if killed while writing a checkpoint
            raise KeyboardInterrupt
        return step(self)

    monkeypatch.setattr(trainer_module.Trainer, "train_step", stop_at_three)
    monkeypatch.setattr("sys.argv", ["python -m openood_diffood", *argv])
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 130 and "interrupted at step 3" in err and "--resume" in err.splitlines()[-1]
    assert not list((tmp_path / "run" / "checkpoints").glob("*.tmp"))
    assert (tmp_path / "run" / "checkpoints" / "step_000002" / "trainer_state.pt").is_file()
    monkeypatch.setattr(trainer_module.Trainer, "train_step", step)
    assert cli.main(argv + ["--resume"]) == 0
    assert "resuming from step 2 of 6" in capsys.readouterr().err


def test_train_help_shows_the_defaults_that_say_something(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 100000)" in out and "(default: 0.0002)" in out and "(default: <output>/checkpoints)" in out
    assert "(default: True)" not in out and "(default: False)" not in out and "(default: None)" not in out


def test_demo_help_and_readme_give_the_same_time(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    listed = " ".join(capsys.readouterr().out.split())
    assert f"demo the small benchmark shipped with the package ({cli.DEMO_TIME})" in listed
    took = cli.DEMO_TIME.split("about ")[1].split(" on ")[0]  # "35 s"
    assert f"it takes about {took}" in " ".join(readme.split())


def test_histogram_panels_are_labelled_with_threshold_and_log_scale_for_spikes():
    import matplotlib.pyplot as plt

    from openood_diffood.evaluate.plots import histogram_panel

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots()
    spike = np.r_[np.full(400, -1.0), rng.uniform(-1, -0.4, 40)]  # MSP's pile-up at -1
    histogram_panel(ax, "msp", spike, rng.uniform(-1, -0.3, 200), "ood")
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "score" and ax.get_ylabel().startswith("density")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[:2] == ["ID", "ood"] and labels[2].startswith("FPR@95 threshold")
    plt.close(fig)
