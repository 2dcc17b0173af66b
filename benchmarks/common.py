"""What every benchmark shares: where the shared real data is, and the provenance every results file records
(git commit, versions, which baseline backend ran, SHA-256 of the data and weight files, compute time)."""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from openood_diffood.hashing import file_sha256

from . import stats

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CACHE = REPO / "benchmarks" / ".cache"
#: Environment variable naming the shared data folder (default ``<repo>/../shared/data``).
DATA_ENV = "DIFFOOD_DATA"
_SHA_CACHE: Dict[str, str] = {}


def data_dir() -> Path:
    """The shared data folder; exits with a clear message when it is missing."""
    path = Path(os.environ.get(DATA_ENV, REPO.parent / "shared" / "data"))
    if not (path / "cifar10_test.npz").is_file():
        raise SystemExit(f"shared data not found at {path}: set {DATA_ENV} to the folder with cifar10_test.npz")
    return path


def git_commit() -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "HEAD") or "unknown"
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def _version(name: str) -> Optional[str]:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def files_sha256(paths: Iterable[Union[str, os.PathLike]]) -> Dict[str, str]:
    """SHA-256 of every file (every file under a folder), by path."""
    out = {}
    for p in paths:
        p = Path(p)
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file():
                key = str(f.resolve())
                _SHA_CACHE.setdefault(key, file_sha256(f))
                out[str(f)] = _SHA_CACHE[key]
    return out


def provenance(files: Iterable[Union[str, os.PathLike]], baseline_backends: Mapping[str, str],
               compute_seconds: Mapping[str, float], **extra: Any) -> Dict[str, Any]:
    """The provenance block of a results file: ``compute_seconds`` names each part of the compute (stored round
    trips count with the time they took when computed) and is summed into ``compute_seconds_total``."""
    versions = {name: _version(name) for name in ("openood-diffood", "torch", "diffusers", "openood", "pytorch-ood",
                                                  "scipy", "numpy")}
    versions["torch"] = torch.__version__
    return {"git_commit": git_commit(), "versions": versions, "baseline_backends": dict(baseline_backends),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, {os.cpu_count()} cores",
            "sha256": files_sha256(files), "compute_seconds": dict(compute_seconds),
            "compute_seconds_total": float(sum(compute_seconds.values())), **extra}


def provenance_lines(meta: Mapping[str, Any]) -> List[str]:
    """Markdown lines stating a provenance block."""
    v = meta["versions"]
    lib = ", ".join(f"{k} {v[k]}" for k in v if v[k])
    backends = ", ".join(f"{m}: {b}" for m, b in meta["baseline_backends"].items()) or "none"
    parts = ", ".join(f"{k} {s / 60:.1f} min" for k, s in meta["compute_seconds"].items())
    lines = [f"Commit `{meta['git_commit']}`; {lib}; {meta['machine']}. Baselines from: {backends}.",
             f"Compute time in all: {meta['compute_seconds_total'] / 60:.1f} min ({parts}); stored round trips "
             "count with the time they took when computed.", "", "SHA-256 of the data and weight files used:", ""]
    return lines + [f"- `{path}`: `{sha}`" for path, sha in meta["sha256"].items()]


def add_output_arguments(parser: argparse.ArgumentParser, stage: str, stage_help: str) -> None:
    """The arguments every benchmark script shares: threads, the stage that stops early, the round-trip store,
    where results go and their device tag."""
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: several jobs share the cores without oversubscription)")
    parser.add_argument("--stage", choices=("all", stage), default="all", help=stage_help)
    parser.add_argument("--cache-dir", type=Path, default=CACHE / "roundtrips", help="the round-trip store")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    parser.add_argument("--tag", default="cpu", help="device tag of the results file names")
    parser.add_argument("--resamples", type=int, default=stats.RESAMPLES,
                        help="bootstrap resamples of every interval (fewer: quicker, coarser intervals)")


def apply_run_arguments(args: argparse.Namespace) -> None:
    """Apply the shared arguments that set up the process: torch's CPU threads, the bootstrap's resamples."""
    torch.set_num_threads(args.threads)
    stats.RESAMPLES = args.resamples


def results_header(title: str, script: str, findings: str, meta: Mapping[str, Any], png: str) -> List[str]:
    """The opening lines of a generated results file: title, what wrote it, where the findings are, provenance and
    the figure."""
    return [f"# {title}", "", f"Generated by `python -m benchmarks.{script}` (do not edit); the findings in words "
            f"are in [{findings}]({findings}), written by hand.", "", *provenance_lines(meta), "",
            f"![{script}]({png})", ""]


def int_list(text: str) -> List[int]:
    """argparse type: comma-separated integers."""
    return [int(v) for v in text.split(",")]


def float_list(text: str) -> List[float]:
    """argparse type: comma-separated numbers."""
    return [float(v) for v in text.split(",")]


def setting(text: str) -> Tuple[int, float]:
    """argparse type: ``t,w``."""
    t, w = text.split(",")
    return int(t), float(w)


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=_plain))


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
