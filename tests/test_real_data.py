"""DiffOOD on real images with the shared reference models (skipped where ../shared/data is absent)."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import load_npz_normalized
from openood_diffood import DiffOOD
from openood_diffood.method.features import Classifier
from openood_diffood.method.normalization import DATASET_STATS
from openood_diffood.models.checkpoints import load_state_dict_file
from openood_diffood.models.networks import cifar_resnet, resnet18_32x32

N = 64  # images per set
# Cheap settings for a CPU test: t = 300 as in the paper, but stride 100 (3 DDIM steps instead of 15) and one repeat.
CHEAP = dict(timestep=300, stride=100, repeats=1, guidance=3.0, space="logit", seed=0)
MIN_AUROC = 0.75


def test_diffood_separates_cifar10_from_tiny_imagenet(shared_data):
    weights = shared_data / "weights"
    net = resnet18_32x32()
    net.load_state_dict(load_state_dict_file(weights / "cifar10_resnet18_32x32.pt"))
    rng = np.random.default_rng(0)
    with np.load(shared_data / "tin_val_32.npz") as f:
        tin_pool = np.flatnonzero(f["openood_cifar10_test_tin"])
    mean, std = DATASET_STATS["cifar10"]
    id_index = np.sort(rng.choice(10000, N, replace=False))
    ood_index = np.sort(rng.choice(tin_pool, N, replace=False))
    x_id = load_npz_normalized(shared_data / "cifar10_test.npz", id_index, mean, std)
    x_ood = load_npz_normalized(shared_data / "tin_val_32.npz", ood_index, mean, std)
    engine = DiffOOD(net.eval(), weights / "cifar10_cond_unet", batch_size=N, **CHEAP)
    s_id, s_ood = engine.score(x_id).score, engine.score(x_ood).score
    auroc = roc_auc_score(np.r_[np.zeros(N), np.ones(N)], np.r_[s_id, s_ood])
    assert auroc >= MIN_AUROC, f"AUROC {auroc:.3f} < {MIN_AUROC} ({N} CIFAR-10 vs {N} TIN images, {CHEAP})"


def test_generic_adapter_runs_the_akamaster_resnet20(shared_data):
    """The published 91.73% model through the nn.Module adapter path (no OpenOOD keywords), on 1,000 images."""
    net = cifar_resnet(20)
    net.load_state_dict(load_state_dict_file(shared_data / "weights" / "resnet20-12fca82f.th"))
    idx = np.arange(0, 10000, 10)
    x = load_npz_normalized(shared_data / "cifar10_test.npz", idx, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    with np.load(shared_data / "cifar10_test.npz") as f:
        labels = torch.from_numpy(f["labels"][idx])
    clf = Classifier(net.eval())
    with torch.no_grad():
        logits, feat = clf.features(x, "feature")
    assert feat.shape == (1000, 64)
    assert (logits.argmax(1) == labels).float().mean() > 0.88
