"""``python -m openood.main --root RUNS ...``: OpenOOD's ``scripts/eval_ood.py`` (and ``eval_ood_imagenet.py``) as
an installed command: per ``RUNS/s*/best.ckpt`` OpenOOD's ``Evaluator`` with the scripts' pickles and
``RUNS/ood/<name>.csv`` (mean +- std). Added: ``--data-root`` / ``--config-root``, dotted overrides, checks that
fail at once, the CPU path, result files never silently replaced, and for DiffOOD a ``<name>.json`` of the models."""
from __future__ import annotations

import argparse
import collections.abc
import glob
import json
import os
import pickle
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import yaml

from ..config import ConfigError
from ..evaluate.metrics import MethodResult, format_method_table, write_keeping_previous, write_openood_csv
from .compat import BENCHMARKS, NETWORKS, require_openood, safe_pickle_load
from .registry import NAMES, config_file, postprocessor_config, postprocessor_from_config, result_name
#: Nets eval_ood.py wraps the backbone in, in its order of checks: (postprocessor names, or a word of --root,
#: module, class, extra keyword arguments; "feature_size" takes the backbone's).
_MLP = {"head": "mlp", "feat_dim": 128}
WRAPPERS = (
    (("conf_branch",), None, "openood.networks.conf_branch_net", "ConfBranchNet", {}),
    (("godin",), None, "openood.networks.godin_net", "GodinNet", {"feature_size": True}),
    (("rotpred",), None, "openood.networks.rot_net", "RotNet", {}),
    ((), "csi", "openood.networks.csi_net", "CSINet", {"feature_size": True}),
    ((), "udg", "openood.networks.udg_net", "UDGNet", {"num_clusters": 1000}),
    (("cider", "reweightood"), None, "openood.networks.cider_net", "CIDERNet", _MLP),
    (("npos",), None, "openood.networks.npos_net", "NPOSNet", _MLP),
    (("palm",), None, "openood.networks.palm_net", "PALMNet", _MLP),
    (("t2fnorm",), None, "openood.networks.t2fnorm_net", "T2FNormNet", {}),
)
#: eval_ood.py evaluates PALM's net with the MDS postprocessor.
RENAMED = {"palm": "mds"}


# ----------------------------------------------------------------------------------------------- checks
def check_postprocessor(name: str, config_root: str) -> None:
    """The name is one of OpenOOD's postprocessors (or ours), and its config is on disk (OpenOOD downloads it)."""
    known = require_openood("openood.evaluation_api.postprocessor").postprocessors
    if name not in known and name not in NAMES:
        raise ConfigError(f"unknown --postprocessor {name!r}; OpenOOD's are {', '.join(sorted(known))}")
    config_file(name, config_root)


def evaluator_files(data_root: str, id_name: str, fsood: bool) -> List[str]:
    """What OpenOOD's ``Evaluator`` opens under ``data_root`` before it scores anything, relative to it: every image
    list it builds a loader for (ID train / val / test, the csid sets it names, OOD val, near and far; not the lists
    DATA_INFO only mentions, such as cifar10's cinic10), the folder of each set ``data_setup`` checks (it downloads
    a missing or empty one), and, with ``fsood``, the folders the csid lists' images live in (scored only then).
    Folders end with ``/``."""
    datasets = require_openood("openood.evaluation_api.datasets")
    info = datasets.DATA_INFO[id_name]
    csid = [info["csid"][name] for name in info["csid"]["datasets"]]
    sets = list(info["id"].values()) + csid
    for split, entry in info["ood"].items():
        sets += [entry] if split == "val" else [entry[name] for name in entry["datasets"]]
    files = [s["imglist_path"] for s in sets]
    for name in datasets.benchmarks_dict[id_name]:  # data_setup's download_dataset: the first folder naming it
        files += [os.path.join(key, name) + "/" for key, names in datasets.dir_dict.items() if name in names][:1]
    for entry in csid if fsood else []:
        listed = os.path.join(data_root, entry["imglist_path"])
        if os.path.isfile(listed):
            with open(listed) as f:
                tops = {line.split("/", 1)[0] for line in f if "/" in line.split(" ", 1)[0]}
            files += sorted(os.path.join(entry["data_dir"], top) + "/" for top in tops)
    return files


def check_data_root(data_root: str, id_name: str, fsood: bool = False) -> None:
    """Everything :func:`evaluator_files` names is under ``data_root`` (a folder present and not empty)."""
    missing = [f for f in dict.fromkeys(evaluator_files(data_root, id_name, fsood))
               if not (os.path.isdir(os.path.join(data_root, f)) and os.listdir(os.path.join(data_root, f))
                       if f.endswith("/") else os.path.isfile(os.path.join(data_root, f)))]
    if missing:
        raise ConfigError(f"--data-root {data_root!r} lacks {len(missing)} of the image lists and folders OpenOOD's "
                          f"Evaluator reads for {id_name}{' with --fsood' if fsood else ''} (e.g. {missing[0]}); "
                          "pass OpenOOD's data folder (fetched by its scripts/download/download.py) as --data-root")


def run_folders(root: str) -> List[str]:
    """The ``s*`` run folders of ``root``, each holding ``best.ckpt``."""
    folders = sorted(glob.glob(os.path.join(root, "s*")))
    if not folders:
        raise ConfigError(f"--root {root!r} has no s* run folders; OpenOOD's layout is <root>/s0/best.ckpt")
    lacking = [f for f in folders if not os.path.isfile(os.path.join(f, "best.ckpt"))]
    if lacking:
        raise ConfigError(f"{lacking[0]} has no best.ckpt; every s* folder of --root holds one (OpenOOD's layout)")
    return folders


# ----------------------------------------------------------------------------------------------- pieces
def build_network(id_name: str, postprocessor: str, root: str, wrapper: Optional[str] = None) -> torch.nn.Module:
    """The classifier eval_ood.py builds for this benchmark, postprocessor, run folder and ``--wrapper-net``."""
    classes = BENCHMARKS[id_name][0]
    net = getattr(require_openood("openood.networks"), NETWORKS[id_name])(num_classes=classes)
    for names, word, module, cls, extra in WRAPPERS:
        if postprocessor in names or (word is not None and word in root):
            kwargs = {k: (net.feature_size if k == "feature_size" else v) for k, v in extra.items()}
            net = getattr(require_openood(module), cls)(backbone=net, num_classes=classes, **kwargs)
            break
    if wrapper == "ASCOODNet":
        net = require_openood("openood.networks.ascood_net").ASCOODNet(backbone=net)
    return net


def parse_overrides(pairs: Sequence[str]) -> Dict[str, Any]:
    """``--postprocessor.a.b value`` pairs -> {"postprocessor.a.b": YAML value}."""
    out = {}
    for flag, text in zip(pairs[::2], pairs[1::2]):
        if not flag.startswith("--postprocessor."):
            raise ConfigError(f"unknown option {flag!r}; with --root, dotted overrides change the postprocessor's "
                              "config: --postprocessor.postprocessor_args.<key> <value>")
        out[flag[2:]] = yaml.safe_load(text)
    return out


def _merge(target: dict, update: Mapping) -> dict:
    """scripts/eval_ood.py's ``update``: nested dict update."""
    for key, value in update.items():
        target[key] = _merge(target.get(key, {}), value) if isinstance(value, collections.abc.Mapping) else value
    return target


# ----------------------------------------------------------------------------------------------- the run
def evaluate_run(args: argparse.Namespace, folder: str, checkpoint: str, net: torch.nn.Module,
                 overrides: Mapping[str, Any], preprocessor: Any = None,
                 shuffle: bool = False) -> Tuple[MethodResult, Optional[Dict[str, Any]]]:
    """One run folder: eval_ood.py's loop body. Returns OpenOOD's metrics (percent) and, for DiffOOD, the
    postprocessor's provenance (its diffusion model and that model's fingerprint)."""
    Evaluator = require_openood("openood.evaluation_api").Evaluator
    config_name = RENAMED.get(args.postprocessor, args.postprocessor)
    name = results_name(args, overrides)
    saved = os.path.join(folder, "postprocessors", f"{name}.pkl")
    postprocessor = safe_pickle_load(saved) if os.path.isfile(saved) else \
        postprocessor_from_config(config_name, args.config_root, args.id_data, overrides)
    net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    net.cuda()
    net.eval()
    evaluator = Evaluator(net, id_name=args.id_data, data_root=args.data_root, config_root=args.config_root,
                          preprocessor=preprocessor, postprocessor_name=name, postprocessor=postprocessor,
                          batch_size=args.batch_size, shuffle=shuffle, num_workers=args.num_workers)
    scores_file = os.path.join(folder, "scores", f"{name}.pkl")
    if os.path.isfile(scores_file):
        _merge(evaluator.scores, safe_pickle_load(scores_file))
        print("Loaded pre-computed scores from file.")
    if hasattr(evaluator.postprocessor, "setup_flag") or evaluator.postprocessor.hyperparam_search_done is True:
        if not os.path.isfile(saved):
            _pickle(saved, evaluator.postprocessor)
    metrics = evaluator.eval_ood(fsood=args.fsood)
    if args.save_score:
        _pickle(scores_file, evaluator.scores)
    provenance = getattr(evaluator.postprocessor, "provenance", None)
    return MethodResult(name, metrics.to_dict(orient="index")), provenance() if callable(provenance) else None


def _pickle(path: str, obj: Any) -> None:
    """eval_ood.py's pickle of the postprocessor or the scores (its folder made first)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, pickle.HIGHEST_PROTOCOL)


def results_name(args: argparse.Namespace, overrides: Mapping[str, Any]) -> str:
    """The name of the run's files (pickles, scores, CSV): :func:`.registry.result_name` (``diffood+knn``)."""
    name = RENAMED.get(args.postprocessor, args.postprocessor)
    return result_name(name, postprocessor_config(name, args.config_root, args.id_data, overrides))


def leaderboard(args: argparse.Namespace, overrides: Mapping[str, Any]) -> Optional[str]:
    """eval_ood.py over ``--root``'s runs; returns the CSV written (or None when printed)."""
    runs, provenance = [], {}
    for folder in run_folders(args.root):
        net = build_network(args.id_data, args.postprocessor, args.root, args.wrapper_net)
        result, provenance[os.path.basename(folder)] = evaluate_run(args, folder, os.path.join(folder, "best.ckpt"),
                                                                    net, overrides)
        runs.append(result)
    return _write(runs, provenance, args.root, args, spread=True)


def check_imagenet_checkpoint(arch: str, ckpt_path: str) -> None:
    """eval_ood_imagenet.py's --ckpt-path case: OpenOOD's ResNet50 and a state dict on disk."""
    if arch != "resnet50":
        raise ConfigError(f"--arch {arch} needs torchvision's pretrained weights, which this command never "
                          "downloads; with --ckpt-path use --arch resnet50 (OpenOOD's ResNet50)")
    if not os.path.isfile(ckpt_path):
        raise ConfigError(f"--ckpt-path {ckpt_path!r} does not exist; pass the ResNet50 state dict")


def imagenet(args: argparse.Namespace, overrides: Mapping[str, Any]) -> Optional[str]:
    """eval_ood_imagenet.py with ``--ckpt-path`` (OpenOOD's ResNet50 and its preprocessing)."""
    from torchvision import transforms as trn

    net = build_network("imagenet", args.postprocessor, os.path.dirname(args.ckpt_path))
    preprocessor = trn.Compose([trn.Resize(256), trn.CenterCrop(224), trn.ToTensor(),
                                trn.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    root = os.path.dirname(os.path.abspath(args.ckpt_path))
    result, provenance = evaluate_run(args, root, args.ckpt_path, net, overrides, preprocessor=preprocessor,
                                      shuffle=True)
    return _write([result], {os.path.basename(args.ckpt_path): provenance}, root, args, spread=False)


def _write(runs: Sequence[MethodResult], provenance: Mapping[str, Optional[Dict[str, Any]]], root: str,
           args: argparse.Namespace, spread: bool) -> Optional[str]:
    """Print the table, or write ``<root>/ood/<name>.csv`` (``fsood/`` with --fsood) and, for DiffOOD, the
    provenance of each run next to it as ``<name>.json``."""
    name = runs[0].method
    if not args.save_csv:
        print(format_method_table(name, runs))
        return None
    path = os.path.join(root, "fsood" if args.fsood else "ood", f"{name}.csv")
    if any(provenance.values()):
        write_keeping_previous(os.path.splitext(path)[0] + ".json",
                               json.dumps({"postprocessor": name, "runs": provenance}, indent=2) + "\n")
    return write_openood_csv(path, runs, spread=spread)
