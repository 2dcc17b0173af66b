"""``eval`` and ``demo``: DiffOOD and OpenOOD's baselines on a benchmark, with OpenOOD's table and figures.
``eval`` takes a classifier (``--arch --ckpt``) and .npz files / image folders; ``demo`` (and ``eval`` without model
or data) runs the bundled benchmark. OpenOOD's run layout and data root are ``python -m openood.main``'s job."""
from __future__ import annotations

import argparse
import difflib
import os
import shlex
import sys
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import config
from ..config import ConfigError, DiffOODSettings, RunOptions
from ..fields import positive_int
from ..method.features import last_linear
from ..method.normalization import DATASET_STATS
from ..models.classifiers import ARCHITECTURES, load_classifier, training_statistics
from ..models.loading import load_diffusion
from ..openood.compat import DEFAULT_ARCH
from ..runtime.engine import DiffOOD
from . import metrics, plots
from .baselines import BACKENDS, check_baselines, fitted_scorer
from .benchmark import (CALIBRATION_IMAGES, DEFAULT_METHODS, Benchmark, ImageSet, RunScores, calibration_batches,
                        fit_batches, reconstruction_figure, report, save_scores, score_benchmark)
from .images import load_images
from .runners import DIFFOOD, build_runners, check_fit_data

MODEL_ARGS = ("ckpt", "diffusion")
DATA_ARGS = ("id_test", "near", "far", "csid", "fit_data")
#: DiffOOD settings of the demo, chosen on its validation sets (``val``, ``val_near``, ``val_far``), never its test
#: sets: penultimate-feature space at the paper's t = 300, w = 3, R = 4 (validation mean AUROC 95.7 with stride 20,
#: against 81-83 in logit space); stride 50 (6 DDIM steps) keeps the demo within minutes on 2 CPU cores.
DEMO_SETTINGS = dict(timestep=300, stride=50, repeats=4, guidance=3.0, space="feature")


# ----------------------------------------------------------------------------------------------- inputs
def named_spec(text: str) -> Tuple[str, str]:
    """``name=path`` (or a bare path, named after its file)."""
    name, sep, path = text.partition("=")
    if not sep:
        head, colon, tail = text.partition(":")
        if colon and head and tail and not os.path.exists(text):
            raise argparse.ArgumentTypeError(f"{text!r} is not a file; name a set as NAME=PATH: {head}={tail}")
        path, name = text, os.path.splitext(os.path.basename(os.path.normpath(text)))[0]
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def refuse_openood_layout(args: argparse.Namespace) -> None:
    """``--root`` / ``--data-root`` belong to ``python -m openood.main``: one error naming that command."""
    if args.root or args.data_root:
        methods = [n for text in args.postprocessor for n in text.replace(",", " ").split()]
        command = (f"python -m openood.main --root {shlex.quote(args.root or 'RUNS')} --id-data {args.id_data} "
                   f"--postprocessor {methods[0] if len(methods) == 1 else 'NAME'}")
        if args.data_root:
            command += f" --data-root {shlex.quote(args.data_root)}"
        raise ConfigError(f"eval takes .npz files and image folders, not OpenOOD's run layout or data root "
                          f"(--root / --data-root); run OpenOOD's own evaluation instead: {command}")


def base_settings(args: argparse.Namespace, arch: str) -> Tuple[DiffOODSettings, str]:
    """Defaults with the classifier's normalization statistics, and where they come from: --mean/--std, else the
    statistics the architecture's weights were trained with, else --id-data's."""
    if args.mean is not None or args.std is not None:
        return DiffOODSettings(mean=args.mean, std=args.std), "--mean/--std"
    own = training_statistics(arch)
    if own is not None:
        mean, std = DATASET_STATS[own]
        return DiffOODSettings(mean=mean, std=std), f"{arch}'s own ({own}'s, which its weights were trained with)"
    if args.id_data in DATASET_STATS:
        return DiffOODSettings(dataset=args.id_data), f"--id-data {args.id_data}'s"
    near = difflib.get_close_matches(args.id_data, list(DATASET_STATS), n=1)
    raise ConfigError(f"unknown --id-data {args.id_data!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
                      f"known: {', '.join(DATASET_STATS)}; for other data give --mean and --std")


def load_set(name: str, spec: str, size: Optional[int], labelled: bool = True) -> ImageSet:
    """One named set from an .npz file or an image folder (OOD sets, ``labelled=False``, keep no labels)."""
    images, labels, classes = load_images(spec, size)
    return ImageSet(name, images, labels, classes or None) if labelled else ImageSet(name, images)


def benchmark_from_args(args: argparse.Namespace, settings: DiffOODSettings) -> Benchmark:
    """The benchmark named by the data arguments."""
    if not args.id_test:
        raise ConfigError("no ID test set: give --id-test x.npz (with --near/--far NAME=PATH)")
    if not (args.near or args.far):
        raise ConfigError("no OOD sets: give --near NAME=PATH and/or --far NAME=PATH")
    if args.fsood and not args.csid:
        raise ConfigError("--fsood needs covariate-shifted ID sets: --csid NAME=PATH")
    size = args.image_size
    name, path = named_spec(args.id_test)
    ood = {split: [load_set(n, p, size, labelled=False) for n, p in getattr(args, split)] for split in ("near", "far")}
    return Benchmark(load_set(name, path, size), ood, settings.normalization,
                     load_set("fit", args.fit_data, size) if args.fit_data else None,
                     [load_set(n, p, size) for n, p in args.csid])


# ----------------------------------------------------------------------------------------------- running
def _methods(args: argparse.Namespace) -> List[str]:
    """The --postprocessor names (space- or comma-separated), checked before any data or model is loaded."""
    out = [n.strip() for text in args.postprocessor for n in text.split(",") if n.strip()]
    if len(set(out)) != len(out):
        raise ConfigError(f"--postprocessor lists a method twice: {out}")
    check_baselines([m for m in out if m != DIFFOOD], args.baseline_backend, also=(DIFFOOD,))
    return out


def _device(name: Optional[str]) -> torch.device:
    """--device, checked now: a CUDA device without CUDA is an error, not a traceback later."""
    device = torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for, but CUDA is not available here; use --device cpu (or "
                          "leave it out)")
    return device


@torch.no_grad()
def check_classifier_input(net: nn.Module, bench: Benchmark, device: torch.device) -> None:
    """The classifier takes the benchmark's images (their channels and size), tried on one image."""
    x = bench.normalization.from_uint8(bench.id_test.images[:1]).to(device)
    try:
        net(x)
    except RuntimeError as exc:
        h, w, c = bench.id_test.images.shape[1:]
        first = str(exc).splitlines()[0]
        conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is not None and conv.in_channels != c:
            fix = (f"it takes {conv.in_channels} channel(s): give the ID test set with {conv.in_channels} channel(s) "
                   f"(grey images repeated to RGB) and {conv.in_channels}-value --mean/--std")
        else:
            fix = "give images of the size it was trained on (--image-size N)"
        raise ConfigError(f"the classifier cannot take the {h}x{w} images with {c} channel(s) ({first}); {fix}") \
            from None


def _optional_figures(steps: List[Tuple[str, Callable[[], List[str]]]]) -> List[str]:
    """Run each figure step; one that fails is a one-line warning (the scores and tables are already written)."""
    written: List[str] = []
    for what, step in steps:
        try:
            written += step()
        except Exception as exc:  # noqa: BLE001 - a figure is optional: report it, keep the results
            first = (str(exc).strip().splitlines() or [""])[0]
            warnings.warn(f"{what} not written ({type(exc).__name__}: {first}); the table and result files above are "
                          "complete")
    return written


def run_evaluation(args: argparse.Namespace, methods: List[str], bench: Benchmark, net: nn.Module,
                   settings: DiffOODSettings, options: RunOptions, meta: dict, *, out: str, run_name: str,
                   id_name: str, fsood: bool = False) -> List[str]:
    """Check everything every method needs, then score method by method, writing the results as each method
    finishes (finished scores are kept in the cache folder, so an interrupted run resumes); then print the table
    and write every result file; figures come last. Returns the paths written."""
    device = _device(options.device)
    cache = options.cache_dir or os.path.join(out, "cache")
    options = options.replace(device=str(device), cache_dir=cache)
    bench = bench.limited(args.limit, args.fit_limit, settings.seed).matching_channels()
    bench.validate(last_linear(net).out_features)
    if DIFFOOD in methods and options.diffusion is None:
        raise ConfigError("method 'diffood' needs a diffusion model: give --diffusion <diffusers dir> (unet/ + "
                          "scheduler/, as written by `python -m openood_diffood train`) or leave diffood out of "
                          "--postprocessor")
    backend = load_diffusion(options.diffusion) if DIFFOOD in methods else None
    # preflight: every method built and checked (fit data, inputs, timesteps) before any scoring
    net = net.to(device).eval()
    check_classifier_input(net, bench, device)
    engine = DiffOOD(net, backend, settings, options) if backend is not None else None
    if engine is not None:
        engine.check_input(bench.normalization.from_uint8(bench.id_test.images[:2]))
    runners = build_runners(net, methods, engine, args.baseline_backend, id_name)
    check_fit_data(runners, bench.fit is not None)
    # combine and a list of timesteps calibrate on fit-set images: checked (there is a fit set) now
    calibration = calibration_batches(bench, engine.batch_size, settings.seed) \
        if engine is not None and engine.needs_calibration else None
    if engine is not None and settings.combine not in (None, "energy"):
        check_baselines([settings.combine], args.baseline_backend)
    results: Dict[str, List[metrics.MethodResult]] = {}
    meta = {**meta, "settings": settings.as_dict(), "device": str(device), "cache_dir": cache,
            "set_sizes": {f"{role}:{s.name}": len(s.images) for role, s in bench.all_sets()}}

    def finished(method: str, scores: RunScores) -> None:  # results on disk as each method finishes
        acc = metrics.accuracy(scores.id_pred, scores.id_labels)
        label = f"{DIFFOOD}+{settings.combine}" if method == DIFFOOD and settings.combine else method
        results[label] = [metrics.method_table(label, scores.id[method], scores.ood[method], acc)]
        meta["run_details"] = {run_name: {"backends": scores.backends, "seconds": scores.seconds}}
        metrics.write_results(out, results, [run_name], meta)

    try:
        if engine is not None and settings.combine not in (None, "energy"):  # fitted on the whole fit set
            engine.companion = fitted_scorer(settings.combine, net, fit_batches(bench, args.batch_size), id_name,
                                             args.baseline_backend)
        if calibration is not None:  # statistics: the fit set's (ID train) images
            engine.calibrate(calibration)
        if "normalization_from" in meta:
            norm = settings.normalization
            print(f"normalization: mean {list(norm.mean)}, std {list(norm.std)} ({meta['normalization_from']}; "
                  "--mean/--std override it)", file=sys.stderr)
        print(f"[{run_name}] scoring {', '.join(methods)} on {device}", file=sys.stderr, flush=True)
        scores = score_benchmark(net, bench, methods, engine=engine, id_name=id_name, batch_size=args.batch_size,
                                 fsood=fsood, device=device, progress=not args.no_progress, runners=runners,
                                 cache_dir=cache, on_method=finished)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"finished scores are kept in {cache}; run the same command again to resume: "
                                f"python -m openood_diffood {shlex.join(sys.argv[1:])}") from None
    written = report(out, results, [run_name], meta)
    if args.save_score:
        written += save_scores(out, run_name, scores)
    if args.save_csv:
        folder = os.path.join(out, "fsood" if fsood else "ood")
        written += [metrics.write_openood_csv(os.path.join(folder, f"{m}.csv"), r) for m, r in results.items()]
    if not args.no_plots:
        steps = [("score histograms", lambda: plots.score_histograms(
            out, scores.id, plots.histogram_inputs(scores.id, scores.ood)))]
        if engine is not None:
            steps.append(("reconstructions.png", lambda: [reconstruction_figure(
                os.path.join(out, "reconstructions.png"), engine, bench)]))
        written += _optional_figures(steps)
    print(f"\nwrote {len(written)} files to {out} (finished scores are kept in {cache})", file=sys.stderr)
    return written


def eval_main(args: argparse.Namespace) -> List[str]:
    """``eval``: the demo when no model or data argument is given, else the benchmark the arguments describe."""
    refuse_openood_layout(args)
    if not any(getattr(args, k) for k in MODEL_ARGS + DATA_ARGS):
        return demo_main(args)
    methods = _methods(args)
    if not args.ckpt:
        raise ConfigError("no classifier: give --ckpt <state dict> (with --arch)")
    arch = args.arch or DEFAULT_ARCH.get(args.id_data, "resnet18_32x32")
    base, source = base_settings(args, arch)
    settings, options = config.from_arguments(args, base)
    options = options.with_environment()
    bench = benchmark_from_args(args, settings)
    net = load_classifier(arch, args.ckpt, args.num_classes)
    meta = {"command": "eval", "arch": arch, "diffusion": options.diffusion,
            "normalization_from": source if settings.normalization == base.normalization else "--config"}
    return run_evaluation(args, methods, bench, net, settings, options, meta, out=args.out or os.path.join(
        "runs", "eval"), run_name=os.path.splitext(os.path.basename(args.ckpt))[0], id_name=args.id_data,
        fsood=args.fsood)


def demo_main(args: argparse.Namespace) -> List[str]:
    """``demo``: DiffOOD and the baselines on the small benchmark and models shipped with the package."""
    from ..models.demo import DEMO_CLASSES, DEMO_MEAN, DEMO_STD, load_demo_models
    from .demo_data import demo_sets

    methods = _methods(args)
    data = demo_sets(seed=0)
    classifier, diffusion = load_demo_models()
    defaults = DiffOODSettings(mean=DEMO_MEAN, std=DEMO_STD, **DEMO_SETTINGS)
    settings, options = config.from_arguments(args, defaults, RunOptions(diffusion=diffusion))
    options = options.with_environment().replace(diffusion=diffusion)
    bench = Benchmark(ImageSet("digits_0-5", *data["test"], classes=DEMO_CLASSES),
                      {split: [ImageSet(n, imgs) for n, imgs in data[split].items()] for split in ("near", "far")},
                      settings.normalization, ImageSet("train", *data["train"]))
    meta = {"command": "demo", "diffusion": str(diffusion)}
    return run_evaluation(args, methods, bench, classifier, settings, options, meta,
                          out=args.out or os.path.join("runs", "demo"), run_name="demo", id_name="demo")


# ----------------------------------------------------------------------------------------------- parser
def add_run_arguments(p: argparse.ArgumentParser, demo: bool = False) -> None:
    """Options shared by ``eval`` and ``demo`` (which brings its own diffusion model): methods, DiffOOD settings
    and run options, outputs."""
    g = p.add_argument_group("methods")
    g.add_argument("--postprocessor", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                   help="methods by OpenOOD's names, space- or comma-separated (default: %(default)s)")
    g.add_argument("--baseline-backend", choices=BACKENDS, default="auto",
                   help="baselines from OpenOOD's postprocessors or pytorch-ood's detectors (auto: OpenOOD when "
                        "it imports)")
    g.add_argument("--config", help="a diffood.yml (postprocessor_args) or a flat YAML mapping of settings; "
                                    "the flags below override it")
    config.add_arguments(p, skip=("diffusion",) if demo else ())
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=positive_int, default=200,
                   help="classifier batch size (default: %(default)s)")
    g.add_argument("--limit", type=positive_int, help="at most N images per test set (random, fixed by --seed)")
    g.add_argument("--fit-limit", type=positive_int,
                   help="at most N fit images (random, fixed by --seed; default: all)")
    g.add_argument("--out", help="output folder (default: runs/eval, or runs/demo for the demo); finished scores are "
                                 "kept in <out>/cache unless --cache-dir (or DIFFOOD_CACHE_DIR) names another")
    g.add_argument("--save-csv", action="store_true",
                   help="also write OpenOOD's per-method CSVs to <out>/ood/ (<out>/fsood/ with --fsood)")
    g.add_argument("--save-score", action="store_true", help="write every score to <out>/scores/<run>/<method>.npz")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.epilog = (f"combine and a list of timesteps z-normalise on up to {CALIBRATION_IMAGES} images of the fit set (ID "
                "training images: eval has no ID validation set); combine: knn (...) is fitted on the whole fit set.")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """``eval``'s classifier and data arguments."""
    g = p.add_argument_group("classifier")
    g.add_argument("--arch", help=f"{ARCHITECTURES} (default: OpenOOD's net for --id-data)")
    g.add_argument("--ckpt", help="state dict (.pt/.ckpt/.pth via torch.load(weights_only=True), or .safetensors)")
    g.add_argument("--num-classes", type=positive_int,
                   help="classes of the classifier (default: read from the checkpoint)")
    g = p.add_argument_group("data (.npz files or image folders)")
    g.add_argument("--id-data", default="cifar10",
                   help=f"ID benchmark name ({', '.join(DATASET_STATS)}): the default --arch and normalization "
                        "statistics (default: %(default)s)")
    g.add_argument("--id-test", metavar="[NAME=]PATH", help="ID test set: .npz (images, labels) or ImageFolder")
    g.add_argument("--near", type=named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="near-OOD set (repeatable)")
    g.add_argument("--far", type=named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="far-OOD set (repeatable)")
    g.add_argument("--csid", type=named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="covariate-shifted ID set for --fsood (repeatable)")
    g.add_argument("--fsood", action="store_true", help="full-spectrum OOD: the csid sets count as ID")
    g.add_argument("--fit-data", metavar="PATH", help="ID training images ViM / KNN / ReAct are fitted on")
    g.add_argument("--image-size", type=positive_int,
                   help="resize every image (shorter side, then centre crop) to this size (default: images are used "
                        "as they are)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean of the classifier's normalization "
                                                          "(default: the --arch's own, else --id-data's)")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std of the classifier's normalization")
    for flag in ("--root", "--data-root"):  # python -m openood.main's job: refused with that command
        p.add_argument(flag, help=argparse.SUPPRESS)
