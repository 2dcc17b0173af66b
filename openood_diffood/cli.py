"""``python -m openood_diffood {eval,demo,train}``: benchmark DiffOOD against OpenOOD's baselines, or train the
diffusion model it needs. A user error ends as one ``error: <problem>; <fix>`` line and exit status 2."""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import Optional, Sequence

from .errors import report_errors
from .evaluate.command import add_eval_arguments, add_run_arguments, demo_main, eval_main
from .models.convert.command import add_convert_arguments
from .train.arguments import add_train_arguments
from .train.trainer import train_main


#: How long ``demo`` takes, as the README's "What `make demo` prints" says.
DEMO_TIME = "CPU, about 2 min on 2 cores"


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where a default says nothing: required options, on/off switches and
    options whose help already says what happens without them (default None)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or action.nargs == 0 or action.default is None:
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m openood_diffood`` parser with its ``eval``, ``demo`` and ``train`` subcommands."""
    parser = argparse.ArgumentParser(prog="python -m openood_diffood",
                                     description="DiffOOD for OpenOOD: evaluate it against the baselines, or train "
                                                 "the class-conditional diffusion model it needs.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("eval", help="DiffOOD vs baselines on an OOD benchmark (the demo without model/data args)",
                       description="OpenOOD-style evaluation: FPR@95, AUROC, AUPR_IN, AUPR_OUT per OOD set, near/far "
                                   "means, ID accuracy; tables on the terminal, CSV/JSON/PNG in --out.")
    add_eval_arguments(p)
    add_run_arguments(p)
    p.set_defaults(func=eval_main)
    p = sub.add_parser("demo", help=f"the small benchmark shipped with the package ({DEMO_TIME})")
    add_run_arguments(p, demo=True)
    p.set_defaults(func=demo_main)
    p = sub.add_parser("train", help="train a class-conditional diffusion model for DiffOOD",
                       formatter_class=DefaultsHelpFormatter)
    add_train_arguments(p)
    p.set_defaults(func=train_main)
    add_convert_arguments(sub.add_parser("convert", help="convert the paper's own checkpoints (official DiffOOD "
                                                         "DDIM / iDDPM, CompVis LDM cin256-v2) to diffusers"))
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point; bad inputs (:class:`ConfigError`) end with ``error: ...`` and exit status 2, bugs with their
    traceback."""
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        for developers_only in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.simplefilter("ignore", developers_only)  # other packages' notes to their developers
        warnings.showwarning = _show_warning
        try:
            return report_errors(args.func, args)
        except KeyboardInterrupt as exc:  # eval's carries the command that resumes
            print(f"\ninterrupted: {exc or 'nothing had finished yet'}", file=sys.stderr)
            return 130


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)
