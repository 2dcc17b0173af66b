"""The classifier's view of an image: logits plus the feature space DiffOOD compares, for any classifier.

OpenOOD nets are read through their own ``return_feature`` / ``return_feature_list`` keywords. Any other
``nn.Module`` works through forward hooks: the penultimate feature is the input of its last ``nn.Linear``
(torchvision ResNets, the akamaster CIFAR ResNets).

``layer<k>`` means one thing on every net: entry k of OpenOOD's feature list. On OpenOOD nets that is
``return_feature_list``'s entry k; on any other net with stages named ``layer1``, ``layer2``, ... (torchvision and
CIFAR ResNets) it is built the same way: ``layer0`` the input of the first stage (the stem's output), ``layer<k>``
the output of stage ``layer<k>``, unpooled, except the last stage, which is global-average-pooled as OpenOOD pools
it (on a ResNet ``layer4`` is then the unclipped penultimate feature, 512 or 2048 values, not a 2048x7x7 map).
"""
from __future__ import annotations

import inspect
import re
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

#: The feature spaces DiffOOD compares, besides ``layer<k>`` (:data:`LAYER_SPACE`); ``image`` is the input itself
#: (:func:`openood_diffood.method.diffood.classify`).
SPACES = ("logit", "feature", "image")
LAYER_SPACE = re.compile(r"^layer(\d+)$")


def _accepts(net: nn.Module, kwarg: str) -> bool:
    try:
        return kwarg in inspect.signature(net.forward).parameters
    except (TypeError, ValueError):
        return False


def last_linear(net: nn.Module) -> nn.Linear:
    """The classifier's head: ``get_fc_layer()`` of OpenOOD nets, else its last ``nn.Linear``."""
    if hasattr(net, "get_fc_layer"):
        return net.get_fc_layer()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{type(net).__name__} has no nn.Linear: cannot find the penultimate feature "
                          "(wrap it so that forward(x, return_feature=True) returns (logits, feature))")
    return linears[-1]


class Classifier(nn.Module):
    """Wraps a classifier so that DiffOOD can read logits, penultimate features and intermediate layers."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.openood_style = _accepts(net, "return_feature") and _accepts(net, "return_feature_list")
        self.num_classes = last_linear(net).out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits only."""
        out = self.net(x)
        return out[0] if isinstance(out, tuple) else out

    def features(self, x: torch.Tensor, space: str,
                 threshold: Optional[float] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, flattened features) in ``space``: ``logit``, ``feature`` (penultimate, clipped at
        ``threshold`` when given) or ``layer<k>``."""
        if space == "logit":
            logits = self(x)
            return logits, logits
        if space == "feature":
            logits, feat = self.penultimate(x)
            if threshold is not None:
                feat = feat.clip(max=threshold)
            return logits, feat.flatten(1)
        match = LAYER_SPACE.match(space)
        if match is None:
            raise ConfigError(f"the classifier has no feature space {space!r}: use logit, feature or layer<k>")
        logits, layer = self.layer(x, int(match.group(1)))
        return logits, layer.flatten(1)

    def penultimate(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, the input of the last linear layer)."""
        if self.openood_style:
            return self.net(x, return_feature=True)
        return self._hooked(x, last_linear(self.net), takes=True)

    def _hooked(self, x: torch.Tensor, module: nn.Module, takes: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, what ``module`` takes (``takes``) or returns in the forward pass of ``x``), read by a hook."""
        captured: List[torch.Tensor] = []
        handle = module.register_forward_pre_hook(lambda m, inp: captured.append(inp[0])) if takes else \
            module.register_forward_hook(lambda m, inp, out: captured.append(out))
        try:
            logits = self(x)
        finally:
            handle.remove()
        return logits, captured[-1]

    def layer(self, x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(logits, entry k of the feature list): see the module docstring."""
        if self.openood_style:
            logits, feats = self.net(x, return_feature_list=True)
            if not 0 <= k < len(feats):
                raise ConfigError(f"space layer{k}: the net returns {len(feats)} feature maps "
                                  f"(layer0..layer{len(feats) - 1})")
            return logits, feats[k]
        stages = sorted(int(m.group(1)) for name, _ in self.net.named_children() if (m := LAYER_SPACE.match(name)))
        if k not in stages and not (k == 0 and stages):
            raise ConfigError(f"space layer{k}: {type(self.net).__name__} has no child module 'layer{k}' (has "
                              f"{['layer%d' % i for i in stages]}; layer0 is the input of the first)")
        logits, out = self._hooked(x, getattr(self.net, f"layer{k if k in stages else stages[0]}"), k not in stages)
        if k == stages[-1] and out.ndim == 4:  # the last stage pooled, as OpenOOD's nets return it
            out = F.adaptive_avg_pool2d(out, 1)
        return logits, out


def as_classifier(net: nn.Module) -> Classifier:
    """Wrap ``net`` (no-op if it is already a :class:`Classifier`)."""
    return net if isinstance(net, Classifier) else Classifier(net)
