"""``python -m openood.main``: OpenOOD's ``main.py`` and ``scripts/eval_ood.py`` as one installed command, on any
machine (see :data:`DESCRIPTION`); every user error is one ``error:`` line (exit status 2) before any scoring."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence

import yaml

from ..errors import ConfigError, report_errors
from . import leaderboard
from .compat import cuda_calls_stay_put, openood_checkout, require_openood
from .registry import NAMES, config_file, postprocessor_config, register

DESCRIPTION = """OpenOOD's main.py and scripts/eval_ood.py as one command, on GPU or CPU.

main.py mode (OpenOOD's pipelines, e.g. test_ood):
  python -m openood.main --config A.yml B.yml ... [--postprocessor NAME] [--dotted.key value ...]
  The configs merge exactly as in main.py; --postprocessor NAME adds that postprocessor's config
  (<config-root>/postprocessors/NAME.yml; for diffood / diffood_imagenet the packaged one where that is missing).
  Dotted overrides follow main.py's rules (typed like the value they replace, or value:type).

eval_ood.py mode (OpenOOD v1.5's leaderboard numbers):
  python -m openood.main --root RUNS --id-data cifar10 --postprocessor NAME [--save-csv --save-score --fsood]
      [--postprocessor.postprocessor_args.KEY VALUE ...]
  every RUNS/s*/best.ckpt, reusing s*/postprocessors/NAME.pkl and s*/scores/NAME.pkl, RUNS/ood/NAME.csv as
  mean +- std over the runs; ImageNet-1K as scripts/eval_ood_imagenet.py:
  python -m openood.main --id-data imagenet --arch resnet50 --ckpt-path CKPT --postprocessor NAME

DiffOOD's diffusion model: postprocessor_args.diffusion, or the DIFFOOD_DIFFUSION environment variable."""


def build_parser() -> argparse.ArgumentParser:
    """The command's options (dotted ``--a.b value`` overrides are taken apart from them)."""
    checkout = openood_checkout()
    p = argparse.ArgumentParser(prog="python -m openood.main", description=DESCRIPTION, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", nargs="+", metavar="YML", help="main.py mode: OpenOOD config files, merged in order")
    p.add_argument("--postprocessor", metavar="NAME", help="an OpenOOD postprocessor name (msp, vim, knn, ...) or "
                                                           f"{' / '.join(NAMES)}; eval_ood.py mode default: msp")
    g = p.add_argument_group("eval_ood.py mode")
    g.add_argument("--root", help="folder of OpenOOD training runs s0/, s1/, ... each holding best.ckpt")
    g.add_argument("--id-data", default="cifar10", choices=("cifar10", "cifar100", "imagenet200", "imagenet"),
                   help="ID benchmark (default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=200, help="loader batch size (default: %(default)s)")
    g.add_argument("--save-csv", action="store_true", help="write <root>/ood/<name>.csv instead of printing")
    g.add_argument("--save-score", action="store_true", help="write s*/scores/<name>.pkl")
    g.add_argument("--fsood", action="store_true", help="full-spectrum OOD (covariate-shifted ID sets count as ID)")
    g.add_argument("--wrapper-net", choices=("ASCOODNet",), help="wrap the classifier as eval_ood.py does")
    g.add_argument("--arch", default="resnet50", help="ImageNet-1K classifier (with --ckpt-path: resnet50)")
    g.add_argument("--ckpt-path", help="ImageNet-1K: the classifier's state dict; results go next to it")
    default_data = str(checkout / "data") if checkout else "./data"
    default_configs = str(checkout / "configs") if checkout else "./configs"
    g.add_argument("--data-root", default=default_data, help="OpenOOD's data folder (default: %(default)s)")
    g.add_argument("--config-root", default=default_configs, help="OpenOOD's configs (default: %(default)s)")
    g.add_argument("--num-workers", type=int, default=8, help="data-loader workers (default: %(default)s, as "
                                                              "eval_ood.py)")
    return p


def override_pairs(extra: Sequence[str], parser: argparse.ArgumentParser) -> List[str]:
    """The arguments left to OpenOOD's config: ``--key.path value`` pairs (``--key=value`` is split)."""
    pairs: List[str] = []
    for arg in extra:
        pairs += arg.split("=", 1) if arg.startswith("--") and "=" in arg else [arg]
    for flag, value in zip(pairs[::2], pairs[1::2] + [None]):
        if not flag.startswith("--") or value is None or value.startswith("--"):
            parser.error(f"unexpected {flag!r}: config overrides come as --key.path value pairs")
    return pairs


def run_pipeline(args: argparse.Namespace, dotted: List[str]) -> None:
    """main.py mode: OpenOOD's own setup_config, get_pipeline and launch."""
    configs = list(args.config) + ([config_file(args.postprocessor, args.config_root)]
                                   if args.postprocessor else [])
    missing = [c for c in configs if not os.path.isfile(c)]
    if missing:
        raise ConfigError(f"--config file {missing[0]!r} does not exist; run from your OpenOOD checkout or give "
                          "full paths")
    utils = require_openood("openood.utils")
    pipelines = require_openood("openood.pipelines")
    merged = utils.config.merge_configs(*[utils.Config(c) for c in configs])
    pipeline = merged.get("pipeline")
    name = pipeline.get("name") if isinstance(pipeline, dict) else None
    if not name:
        raise ConfigError("the --config files name no pipeline (pipeline.name); add one, e.g. "
                          "configs/pipelines/test/test_ood.yml")
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], "--config", *configs, *dotted]
    try:
        config = utils.setup_config()
    except KeyError as exc:
        raise ConfigError(f"dotted override --{exc.args[0]} names no key of the merged config; check the key "
                          "against the config files") from None
    finally:
        sys.argv = saved_argv
    try:
        pipelines.get_pipeline(config)
    except KeyError:
        raise ConfigError(f"OpenOOD has no pipeline {name!r}; see its openood/pipelines/utils.py") from None
    with cuda_calls_stay_put(announce=True):
        utils.launch(_run_pipeline, config.num_gpus, num_machines=config.num_machines,
                     machine_rank=config.machine_rank, dist_url="auto", args=(config,))


def _run_pipeline(config) -> None:
    """main.py's ``main``: build the config's pipeline and run it; then save OpenOOD's ``config.yml`` again (as
    OpenOOD does) when the postprocessor recorded what it loaded (DiffOOD: ``postprocessor.provenance``)."""
    require_openood("openood.pipelines").get_pipeline(config).run()
    saved = os.path.join(config.output_dir or "", "config.yml")
    if config.save_output and "provenance" in config.postprocessor and os.path.isfile(saved):
        with open(saved, "w") as f:
            yaml.dump(config, f, default_flow_style=False, sort_keys=False, indent=2)


def run_leaderboard(args: argparse.Namespace, dotted: List[str]) -> None:
    """eval_ood.py mode (eval_ood_imagenet.py with --ckpt-path), after checks that fail before any scoring."""
    overrides = leaderboard.parse_overrides(dotted)
    args.postprocessor = args.postprocessor or "msp"
    if args.ckpt_path is None and args.id_data == "imagenet":
        raise ConfigError("--id-data imagenet evaluates one checkpoint: give --ckpt-path (eval_ood_imagenet.py)")
    if args.ckpt_path is not None:
        leaderboard.check_imagenet_checkpoint(args.arch, args.ckpt_path)
    leaderboard.check_postprocessor(args.postprocessor, args.config_root)
    postprocessor_config(args.postprocessor, args.config_root, args.id_data, overrides)
    leaderboard.check_data_root(args.data_root, args.id_data, args.fsood)
    if args.ckpt_path is None:
        leaderboard.run_folders(args.root)
    with cuda_calls_stay_put(announce=True):
        run = leaderboard.imagenet if args.ckpt_path else leaderboard.leaderboard
        written = run(args, overrides)
    if written:
        print(f"wrote {written}", file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m openood.main``."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    dotted = override_pairs(extra, parser)
    return report_errors(_run, args, dotted)


def _run(args: argparse.Namespace, dotted: List[str]) -> None:
    """The mode the arguments ask for."""
    register()
    if args.config:
        if args.root or args.ckpt_path:
            raise ConfigError("give --config (main.py mode) or --root / --ckpt-path (eval_ood.py mode), not both")
        run_pipeline(args, dotted)
    elif args.root or args.ckpt_path or args.id_data == "imagenet":
        run_leaderboard(args, dotted)
    else:
        raise ConfigError("nothing to run: give --config A.yml ... (main.py mode) or --root RUNS (eval_ood.py "
                          "mode); see --help")
