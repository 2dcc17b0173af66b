"""``python -m openood.main --root RUNS ...``: OpenOOD's ``scripts/eval_ood.py`` (and ``eval_ood_imagenet.py``) as
an installed command, with their layout and behaviour, on any machine.

For every ``RUNS/s*/best.ckpt``: reuse ``s*/postprocessors/<name>.pkl`` when it is there, build the classifier as
the scripts do, run OpenOOD's ``Evaluator`` (its APS when the config asks for it), reuse ``s*/scores/<name>.pkl``,
pickle the postprocessor after setup / APS, and write ``RUNS/ood/<name>.csv`` as mean +- std over the runs. Added:
``--data-root`` / ``--config-root``, dotted overrides of the postprocessor's config, checks that fail at once
(nothing is downloaded), and the CPU path. Pickles are read with :func:`.compat.safe_pickle_load`.
"""
from __future__ import annotations

import argparse
import collections.abc
import glob
import os
import pickle
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import yaml

from ..config import ConfigError, check_keys
from .compat import require_openood, safe_pickle_load
from .registry import NAMES, config_path

#: The classifier of each benchmark (scripts/eval_ood.py's NUM_CLASSES and MODEL).
NETWORKS = {"cifar10": ("ResNet18_32x32", 10), "cifar100": ("ResNet18_32x32", 100),
            "imagenet200": ("ResNet18_224x224", 200), "imagenet": ("ResNet50", 1000)}
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
    if name not in NAMES and not os.path.isfile(os.path.join(config_root, "postprocessors", f"{name}.yml")):
        raise ConfigError(f"no config for postprocessor {name!r} at {config_root}/postprocessors/{name}.yml; pass "
                          "--config-root <OpenOOD checkout>/configs (OpenOOD would download it; this never does)")


def check_data_root(data_root: str, id_name: str) -> None:
    """Every image list and image folder OpenOOD's Evaluator reads for ``id_name`` is under ``data_root``."""
    datasets = require_openood("openood.evaluation_api.datasets")
    lists: List[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "imglist_path" in node:
                lists.append(node["imglist_path"])
            for value in node.values():
                walk(value)

    walk(datasets.DATA_INFO[id_name])
    missing = [p for p in lists if not os.path.isfile(os.path.join(data_root, p))]
    folders = [os.path.join(key, name) for name in datasets.benchmarks_dict[id_name]
               for key, names in datasets.dir_dict.items() if name in names]
    missing += [f + "/" for f in folders if not os.path.isdir(os.path.join(data_root, f))
                or not os.listdir(os.path.join(data_root, f))]
    if missing:
        raise ConfigError(f"--data-root {data_root!r} lacks {len(missing)} of the {id_name} benchmark's image lists "
                          f"and folders (e.g. {missing[0]}); pass OpenOOD's data folder (fetched by its "
                          "scripts/download/download.py) as --data-root")


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
    arch, classes = NETWORKS[id_name]
    net = getattr(require_openood("openood.networks"), arch)(num_classes=classes)
    for names, word, module, cls, extra in WRAPPERS:
        if postprocessor in names or (word is not None and word in root):
            kwargs = {k: (net.feature_size if k == "feature_size" else v) for k, v in extra.items()}
            net = getattr(require_openood(module), cls)(backbone=net, num_classes=classes, **kwargs)
            break
    if wrapper == "ASCOODNet":
        net = require_openood("openood.networks.ascood_net").ASCOODNet(backbone=net)
    return net


def postprocessor_config(name: str, config_root: str, id_name: str, overrides: Mapping[str, Any]) -> Any:
    """The config OpenOOD's ``get_postprocessor`` reads (the packaged one for ours when config_root has none; never
    a download), with the dataset name and the dotted overrides."""
    config_module = require_openood("openood.utils.config")
    path = os.path.join(config_root, "postprocessors", f"{name}.yml")
    config = config_module.Config(path if os.path.isfile(path) or name not in NAMES else config_path(name))
    config = config_module.merge_configs(config, config_module.Config(dataset={"name": id_name}))
    for key, value in overrides.items():
        _set_dotted(config, key, value)
    return config


def postprocessor_from_config(name: str, config_root: str, id_name: str, overrides: Mapping[str, Any]) -> Any:
    """OpenOOD's ``get_postprocessor`` on :func:`postprocessor_config`."""
    config = postprocessor_config(name, config_root, id_name, overrides)
    postprocessors = require_openood("openood.evaluation_api.postprocessor").postprocessors
    postprocessor = postprocessors[name](config)
    postprocessor.APS_mode = config.postprocessor.APS_mode
    postprocessor.hyperparam_search_done = False
    return postprocessor


def _set_dotted(config: dict, key: str, value: Any) -> None:
    """``config[a][b][c] = value`` for ``key = "a.b.c"``; every part must already exist (strict, as main.py)."""
    parts, node = key.split("."), config
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth]) or "config"
        if not isinstance(node, dict):
            raise ConfigError(f"--{key}: {where} is a value, not a section")
        try:
            check_keys({part: None}, node, where=where)
        except ConfigError as exc:
            raise ConfigError(f"--{key}: {exc}") from None
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]


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
                 overrides: Mapping[str, Any], preprocessor: Any = None, shuffle: bool = False) -> Any:
    """One run folder: eval_ood.py's loop body. Returns OpenOOD's metrics DataFrame."""
    Evaluator = require_openood("openood.evaluation_api").Evaluator
    name = RENAMED.get(args.postprocessor, args.postprocessor)
    saved = os.path.join(folder, "postprocessors", f"{name}.pkl")
    postprocessor = safe_pickle_load(saved) if os.path.isfile(saved) else \
        postprocessor_from_config(name, args.config_root, args.id_data, overrides)
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
            os.makedirs(os.path.dirname(saved), exist_ok=True)
            with open(saved, "wb") as f:
                pickle.dump(evaluator.postprocessor, f, pickle.HIGHEST_PROTOCOL)
    metrics = evaluator.eval_ood(fsood=args.fsood)
    if args.save_score:
        os.makedirs(os.path.dirname(scores_file), exist_ok=True)
        with open(scores_file, "wb") as f:
            pickle.dump(evaluator.scores, f, pickle.HIGHEST_PROTOCOL)
    return metrics


def leaderboard(args: argparse.Namespace, overrides: Mapping[str, Any]) -> Optional[str]:
    """eval_ood.py over ``--root``'s runs; returns the CSV written (or None when printed)."""
    import pandas as pd

    all_metrics, metrics = [], None
    for folder in run_folders(args.root):
        net = build_network(args.id_data, args.postprocessor, args.root, args.wrapper_net)
        metrics = evaluate_run(args, folder, os.path.join(folder, "best.ckpt"), net, overrides)
        all_metrics.append(metrics.to_numpy())
    stacked = np.stack(all_metrics, axis=0)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    cells = [["{:.2f} \u00B1 {:.2f}".format(mean[i, j], std[i, j]) for j in range(mean.shape[1])]
             for i in range(len(mean))]
    frame = pd.DataFrame(cells, index=metrics.index, columns=metrics.columns)
    return _write(frame, args.root, args, lambda f, path: f.to_csv(path))


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
    metrics = evaluate_run(args, root, args.ckpt_path, net, overrides, preprocessor=preprocessor, shuffle=True)
    return _write(metrics, root, args, lambda f, path: None if os.path.isfile(path)
                  else f.to_csv(path, float_format="{:.2f}".format))


def _write(frame: Any, root: str, args: argparse.Namespace, save) -> Optional[str]:
    if not args.save_csv:
        print(frame)
        return None
    folder = os.path.join(root, "fsood" if args.fsood else "ood")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{RENAMED.get(args.postprocessor, args.postprocessor)}.csv")
    save(frame, path)
    return path
