"""``eval`` and ``demo``: DiffOOD and OpenOOD's baselines on a benchmark, with OpenOOD's table and figures.

``eval`` mirrors OpenOOD's ``scripts/eval_ood.py`` (``--root`` with ``s*/best.ckpt`` runs, ``--postprocessor``,
``--batch-size``, ``--save-csv``, ``--save-score``, ``--fsood``) and also takes one checkpoint (``--arch --ckpt``)
and data as .npz files / image folders instead of an OpenOOD data root. ``demo`` (and ``eval`` without model or
data arguments) runs the small benchmark shipped with the package.
"""
from __future__ import annotations

import argparse
import glob
import os
import shlex
import sys
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .. import config
from ..config import ConfigError, DiffOODSettings, RunOptions
from ..method.features import last_linear
from ..method.normalization import DATASET_STATS
from ..models.classifiers import ARCHITECTURES, load_classifier
from ..models.loading import load_diffusion
from ..openood.compat import DEFAULT_ARCH
from ..runtime.engine import DiffOOD
from . import metrics, plots
from .baselines import BACKENDS, check_baselines
from .benchmark import (CALIBRATION_IMAGES, DEFAULT_METHODS, Benchmark, ImageSet, RunScores, calibration_batches,
                        reconstruction_figure, report, save_scores, score_benchmark)
from .runners import DIFFOOD, build_runners, check_fit_data
from .openood_data import load_set, openood_root_sets

MODEL_ARGS = ("ckpt", "root", "diffusion")
DATA_ARGS = ("data_root", "id_test", "near", "far", "csid", "fit_data")
#: DiffOOD settings of the demo, chosen on its validation sets (``val``, ``val_near``, ``val_far``), never its test
#: sets: penultimate-feature space at the paper's t = 300, w = 3, R = 4 (validation mean AUROC 95.7 with stride 20,
#: against 81-83 in logit space); stride 50 (6 DDIM steps) keeps the demo within minutes on 2 CPU cores.
DEMO_SETTINGS = dict(timestep=300, stride=50, repeats=4, guidance=3.0, space="feature")


# ----------------------------------------------------------------------------------------------- inputs
def named_spec(text: str) -> Tuple[str, str]:
    """``name=path`` (or a bare path, named after its file)."""
    name, sep, path = text.partition("=")
    if not sep:
        path, name = text, os.path.splitext(os.path.basename(os.path.normpath(text)))[0]
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def base_settings(args: argparse.Namespace) -> DiffOODSettings:
    """Defaults with ``--id-data``'s normalization statistics (``--mean/--std`` override them)."""
    if args.id_data in DATASET_STATS:
        return DiffOODSettings(dataset=args.id_data)
    if args.mean is None:
        raise ConfigError(f"no normalization statistics for --id-data {args.id_data!r}: give --mean and --std")
    return DiffOODSettings()


def benchmark_from_args(args: argparse.Namespace, settings: DiffOODSettings) -> Tuple[Benchmark, List[str]]:
    """The benchmark named by the data arguments, and the sets skipped because they are missing on disk."""
    size = args.image_size
    skipped: List[str] = []
    if args.data_root:
        if args.id_test or args.near or args.far or args.csid:
            raise ConfigError("give either --data-root (OpenOOD's image lists) or --id-test/--near/--far, not both")
        sets, skipped = openood_root_sets(args.data_root, args.id_data,
                                          size or (224 if args.id_data.startswith("imagenet") else 32), args.fsood,
                                          with_fit=not args.fit_data)
        if args.fit_data:
            sets["fit"] = [load_set("fit", args.fit_data, size)]
    else:
        if not args.id_test:
            raise ConfigError("no ID test set: give --id-test x.npz (with --near/--far NAME=PATH) or --data-root")
        if not (args.near or args.far):
            raise ConfigError("no OOD sets: give --near NAME=PATH and/or --far NAME=PATH")
        named = {"id": [named_spec(args.id_test)], "near": args.near, "far": args.far, "csid": args.csid,
                 "fit": [("fit", args.fit_data)] if args.fit_data else []}
        sets = {role: [load_set(n, p, size) for n, p in pairs] for role, pairs in named.items()}
    bench = Benchmark(sets["id"][0], {"near": sets["near"], "far": sets["far"]}, settings.normalization,
                      sets["fit"][0] if sets["fit"] else None, sets["csid"])
    if args.fsood and not bench.csid:
        raise ConfigError("--fsood needs covariate-shifted ID sets: --csid NAME=PATH (or an OpenOOD root that has "
                          "them)")
    return bench, skipped


def checkpoints_from_args(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """(run name, checkpoint) pairs: ``--ckpt`` alone, or OpenOOD's ``--root/s*/best.ckpt`` runs."""
    if args.root and args.ckpt:
        raise ConfigError("give either --root (OpenOOD's s*/best.ckpt runs) or --ckpt, not both")
    if args.ckpt:
        return [(os.path.splitext(os.path.basename(args.ckpt))[0], args.ckpt)]
    if not args.root:
        raise ConfigError("no classifier: give --ckpt <state dict> (with --arch) or --root <OpenOOD run folder>")
    folders = sorted(glob.glob(os.path.join(args.root, "s*")))
    runs = [(os.path.basename(d), os.path.join(d, "best.ckpt")) for d in folders
            if os.path.isfile(os.path.join(d, "best.ckpt"))]
    if not runs:
        raise FileNotFoundError(f"no s*/best.ckpt under --root {args.root!r} (OpenOOD's layout: <root>/s0/best.ckpt)")
    return runs


# ----------------------------------------------------------------------------------------------- running
def _methods(args: argparse.Namespace) -> List[str]:
    """The --postprocessor names (space- or comma-separated), checked before any data or model is loaded."""
    out = [n.strip() for text in args.postprocessor for n in text.split(",") if n.strip()]
    if len(set(out)) != len(out):
        raise ConfigError(f"--postprocessor lists a method twice: {out}")
    check_baselines([m for m in out if m != DIFFOOD], args.baseline_backend)
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
        raise ConfigError(f"the classifier cannot take the {h}x{w} images with {c} channel(s) ({first}); give images "
                          "of the size and channels it was trained on (--image-size N; grey sets are made RGB when "
                          "the ID set is RGB)") from None


def run_evaluation(args: argparse.Namespace, methods: List[str], bench: Benchmark, runs: List[Tuple[str, nn.Module]],
                   settings: DiffOODSettings, options: RunOptions, meta: dict) -> List[str]:
    """Check everything every method needs, then score every run method by method, writing the results as each
    method finishes; finished scores are kept in the cache folder, so an interrupted run resumes. Returns the
    paths written."""
    device = _device(options.device)
    cache = options.cache_dir or os.path.join(args.out, "cache")
    options = options.replace(device=str(device), cache_dir=cache)
    bench = bench.limited(args.limit, args.fit_limit, settings.seed).matching_channels()
    num_classes = {last_linear(net).out_features for _, net in runs}
    if len(num_classes) != 1:
        raise ConfigError(f"the runs' classifiers disagree on the number of classes: {sorted(num_classes)}")
    bench.validate(num_classes.pop())
    if DIFFOOD in methods and options.diffusion is None:
        raise ConfigError("method 'diffood' needs a diffusion model: give --diffusion <diffusers dir> (unet/ + "
                          "scheduler/, as written by `python -m openood_diffood train`) or leave diffood out of "
                          "--postprocessor")
    backend = load_diffusion(options.diffusion) if DIFFOOD in methods else None
    # preflight: every method of the first run built and checked (fit data, inputs, timesteps) before any scoring
    prepared = []
    for run_name, net in runs:
        net = net.to(device).eval()
        check_classifier_input(net, bench, device)
        engine = DiffOOD(net, backend, settings, options) if backend is not None else None
        if engine is not None:
            engine.check_input(bench.normalization.from_uint8(bench.id_test.images[:2]))
        runners = build_runners(net, methods, engine, args.baseline_backend, args.id_data)
        check_fit_data(runners, bench.fit is not None)
        prepared.append((run_name, net, engine, runners))
    if backend is not None and settings.combine is not None and bench.fit is None:
        raise ConfigError(f"combine: energy calibrates on ID images: give --fit-data (ID training images; up to "
                          f"{CALIBRATION_IMAGES} are used) or leave --combine out")
    args.resume_hint = (f"finished scores are kept in {cache}; run the same command again to resume: "
                        f"python -m openood_diffood {shlex.join(sys.argv[1:])}")
    results: Dict[str, List[metrics.MethodResult]] = {m: [] for m in methods}
    written, run_meta, names = [], {}, [name for name, _ in runs]
    sizes = {f"{role}:{s.name}": len(s.images) for role, s in bench.all_sets()}
    meta = {**meta, "settings": settings.as_dict(), "set_sizes": sizes, "device": str(device), "cache_dir": cache,
            "run_details": run_meta}

    for i, (run_name, net, engine, runners) in enumerate(prepared):
        if engine is not None and settings.combine is not None:
            engine.calibrate(calibration_batches(bench, engine.batch_size, settings.seed))
        print(f"[{run_name}] scoring {', '.join(methods)} on {device}", file=sys.stderr, flush=True)

        def finished(method: str, scores: RunScores) -> None:  # results on disk as each method finishes
            acc = metrics.accuracy(scores.id_pred, scores.id_labels)
            results[method].append(metrics.method_table(method, scores.id[method], scores.ood[method], acc))
            run_meta[run_name] = {"backends": scores.backends, "seconds": scores.seconds}
            metrics.write_results(args.out, {m: r for m, r in results.items() if r}, names[:i + 1], meta)

        scores = score_benchmark(net, bench, methods, engine=engine, id_name=args.id_data, batch_size=args.batch_size,
                                 fsood=args.fsood, device=device, progress=not args.no_progress, runners=runners,
                                 cache_dir=cache, on_method=finished)
        if args.save_score:
            written += save_scores(args.out, run_name, scores)
        if i == 0 and not args.no_plots:
            written += plots.score_histograms(args.out, scores.id, plots.histogram_inputs(scores.id, scores.ood))
            if engine is not None:
                written.append(reconstruction_figure(os.path.join(args.out, "reconstructions.png"), engine, bench))
    written += report(args.out, results, names, meta)
    if args.save_csv:
        folder = os.path.join(args.root or args.out, "fsood" if args.fsood else "ood")
        written += [metrics.write_openood_csv(os.path.join(folder, f"{m}.csv"), r) for m, r in results.items()]
    print(f"\nwrote {len(written)} files to {args.out} (finished scores are kept in {cache})", file=sys.stderr)
    return written


def eval_main(args: argparse.Namespace) -> List[str]:
    """``eval``: the demo when no model or data argument is given, else the benchmark the arguments describe."""
    if not any(getattr(args, k) for k in MODEL_ARGS + DATA_ARGS):
        return demo_main(args)
    methods = _methods(args)
    settings, options = config.from_arguments(args, base_settings(args))
    options = options.with_environment()
    bench, skipped = benchmark_from_args(args, settings)
    arch = args.arch or DEFAULT_ARCH.get(args.id_data, "resnet18_32x32")
    runs = [(name, load_classifier(arch, ckpt, args.num_classes)) for name, ckpt in checkpoints_from_args(args)]
    args.out = args.out or os.path.join("runs", "eval")
    meta = {"command": "eval", "arch": arch, "diffusion": options.diffusion, "skipped_sets": skipped}
    return run_evaluation(args, methods, bench, runs, settings, options, meta)


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
    args.out = args.out or os.path.join("runs", "demo")
    args.id_data = "demo"
    meta = {"command": "demo", "diffusion": str(diffusion)}
    return run_evaluation(args, methods, bench, [("demo", classifier)], settings, options, meta)


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
    g.add_argument("--batch-size", type=config.positive_int, default=200,
                   help="classifier batch size (default: %(default)s)")
    g.add_argument("--limit", type=config.positive_int, help="at most N images per test set (random, fixed by --seed)")
    g.add_argument("--fit-limit", type=config.positive_int,
                   help="at most N fit images (random, fixed by --seed; default: all)")
    g.add_argument("--out", help="output folder (default: runs/eval, or runs/demo for the demo); finished scores are "
                                 "kept in <out>/cache unless --cache-dir (or DIFFOOD_CACHE_DIR) names another")
    g.add_argument("--save-csv", action="store_true",
                   help="also write OpenOOD's per-method CSVs (mean \u00b1 std over runs) to <root or out>/ood/")
    g.add_argument("--save-score", action="store_true", help="write every score to <out>/scores/<run>/<method>.npz")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.epilog = f"combine: energy calibrates on up to {CALIBRATION_IMAGES} images of the fit set."


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """``eval``'s classifier and data arguments."""
    g = p.add_argument_group("classifier (one checkpoint, or OpenOOD's run folder)")
    g.add_argument("--arch", help=f"{ARCHITECTURES} (default: OpenOOD's net for --id-data)")
    g.add_argument("--ckpt", help="state dict (.pt/.ckpt/.pth via torch.load(weights_only=True), or .safetensors)")
    g.add_argument("--root", help="OpenOOD run folder holding s*/best.ckpt (results are mean \u00b1 std over runs)")
    g.add_argument("--num-classes", type=config.positive_int,
                   help="classes of the classifier (default: read from the checkpoint)")
    g = p.add_argument_group("data (an OpenOOD data root, or files / folders)")
    g.add_argument("--data-root", help="OpenOOD's data folder (benchmark_imglist/ + images_classic/ ...)")
    g.add_argument("--id-data", default="cifar10",
                   help="ID benchmark name: picks OpenOOD's image lists, the default arch and normalization "
                        "(default: %(default)s)")
    g.add_argument("--id-test", metavar="[NAME=]PATH", help="ID test set: .npz (images, labels) or ImageFolder")
    g.add_argument("--near", type=named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="near-OOD set (repeatable)")
    g.add_argument("--far", type=named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="far-OOD set (repeatable)")
    g.add_argument("--csid", type=named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="covariate-shifted ID set for --fsood (repeatable)")
    g.add_argument("--fsood", action="store_true", help="full-spectrum OOD: the csid sets count as ID")
    g.add_argument("--fit-data", metavar="PATH", help="ID training images ViM / KNN / ReAct are fitted on "
                                                      "(default with --data-root: OpenOOD's train list)")
    g.add_argument("--image-size", type=config.positive_int,
                   help="resize every image (shorter side, then centre crop) to this size (default with --data-root: "
                        "32 for CIFAR, 224 for ImageNet; otherwise images are used as they are)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean of the classifier's normalization")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std of the classifier's normalization")
