"""``python -m openood_diffood {eval,demo,train}``: benchmark DiffOOD against OpenOOD's baselines, or train a model.

``eval`` mirrors OpenOOD's ``scripts/eval_ood.py`` (``--root`` with ``s*/best.ckpt`` runs, ``--postprocessor``,
``--batch-size``, ``--save-csv``, ``--save-score``, ``--fsood``) and also takes one checkpoint (``--arch --ckpt``)
and data as .npz files / image folders instead of an OpenOOD data root. ``demo`` (and ``eval`` without model or
data arguments) runs the small benchmark shipped with the package.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from torch import nn

from . import metrics, plots
from .baselines import BACKENDS, check_baselines
from .classifier import _last_linear
from .diffusion import load_diffusion
from .engine import DiffOOD
from .evaluation import CALIBRATION_IMAGES, DEFAULT_METHODS, DIFFOOD, Benchmark, ImageSet, calibration_batches, \
    method_results, reconstruction_figure, report, save_scores, score_benchmark
from .image_sources import load_images, openood_spec
from .networks import cifar_resnet, load_state_dict_file, resnet18_32x32
from .settings import DATASET_STATS, SPACES, DiffOODSettings

#: OpenOOD v1.5's benchmarks (``openood/evaluation_api/datasets.py``): classes, near / far OOD and csid sets.
OPENOOD_BENCHMARKS = {
    "cifar10": (10, ("cifar100", "tin"), ("mnist", "svhn", "texture", "places365"), ("cifar10c",)),
    "cifar100": (100, ("cifar10", "tin"), ("mnist", "svhn", "texture", "places365"), ()),
    "imagenet200": (200, ("ssb_hard", "ninco"), ("inaturalist", "textures", "openimage_o"),
                    ("imagenet_v2", "imagenet_c", "imagenet_r")),
    "imagenet": (1000, ("ssb_hard", "ninco"), ("inaturalist", "textures", "openimage_o"),
                 ("imagenet_v2", "imagenet_c", "imagenet_r", "imagenet_es")),
}
#: The classifier OpenOOD's eval_ood.py builds for each benchmark (torchvision names for the ImageNet ones).
DEFAULT_ARCH = {"cifar10": "resnet18_32x32", "cifar100": "resnet18_32x32", "imagenet200": "resnet18",
                "imagenet": "resnet50"}
MODEL_ARGS = ("ckpt", "root", "diffusion")
DATA_ARGS = ("data_root", "id_test", "near", "far", "csid", "fit_data")


# ----------------------------------------------------------------------------------------------- OpenOOD data root
def openood_imglists(data_root: str, id_name: str) -> Dict[str, List[Tuple[str, str, str]]]:
    """``{role: [(set name, imglist path, image dir)]}`` of an OpenOOD data root, for roles id/fit/near/far/csid."""
    if id_name not in OPENOOD_BENCHMARKS:
        raise ValueError(f"unknown OpenOOD benchmark {id_name!r}; known: {sorted(OPENOOD_BENCHMARKS)}")
    _, near, far, csid = OPENOOD_BENCHMARKS[id_name]
    large = id_name.startswith("imagenet")

    def entry(name: str, listfile: str) -> Tuple[str, str, str]:
        folder = "images_largescale" if large and name != "textures" else "images_classic"
        return (name, os.path.join(data_root, "benchmark_imglist", id_name, listfile),
                os.path.join(data_root, folder))

    def csid_list(name: str) -> str:
        return f"test_{id_name}_{name[len('imagenet_'):]}.txt" if name.startswith("imagenet_") else f"test_{name}.txt"

    return {"id": [entry(id_name, f"test_{id_name}.txt")], "fit": [entry(id_name, f"train_{id_name}.txt")],
            "near": [entry(n, f"test_{n}.txt") for n in near], "far": [entry(n, f"test_{n}.txt") for n in far],
            "csid": [entry(n, csid_list(n)) for n in csid]}


# ----------------------------------------------------------------------------------------------- inputs
def _named_spec(text: str) -> Tuple[str, str]:
    """``name=path`` (or a bare path, named after its file)."""
    name, sep, path = text.partition("=")
    if not sep:
        path, name = text, os.path.splitext(os.path.basename(os.path.normpath(text)))[0]
    if not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, path


def _load_set(name: str, spec: str, size: Optional[int]) -> ImageSet:
    images, labels, _ = load_images(spec, size)
    return ImageSet(name, images, labels)


def _stats(args: argparse.Namespace) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    if (args.mean is None) != (args.std is None):
        raise ValueError("give both --mean and --std, or neither (then --id-data's statistics are used)")
    if args.mean is not None:
        return tuple(args.mean), tuple(args.std)
    if args.id_data not in DATASET_STATS:
        raise ValueError(f"no normalization statistics for --id-data {args.id_data!r}: give --mean and --std")
    return DATASET_STATS[args.id_data]


def _openood_root_sets(args: argparse.Namespace, size: int) -> Tuple[Dict[str, List[ImageSet]], List[str]]:
    """Every set of OpenOOD's benchmark ``--id-data`` under ``--data-root``; missing OOD / csid / train lists are
    skipped with a warning (OpenOOD would download them; this never downloads)."""
    if args.id_test or args.near or args.far or args.csid:
        raise ValueError("give either --data-root (OpenOOD's image lists) or --id-test/--near/--far, not both")
    sets: Dict[str, List[ImageSet]] = {}
    skipped: List[str] = []
    for role, entries in openood_imglists(args.data_root, args.id_data).items():
        sets[role] = []
        if (role == "csid" and not args.fsood) or (role == "fit" and args.fit_data):
            continue
        for name, listfile, image_dir in entries:
            if role != "id" and not os.path.isfile(listfile):
                skipped.append(f"{role}:{name}")
                warnings.warn(f"{role} set {name!r} skipped: {listfile} is missing (get it with OpenOOD's download "
                              "script)")
                continue
            sets[role].append(_load_set(name, openood_spec(listfile, image_dir), size))
    if args.fit_data:
        sets["fit"] = [_load_set("fit", args.fit_data, size)]
    return sets, skipped


def benchmark_from_args(args: argparse.Namespace) -> Tuple[Benchmark, List[str]]:
    """The benchmark named by the data arguments, and the sets skipped because they are missing on disk."""
    mean, std = _stats(args)
    size = args.image_size
    if args.data_root:
        sets, skipped = _openood_root_sets(args, size or (224 if args.id_data.startswith("imagenet") else 32))
    else:
        if not args.id_test:
            raise ValueError("no ID test set: give --id-test x.npz (with --near/--far NAME=PATH) or --data-root")
        if not (args.near or args.far):
            raise ValueError("no OOD sets: give --near NAME=PATH and/or --far NAME=PATH")
        named = {"id": [_named_spec(args.id_test)], "near": args.near, "far": args.far, "csid": args.csid,
                 "fit": [("fit", args.fit_data)] if args.fit_data else []}
        sets = {role: [_load_set(n, p, size) for n, p in pairs] for role, pairs in named.items()}
        skipped = []
    bench = Benchmark(sets["id"][0], {"near": sets["near"], "far": sets["far"]}, mean, std,
                      sets["fit"][0] if sets["fit"] else None, sets["csid"])
    if args.fsood and not bench.csid:
        raise ValueError("--fsood needs covariate-shifted ID sets: --csid NAME=PATH (or an OpenOOD root that has them)")
    return bench, skipped


# ----------------------------------------------------------------------------------------------- classifiers
def build_classifier(arch: str, num_classes: int) -> nn.Module:
    """``resnet18_32x32`` (OpenOOD), ``cifar_resnet20/32/44/56`` (akamaster) or a torchvision model name."""
    if arch == "resnet18_32x32":
        return resnet18_32x32(num_classes)
    m = re.fullmatch(r"cifar_resnet(\d+)", arch)
    if m:
        return cifar_resnet(int(m.group(1)), num_classes)
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ValueError(f"unknown --arch {arch!r}: use resnet18_32x32, cifar_resnet20/32/44/56 or a torchvision "
                         "model name (resnet18, resnet50, vit_b_16, ...)")
    return torchvision.models.get_model(arch, weights=None, num_classes=num_classes)


def load_classifier(arch: str, ckpt: str, num_classes: Optional[int] = None) -> nn.Module:
    """Build ``arch`` with the checkpoint's number of classes (read from its last linear layer) and load it."""
    state = load_state_dict_file(ckpt)
    if num_classes is None:
        probe = build_classifier(arch, 1)
        fc = _last_linear(probe)
        key = next(n for n, mod in probe.named_modules() if mod is fc) + ".weight"
        if key not in state:
            raise ValueError(f"checkpoint {ckpt!r} has no {key!r}: it does not look like a {arch} state dict; "
                             "pick the matching --arch (or give --num-classes)")
        num_classes = int(state[key].shape[0])
    net = build_classifier(arch, num_classes)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"checkpoint {ckpt!r} does not fit --arch {arch}: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}; pick the architecture it was trained with")
    return net.eval()


def checkpoints_from_args(args: argparse.Namespace) -> List[Tuple[str, str]]:
    """(run name, checkpoint) pairs: ``--ckpt`` alone, or OpenOOD's ``--root/s*/best.ckpt`` runs."""
    if args.root and args.ckpt:
        raise ValueError("give either --root (OpenOOD's s*/best.ckpt runs) or --ckpt, not both")
    if args.ckpt:
        return [(os.path.splitext(os.path.basename(args.ckpt))[0], args.ckpt)]
    if not args.root:
        raise ValueError("no classifier: give --ckpt <state dict> (with --arch) or --root <OpenOOD run folder>")
    folders = sorted(glob.glob(os.path.join(args.root, "s*")))
    runs = [(os.path.basename(d), os.path.join(d, "best.ckpt")) for d in folders
            if os.path.isfile(os.path.join(d, "best.ckpt"))]
    if not runs:
        raise FileNotFoundError(f"no s*/best.ckpt under --root {args.root!r} (OpenOOD's layout: <root>/s0/best.ckpt)")
    return runs


# ----------------------------------------------------------------------------------------------- settings
def settings_from_args(args: argparse.Namespace,
                       base: Optional[DiffOODSettings] = None) -> Tuple[DiffOODSettings, dict]:
    """DiffOOD settings: defaults < ``--config`` yml < command-line flags; also returns the config's extra keys."""
    config: dict = {}
    if args.config:
        if not os.path.isfile(args.config):
            raise FileNotFoundError(f"--config {args.config!r} does not exist")
        with open(args.config) as f:
            loaded = yaml.safe_load(f) or {}
        config = dict(((loaded.get("postprocessor") or {}).get("postprocessor_args") or loaded)
                      if isinstance(loaded, dict) else {})
    settings = (base or DiffOODSettings()).replace(**{k: v for k, v in config.items()
                                                      if k in DiffOODSettings.__dataclass_fields__ and v is not None})
    flags = {k: getattr(args, k) for k in ("timestep", "guidance", "repeats", "stride", "space", "threshold", "seed",
                                           "solver", "precision", "combine") if getattr(args, k) is not None}
    return settings.replace(**flags), config


# ----------------------------------------------------------------------------------------------- running
def _device(name: Optional[str]) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _methods(args: argparse.Namespace) -> List[str]:
    """The --postprocessor names (space- or comma-separated), checked before any data or model is loaded."""
    out = [n.strip() for text in args.postprocessor for n in text.split(",") if n.strip()]
    if len(set(out)) != len(out):
        raise ValueError(f"--postprocessor lists a method twice: {out}")
    check_baselines([m for m in out if m != DIFFOOD], args.baseline_backend)
    return out


def run_evaluation(args: argparse.Namespace, methods: List[str], bench: Benchmark, runs: List[Tuple[str, nn.Module]],
                   settings: DiffOODSettings, diffusion: Optional[str], diffood_batch_size: int,
                   meta: dict) -> List[str]:
    """Score every run, print the tables and write metrics, figures and (optionally) scores. Returns the paths."""
    device = _device(args.device)
    bench = bench.limited(args.limit, args.fit_limit, settings.seed)
    num_classes = {_last_linear(net).out_features for _, net in runs}
    if len(num_classes) != 1:
        raise ValueError(f"the runs' classifiers disagree on the number of classes: {sorted(num_classes)}")
    bench.validate(num_classes.pop())
    settings = settings.replace(mean=bench.mean, std=bench.std)
    if DIFFOOD in methods and diffusion is None:
        raise ValueError("method 'diffood' needs a diffusion model: give --diffusion <diffusers dir> (unet/ + "
                         "scheduler/, as written by `python -m openood_diffood train`) or leave diffood out of "
                         "--postprocessor")
    backend = load_diffusion(diffusion) if DIFFOOD in methods else None
    results: Dict[str, List[metrics.MethodResult]] = {m: [] for m in methods}
    written, run_meta = [], {}
    for i, (run_name, net) in enumerate(runs):
        net = net.to(device).eval()
        engine = (DiffOOD(net, backend, settings, batch_size=diffood_batch_size, device=device)
                  if backend is not None else None)
        if engine is not None and settings.combine is not None:
            engine.calibrate(calibration_batches(bench, engine.batch_size, settings.seed))
        print(f"[{run_name}] scoring {', '.join(methods)} on {device}", file=sys.stderr, flush=True)
        scores = score_benchmark(net, bench, methods, engine=engine, backend=args.baseline_backend,
                                 id_name=args.id_data, batch_size=args.batch_size, fsood=args.fsood, device=device,
                                 progress=not args.no_progress)
        for m, res in method_results(scores).items():
            results[m].append(res)
        run_meta[run_name] = {"backends": scores.backends, "seconds": scores.seconds}
        if args.save_score:
            written += save_scores(args.out, run_name, scores)
        if i == 0 and not args.no_plots:
            written += plots.score_histograms(args.out, scores.id, plots.histogram_inputs(scores.id, scores.ood))
            if engine is not None:
                written.append(reconstruction_figure(os.path.join(args.out, "reconstructions.png"), engine, bench))
    sizes = {f"{role}:{s.name}": len(s.images) for role, s in bench.all_sets()}
    meta = {**meta, "settings": settings.as_dict(), "set_sizes": sizes, "device": str(device), "run_details": run_meta}
    written += report(args.out, results, [name for name, _ in runs], meta)
    if args.save_csv:
        folder = os.path.join(args.root or args.out, "fsood" if args.fsood else "ood")
        written += [metrics.write_openood_csv(os.path.join(folder, f"{m}.csv"), r) for m, r in results.items()]
    print(f"\nwrote {len(written)} files to {args.out}", file=sys.stderr)
    return written


def eval_main(args: argparse.Namespace) -> List[str]:
    """``eval``: the demo when no model or data argument is given, else the benchmark the arguments describe."""
    if not any(getattr(args, k) for k in MODEL_ARGS + DATA_ARGS):
        return demo_main(args)
    methods = _methods(args)
    settings, config = settings_from_args(args)
    diffusion = args.diffusion or config.get("diffusion")
    bench, skipped = benchmark_from_args(args)
    arch = args.arch or DEFAULT_ARCH.get(args.id_data, "resnet18_32x32")
    runs = [(name, load_classifier(arch, ckpt, args.num_classes)) for name, ckpt in checkpoints_from_args(args)]
    args.out = args.out or os.path.join("runs", "eval")
    meta = {"command": "eval", "arch": arch, "diffusion": diffusion, "skipped_sets": skipped}
    return run_evaluation(args, methods, bench, runs, settings, diffusion,
                          args.diffood_batch_size or int(config.get("batch_size") or 64), meta)


#: DiffOOD settings of the demo, chosen on its validation sets (``val``, ``val_near``, ``val_far``), never its test
#: sets: penultimate-feature space at the paper's t = 300, w = 3, R = 4 (validation mean AUROC 95.7 with stride 20,
#: against 81-83 in logit space); stride 50 (6 DDIM steps) keeps the demo within minutes on 2 CPU cores.
DEMO_SETTINGS = dict(timestep=300, stride=50, repeats=4, guidance=3.0, space="feature")


def demo_main(args: argparse.Namespace) -> List[str]:
    """``demo``: DiffOOD and the baselines on the small benchmark and models shipped with the package."""
    from . import demo_data

    methods = _methods(args)
    data = demo_data.demo_sets(seed=0)
    classifier, diffusion = demo_data.load_demo_models(_device(args.device))
    bench = Benchmark(ImageSet("digits_0-5", *data["test"]),
                      {split: [ImageSet(n, imgs) for n, imgs in data[split].items()] for split in ("near", "far")},
                      tuple(demo_data.DEMO_MEAN), tuple(demo_data.DEMO_STD), ImageSet("train", *data["train"]))
    defaults = DiffOODSettings(mean=demo_data.DEMO_MEAN, std=demo_data.DEMO_STD, **DEMO_SETTINGS)
    settings, _ = settings_from_args(args, defaults)
    args.out = args.out or os.path.join("runs", "demo")
    args.id_data = "demo"
    meta = {"command": "demo", "diffusion": str(diffusion)}
    return run_evaluation(args, methods, bench, [("demo", classifier)], settings, diffusion,
                          args.diffood_batch_size or 64, meta)


# ----------------------------------------------------------------------------------------------- parser
def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared by ``eval`` and ``demo``: methods, DiffOOD settings, outputs."""
    g = p.add_argument_group("methods")
    g.add_argument("--postprocessor", nargs="+", default=list(DEFAULT_METHODS), metavar="NAME",
                   help="methods by OpenOOD's names, space- or comma-separated (default: %(default)s)")
    g.add_argument("--baseline-backend", choices=BACKENDS, default="auto",
                   help="baselines from OpenOOD's postprocessors or pytorch-ood's detectors (auto: OpenOOD when "
                        "it imports)")
    g = p.add_argument_group("DiffOOD settings (override --config and the defaults)")
    g.add_argument("--config", help="a diffood.yml (postprocessor_args) or a flat YAML mapping of settings")
    g.add_argument("--timestep", type=int)
    g.add_argument("--guidance", type=float)
    g.add_argument("--repeats", type=int)
    g.add_argument("--stride", type=int)
    g.add_argument("--space", help=f"one of {SPACES} or layer<k>")
    g.add_argument("--threshold", type=float, help="clip of the penultimate feature (--space feature)")
    g.add_argument("--seed", type=int, help="noise seed (also picks the --limit subsets)")
    g.add_argument("--solver")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"))
    g.add_argument("--combine", choices=("energy",),
                   help="add the classifier's energy, both z-normalised on ID images (up to "
                        f"{CALIBRATION_IMAGES} of the fit set)")
    g.add_argument("--diffood-batch-size", type=int, help="images per DiffOOD micro-batch (default: config or 64)")
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=int, default=200, help="classifier batch size (default: %(default)s)")
    g.add_argument("--limit", type=int, help="at most N images per test set (random, fixed by --seed)")
    g.add_argument("--fit-limit", type=int, help="at most N fit images (random, fixed by --seed; default: all)")
    g.add_argument("--out", help="output folder (default: runs/eval, or runs/demo for the demo)")
    g.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    g.add_argument("--save-csv", action="store_true",
                   help="also write OpenOOD's per-method CSVs (mean \u00b1 std over runs) to <root or out>/ood/")
    g.add_argument("--save-score", action="store_true", help="write every score to <out>/scores/<run>/<method>.npz")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_eval_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classifier (one checkpoint, or OpenOOD's run folder)")
    g.add_argument("--arch", help="resnet18_32x32, cifar_resnet20/32/44/56 or a torchvision name "
                                  "(default: OpenOOD's net for --id-data)")
    g.add_argument("--ckpt", help="state dict (.pt/.ckpt/.pth via torch.load(weights_only=True), or .safetensors)")
    g.add_argument("--root", help="OpenOOD run folder holding s*/best.ckpt (results are mean \u00b1 std over runs)")
    g.add_argument("--num-classes", type=int, help="classes of the classifier (default: read from the checkpoint)")
    g.add_argument("--diffusion", help="diffusers directory (unet/ + scheduler/) of the class-conditional model")
    g = p.add_argument_group("data (an OpenOOD data root, or files / folders)")
    g.add_argument("--data-root", help="OpenOOD's data folder (benchmark_imglist/ + images_classic/ ...)")
    g.add_argument("--id-data", default="cifar10",
                   help="ID benchmark name: picks OpenOOD's image lists, the default arch and normalization "
                        "(default: %(default)s)")
    g.add_argument("--id-test", metavar="[NAME=]PATH", help="ID test set: .npz (images, labels) or ImageFolder")
    g.add_argument("--near", type=_named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="near-OOD set (repeatable)")
    g.add_argument("--far", type=_named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="far-OOD set (repeatable)")
    g.add_argument("--csid", type=_named_spec, action="append", default=[], metavar="NAME=PATH",
                   help="covariate-shifted ID set for --fsood (repeatable)")
    g.add_argument("--fsood", action="store_true", help="full-spectrum OOD: the csid sets count as ID")
    g.add_argument("--fit-data", metavar="PATH", help="ID training images ViM / KNN / ReAct are fitted on "
                                                      "(default with --data-root: OpenOOD's train list)")
    g.add_argument("--image-size", type=int,
                   help="resize every image (shorter side, then centre crop) to this size (default with --data-root: "
                        "32 for CIFAR, 224 for ImageNet; otherwise images are used as they are)")
    g.add_argument("--mean", type=float, nargs="+", help="per-channel mean of the classifier's normalization")
    g.add_argument("--std", type=float, nargs="+", help="per-channel std of the classifier's normalization")


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m openood_diffood`` parser with its ``eval``, ``demo`` and ``train`` subcommands."""
    from .training import add_train_arguments, train_main

    parser = argparse.ArgumentParser(prog="python -m openood_diffood",
                                     description="DiffOOD for OpenOOD: evaluate it against the baselines, or train "
                                                 "the class-conditional diffusion model it needs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("eval", help="DiffOOD vs baselines on an OOD benchmark (the demo without model/data args)",
                       description="OpenOOD-style evaluation: FPR@95, AUROC, AUPR_IN, AUPR_OUT per OOD set, near/far "
                                   "means, ID accuracy; tables on the terminal, CSV/JSON/PNG in --out.")
    _add_eval_arguments(p)
    _add_run_arguments(p)
    p.set_defaults(func=eval_main)
    p = sub.add_parser("demo", help="the small benchmark shipped with the package (CPU, a few minutes)")
    _add_run_arguments(p)
    p.set_defaults(func=demo_main, id_data="demo", root=None, fsood=False)
    p = sub.add_parser("train", help="train a class-conditional diffusion model for DiffOOD")
    add_train_arguments(p)
    p.set_defaults(func=train_main)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; bad inputs end with ``error: ...`` and exit status 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            args.func(args)
        except (ValueError, OSError, ImportError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
