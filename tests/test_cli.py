"""``python -m openood_diffood eval`` / ``demo`` end to end on tiny inputs, OpenOOD data roots, and bad inputs."""
import csv
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, rgb_images, save_npz
from openood_diffood import cli

METHODS = ["diffood", "msp", "ebo", "mls", "react", "vim", "knn"]
NORM = ["--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25"]
FAST = ["--timestep", "100", "--stride", "50", "--repeats", "1", "--no-progress"]


def _summary(stdout: str) -> dict:
    """The summary table (last block of stdout): method -> its five numbers (means where cells are mean +- std)."""
    block = stdout.strip().split("\n\n")[-1].splitlines()
    assert block[0].split()[0] == "method"
    table = {}
    for line in block[1:]:
        name, *cells = line.split()
        values = [float(v) for v in cells if v != "\u00b1"]
        table[name] = values[::2] if "\u00b1" in cells else values
    return table


def test_eval_end_to_end(tiny, tmp_path):
    out = tmp_path / "out"
    # the near set carries labels of its own (0..11, as CIFAR-100's 0..99 against 10 ID classes): they name no ID
    # class, so no figure may index the ID classes with them (this crashed at the very end, after all the scoring)
    near = save_npz(tmp_path / "near_labelled.npz", rgb_images(12, 1, shift=40), np.arange(12))
    cmd = [sys.executable, "-m", "openood_diffood", "eval", "--ckpt", tiny["ckpt"], "--arch", "cifar_resnet20",
           "--diffusion", str(tiny["root"] / "diffusion"), "--id-test", f"digits={tiny['id']}",
           "--near", f"nearset={near}", "--far", f"farset={tiny['far']}", "--fit-data", tiny["fit"],
           "--out", str(out), "--save-score", "--save-csv", "--baseline-backend", "pytorch-ood", *NORM, *FAST]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    assert "not written" not in res.stderr  # every figure made it
    table = _summary(res.stdout)
    assert list(table) == METHODS
    assert all(len(v) == 5 and all(math.isfinite(x) for x in v) for v in table.values())
    for m in METHODS:  # OpenOOD's per-method table
        assert f"== {m}\n" in res.stdout
    assert "nearset" in res.stdout and "farood" in res.stdout
    # KNN's K=50 meets only 60 fit images, ViM's dim=256 a 64-dim feature: both say so
    assert "K=50 exceeds the ~20 fit images per class" in res.stderr and "ViM: dim=256" in res.stderr

    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert {r["method"] for r in rows} == set(METHODS) and {r["run"] for r in rows} == {"best"}
    assert all(0 <= float(r["AUROC"]) <= 100 for r in rows)
    payload = json.load(open(out / "metrics.json"))
    assert payload["runs"] == ["best"] and payload["settings"]["timestep"] == 100
    assert payload["settings"]["mean"] == [0.5, 0.5, 0.5]
    assert payload["run_details"]["best"]["backends"]["knn"] == "pytorch-ood"
    for png in ("hist_nearset.png", "hist_farset.png", "reconstructions.png"):
        assert (out / png).stat().st_size > 10_000
    scores = np.load(out / "scores" / "best" / "diffood.npz")
    assert scores["id.conf"].shape == (12,) and scores["near.nearset.conf"].shape == (12,)
    assert (scores["id.conf"] <= 0).all()  # conf = -score and DiffOOD scores are >= 0
    assert (out / "ood" / "knn.csv").is_file()  # OpenOOD's --save-csv place, under --out


def _run_main(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _eval_args(tiny, **replace):
    specs = {"--ckpt": tiny["ckpt"], "--id-test": tiny["id"], "--near": f"n={tiny['near']}",
             "--far": f"f={tiny['far']}", "--fit-data": tiny["fit"], **replace}
    args = ["eval", "--arch", "cifar_resnet20", "--postprocessor", "msp", "--no-plots", *NORM, "--no-progress"]
    for k, v in specs.items():
        if v is not None:
            args += [k, v]
    return args


@pytest.mark.parametrize("problem, match", [
    ("labels", "labels 0..5 but the classifier has 3 classes"),
    ("sizes", "images of mixed sizes"),
    ("missing", "does not exist"),
    ("no_images", "has no 'images' array"),
    ("baseline", "unknown baseline 'nosuchbaseline'"),
    ("arch", "does not fit --arch cifar_resnet32"),
    ("no_diffusion", "method 'diffood' needs a diffusion model"),
])
def test_bad_inputs_get_clear_errors(tiny, tmp_path, capsys, problem, match):
    args = {
        "labels": _eval_args(tiny, **{"--id-test": save_npz(tmp_path / "bad.npz", rgb_images(6, 5),
                                                            [0, 1, 2, 5, 0, 1])}),
        "sizes": _eval_args(tiny, **{"--far": f"f={save_npz(tmp_path / 'small.npz', rgb_images(6, 5, size=6))}"}),
        "missing": _eval_args(tiny, **{"--near": f"n={tmp_path / 'nowhere.npz'}"}),
        "no_images": _eval_args(tiny, **{"--near": "n=" + save_npz(tmp_path / "x.npz", rgb_images(2, 0))
                                         .replace("x.npz", "y.npz")}),
        "baseline": _eval_args(tiny) + ["--postprocessor", "msp", "nosuchbaseline"],
        "arch": [a if a != "cifar_resnet20" else "cifar_resnet32" for a in _eval_args(tiny)],
        "no_diffusion": _eval_args(tiny) + ["--postprocessor", "diffood"],
    }[problem]
    if problem == "no_images":
        np.savez(tmp_path / "y.npz", pixels=rgb_images(2, 0))
    code, _, err = _run_main(args, capsys)
    assert code == 2 and err.startswith("error: ") and match in err, err  # fails before any scoring
    if problem == "baseline":
        assert "available are" in err and "msp" in err


def test_ood_set_identical_to_id_set_warns_and_still_runs(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = _run_main(_eval_args(tiny, **{"--near": f"same={tiny['id']}"}) + ["--out", str(out)], capsys)
    assert code == 0, err
    assert "warning: 12 of 12 images of near OOD set 'same' are also in the ID test set" in err
    assert _summary(stdout)["msp"][0] == pytest.approx(50.0)  # identical sets: AUROC 50


@pytest.mark.parametrize("given, command", [
    (["--root", "results/c10", "--postprocessor", "vim"],
     "python -m openood.main --root results/c10 --id-data cifar10 --postprocessor vim"),
    (["--data-root", "./data", "--id-data", "cifar100"],
     "python -m openood.main --root RUNS --id-data cifar100 --postprocessor NAME --data-root ./data"),
])
def test_eval_refuses_openood_layout_and_names_openood_main(capsys, given, command):
    code, _, err = _run_main(["eval", *given], capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and lines[0].endswith(command), err


def test_settings_come_from_defaults_then_config_then_flags(tmp_path):
    from openood_diffood import config
    from openood_diffood.openood.registry import config_path

    parser = cli.build_parser()
    args = parser.parse_args(["eval", "--config", config_path("diffood"), "--guidance", "1.5"])
    settings, options = config.from_arguments(args)
    assert (settings.timestep, settings.guidance, settings.repeats) == (300, 1.5, 4)  # diffood.yml, then the flag
    assert options.batch_size == 64 and options.diffusion is None
    flat = tmp_path / "flat.yml"
    flat.write_text("timestep: 120\nstride: 40\nspace: feature\nthreshold: 0.5\nbatch_size: auto\ncompile: true\n"
                    f"channels_last: true\ncache_dir: {tmp_path / 'cache'}\n")
    settings, options = config.from_arguments(parser.parse_args(["eval", "--config", str(flat), "--repeats", "2"]))
    assert (settings.timestep, settings.stride, settings.space, settings.threshold, settings.repeats) == \
        (120, 40, "feature", 0.5, 2)
    # the run options of --config are honoured (batch_size: auto used to crash, the others were ignored)
    assert (options.batch_size, options.compile, options.channels_last, options.cache_dir) == \
        ("auto", True, True, str(tmp_path / "cache"))
    flags = parser.parse_args(["eval", "--config", str(flat), "--diffood-batch-size", "8", "--compile", "false"])
    assert config.from_arguments(flags)[1].batch_size == 8 and config.from_arguments(flags)[1].compile is False
    with pytest.raises(ValueError, match="does not exist"):
        config.from_arguments(parser.parse_args(["eval", "--config", str(tmp_path / "none.yml")]))
    typo = tmp_path / "typo.yml"
    typo.write_text("postprocessor:\n  postprocessor_args:\n    timesteps: 600\n")
    with pytest.raises(ValueError, match="unknown config key 'timesteps' \\(did you mean 'timestep'\\?\\)"):
        config.from_arguments(parser.parse_args(["eval", "--config", str(typo)]))


def test_classifier_loading_reads_the_class_count(tiny, tmp_path):
    from openood_diffood.models.classifiers import build_classifier, load_classifier

    net = load_classifier("cifar_resnet20", tiny["ckpt"])
    assert net.linear.out_features == 3 and not net.training
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match="has no 'fc.weight'"):
        load_classifier("resnet18", str(tmp_path / "linear.pt"))
    with pytest.raises(ValueError, match="unknown --arch 'resnet_9000'"):
        build_classifier("resnet_9000", 10)


def test_limit_picks_the_same_subset_whatever_else_is_loaded():
    from openood_diffood.evaluate.benchmark import ImageSet

    s = ImageSet("tin", rgb_images(50, 0), np.arange(50) % 5)
    a, b = s.limited(10, seed=0), s.limited(10, seed=0)
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels) and len(a.images) == 10
    assert not np.array_equal(s.limited(10, seed=1).images, a.images)
    assert s.limited(None, 0) is s and s.limited(80, 0) is s


def test_fsood_counts_csid_sets_as_id(tiny, tmp_path, capsys):
    csid = save_npz(tmp_path / "csid.npz", rgb_images(6, 7, shift=20), np.arange(6) % 3)
    out = tmp_path / "out"
    code, _, err = _run_main(_eval_args(tiny) + ["--fsood", "--csid", f"shifted={csid}", "--out", str(out),
                                                 "--save-score", "--save-csv"], capsys)
    assert code == 0, err
    scores = np.load(out / "scores" / "best" / "msp.npz")
    assert scores["id.conf"].shape == (18,) and scores["id.label"].shape == (18,)  # 12 ID + 6 csid
    assert (out / "fsood" / "msp.csv").is_file()
    code, _, err = _run_main(_eval_args(tiny) + ["--fsood"], capsys)
    assert code == 2 and "--fsood needs covariate-shifted ID sets" in err


def test_eval_without_model_or_data_arguments_runs_the_demo(monkeypatch):
    from openood_diffood.evaluate import command

    calls = []
    monkeypatch.setattr(command, "demo_main", lambda args: calls.append(args) or [])
    assert cli.main(["eval", "--limit", "5", "--postprocessor", "msp"]) == 0
    assert len(calls) == 1 and calls[0].limit == 5
    assert cli.main(["eval", "--limit", "5", "--id-test", "x.npz"]) == 2 and len(calls) == 1  # data given: no demo


#: The demo's table (README): DiffOOD beats max-softmax by 2.5 near-OOD and 23 far-OOD AUROC points; these margins
#: leave room for the last digit of the arithmetic but not for a method that stopped working.
DEMO_MARGIN_NEAR, DEMO_MARGIN_FAR = 1.5, 15.0


@pytest.mark.slow
def test_demo_end_to_end(tmp_path):
    """The shipped demo as `make demo` runs it: every method, every image, and DiffOOD ahead of MSP."""
    out = tmp_path / "demo"
    res = subprocess.run([sys.executable, "-m", "openood_diffood", "demo", "--out", str(out), "--no-progress"],
                         capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stderr[-3000:]
    table = _summary(res.stdout)
    assert list(table) == METHODS
    assert all(len(v) == 5 and all(math.isfinite(x) for x in v) for v in table.values())
    near, far = (table["diffood"][i] - table["msp"][i] for i in (0, 1))
    assert near >= DEMO_MARGIN_NEAR and far >= DEMO_MARGIN_FAR, table
    payload = json.load(open(out / "metrics.json"))
    assert payload["command"] == "demo" and payload["set_sizes"]["id:digits_0-5"] == 300
    for name in ("metrics.csv", "reconstructions.png", "hist_digits_6-9.png", "hist_photo_patches.png"):
        assert (out / name).is_file()


def test_eval_with_openood_postprocessors(tiny, tmp_path):
    """With OpenOOD importable, eval's baselines are OpenOOD's own postprocessors (ODIN takes input gradients),
    fitted on one shared pass over the fit set and, under --no-progress, without OpenOOD's bars and prints."""
    out = tmp_path / "out"
    methods = ["msp", "knn", "odin", "react", "vim"]
    args = _eval_args(tiny) + ["--postprocessor", *methods, "--baseline-backend", "openood", "--out", str(out)]
    code = textwrap.dedent(f"""
        import sys, openood_shims; openood_shims.install()
        from openood_diffood.evaluate import command
        seen, load = [], command.load_classifier
        def counted(*args, **kwargs):
            net = load(*args, **kwargs)
            net.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
            return net
        command.load_classifier = counted
        from openood_diffood.cli import main
        status = main({args!r})
        print("FIT PASSES", seen.count(60))
        sys.exit(status)
    """)
    tests = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join([tests, str(REPO)])})
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(_summary(res.stdout.split("FIT PASSES")[0])) == methods
    assert res.stdout.split("FIT PASSES")[1].split() == ["1"]  # knn, react and vim share one pass
    for noise in ("Setup:", "Extracting id training feature"):
        assert noise not in res.stdout + res.stderr
    payload = json.load(open(out / "metrics.json"))
    assert set(payload["run_details"]["best"]["backends"].values()) == {"openood"}


def test_a_figure_that_fails_is_one_warning_after_every_result_file(tiny, tmp_path, capsys, monkeypatch):
    from openood_diffood.evaluate import command

    def broken(*args, **kwargs):
        raise RuntimeError("no display\nsecond line of the message")

    monkeypatch.setattr(command.plots, "score_histograms", broken)
    out = tmp_path / "out"
    args = [a for a in _eval_args(tiny) if a != "--no-plots"] + ["--out", str(out), "--save-csv", "--save-score"]
    code, stdout, err = _run_main(args, capsys)
    assert code == 0, err
    assert list(_summary(stdout)) == ["msp"]  # the table is printed
    for name in ("metrics.csv", "metrics.json", "ood/msp.csv", "scores/best/msp.npz"):
        assert (out / name).is_file(), name
    warned = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warned == ["warning: score histograms not written (RuntimeError: no display); the table and result "
                      "files above are complete"], err


def _count_batches(monkeypatch) -> list:
    """The size of every batch the classifier loaded by ``eval`` sees (the fit set of 60 is one batch of 60)."""
    from openood_diffood.evaluate import command

    seen, load = [], command.load_classifier

    def counted(*args, **kwargs):
        net = load(*args, **kwargs)
        net.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
        return net

    monkeypatch.setattr(command, "load_classifier", counted)
    return seen


def test_fit_set_goes_through_the_classifier_once_for_react_vim_knn(tiny, capsys, monkeypatch, tmp_path):
    seen = _count_batches(monkeypatch)
    args = _eval_args(tiny) + ["--postprocessor", "react", "vim", "knn", "--baseline-backend", "pytorch-ood",
                               "--out", str(tmp_path / "out")]
    code, stdout, err = _run_main(args, capsys)
    assert code == 0, err
    assert list(_summary(stdout)) == ["react", "vim", "knn"]
    assert seen.count(60) == 1, seen  # 60 fit images, one batch, one pass shared by the three


def test_eval_leaves_its_arguments_as_parsed(tiny, tmp_path, capsys, monkeypatch):
    from openood_diffood.evaluate.command import eval_main

    args = cli.build_parser().parse_args(_eval_args(tiny))
    parsed = dict(vars(args))
    monkeypatch.chdir(tmp_path)  # the default --out (runs/eval) lands here
    eval_main(args)
    assert vars(args) == parsed and (tmp_path / "runs" / "eval" / "metrics.csv").is_file()


def test_arch_trained_with_imagenet_statistics_gets_them_and_says_so(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    args = [a for a in _eval_args(tiny) if a not in NORM] + ["--out", str(out)]
    code, _, err = _run_main(args, capsys)
    assert code == 0, err
    from openood_diffood.method.normalization import DATASET_STATS

    mean, std = DATASET_STATS["imagenet"]
    payload = json.load(open(out / "metrics.json"))
    assert payload["settings"]["mean"] == list(mean) and payload["settings"]["std"] == list(std)
    said = [line for line in err.splitlines() if line.startswith("normalization: ")]
    assert said == [f"normalization: mean {list(mean)}, std {list(std)} (cifar_resnet20's own (imagenet's, which "
                    "its weights were trained with); --mean/--std override it)"], err


def test_ood_images_are_captioned_with_their_set_never_an_id_class(tiny_net, tiny_diffusion_dir, monkeypatch,
                                                                   tmp_path):
    from openood_diffood import DiffOOD
    from openood_diffood.evaluate import benchmark as bm
    from openood_diffood.method.normalization import Normalization

    ood = {"near": [bm.ImageSet("cifar100", rgb_images(4, 1), np.array([7, 99, 42, 3]))],  # 0..99 vs 3 classes
           "far": [bm.ImageSet("openood_list", rgb_images(4, 2), np.full(4, -1))]}  # OpenOOD's OOD label
    bench = bm.Benchmark(bm.ImageSet("id", rgb_images(4, 0), np.arange(4) % 3, ["cat", "dog", "frog"]), ood,
                         Normalization((0.5,) * 3, (0.25,) * 3))
    assert all(s.labels is None and s.classes is None for sets in bench.ood.values() for s in sets)
    captured = {}
    monkeypatch.setattr(bm.plots, "reconstruction_grid",
                        lambda path, images, recs, scores, titles, rec_titles, suptitle: captured.update(t=titles))
    engine = DiffOOD(tiny_net, tiny_diffusion_dir, timestep=40, stride=20, repeats=1, mean=(0.5,) * 3,
                     std=(0.25,) * 3)
    bm.reconstruction_figure(str(tmp_path / "r.png"), engine, bench, per_set=2)
    titles = captured["t"]
    assert [t.split("\n")[0] for t in titles] == ["id (ID)"] * 3 + ["cifar100 (near)"] * 2 + ["openood_list (far)"] * 2
    assert all(t.split("\n")[1].startswith("true ") for t in titles[:3])
    assert all(t.split("\n")[1].startswith("OOD, pred ") for t in titles[3:])


def test_reading_an_image_folder_leaves_no_directory_iterator_open(tmp_path):
    import gc
    import warnings

    from openood_diffood.evaluate.images import load_images

    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(rgb_images(1, 0)[0]).save(tmp_path / cls / "0.png")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        images, labels, classes = load_images(str(tmp_path))
        gc.collect()
    assert images.shape == (2, 8, 8, 3) and labels.tolist() == [0, 1] and classes == ["a", "b"]
    assert not [w for w in seen if issubclass(w.category, ResourceWarning)], [str(w.message) for w in seen]
