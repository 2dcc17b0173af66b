"""A source state dict -> a diffusers model's, module by module: a :data:`ModuleTable` (source prefix -> diffusers
prefix) with a :data:`Leaf` renaming map, built from the source's config; the first key whose place or shape
differs fails, named with both shapes."""
from __future__ import annotations

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from ...errors import ConfigError

#: (parameter name inside the module, tensor) -> the diffusers names and tensors it becomes (None: unknown name).
Leaf = Callable[[str, torch.Tensor], Optional[List[Tuple[str, torch.Tensor]]]]
#: source module prefix -> (diffusers module prefix, leaf map); prefixes end with ".".
ModuleTable = Dict[str, Tuple[str, Leaf]]


def conv1x1_as_linear(tensor: torch.Tensor) -> torch.Tensor:
    """The weight of a 1x1 convolution (C_out, C_in, 1[, 1]) as that of the equivalent linear layer."""
    return tensor.flatten(1) if tensor.ndim > 2 else tensor


def renamed(modules: Mapping[str, str], linear: Tuple[str, ...] = ()) -> Leaf:
    """A leaf map renaming the submodule of each parameter by ``modules`` (``nin_shortcut`` -> ``conv_shortcut``);
    the weights of the submodules named in ``linear`` are 1x1 convolutions that diffusers holds as linear layers."""
    def leaf(name: str, tensor: torch.Tensor) -> Optional[List[Tuple[str, torch.Tensor]]]:
        module, _, param = name.rpartition(".")
        if module not in modules:
            return None
        value = conv1x1_as_linear(tensor) if module in linear and param == "weight" else tensor
        return [(f"{modules[module]}.{param}" if modules[module] else param, value)]
    return leaf


def block_types(attention: Sequence[bool], attn: str = "Attn") -> Dict[str, Tuple[str, ...]]:
    """diffusers' ``down_block_types`` / ``up_block_types``, ``attn`` blocks at the levels that attend."""
    return dict(down_block_types=tuple(f"{attn}DownBlock2D" if a else "DownBlock2D" for a in attention),
                up_block_types=tuple(f"{attn}UpBlock2D" if a else "UpBlock2D" for a in reversed(attention)))


def same_names(name: str, tensor: torch.Tensor) -> List[Tuple[str, torch.Tensor]]:
    """The leaf map of modules whose parameters keep their names."""
    return [(name, tensor)]


#: A module that is one parameterised layer with the same parameter names (conv_in, a time-embedding linear).
LAYER = renamed({"": ""})


def nest(table: ModuleTable, src: str, dst: str) -> ModuleTable:
    """``table`` for a submodule: ``src`` before every source prefix and ``dst`` before every diffusers one."""
    return {src + key: (dst + target, leaf) for key, (target, leaf) in table.items()}


def source_module(key: str, table: ModuleTable) -> Optional[str]:
    """The longest prefix of ``key`` that is a module of ``table``."""
    parts = key.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end]) + "."
        if prefix in table:
            return prefix
    return None


def shape(t: torch.Size) -> str:
    return str(tuple(t))


def map_state_dict(state: Mapping[str, torch.Tensor], table: ModuleTable, expected: Mapping[str, torch.Size],
                   architecture: str) -> Dict[str, torch.Tensor]:
    """``state`` renamed through ``table`` into the keys of ``expected`` (a diffusers model's state-dict shapes).
    ``architecture`` describes the config the table was built from, for the error raised at the first source key
    without a place in it, the first shape that differs, or the first diffusers key no source key fills."""
    out: Dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        prefix = source_module(key, table)
        mapped = None
        if prefix is not None:
            target, leaf = table[prefix]
            try:
                mapped = leaf(key[len(prefix):], tensor)
            except RuntimeError as exc:  # a tensor that cannot be split the way the config says
                raise ConfigError(f"checkpoint key {key!r} of shape {shape(tensor.shape)} does not fit {architecture}"
                                  f" ({exc})") from None
        if mapped is None:
            raise ConfigError(f"checkpoint key {key!r} of shape {shape(tensor.shape)} has no place in {architecture}: "
                              "the checkpoint and the config describe different networks (check --config and --from)")
        for name, value in mapped:
            new = target + name
            if new not in expected:
                raise ConfigError(f"checkpoint key {key!r} has no place in {architecture} (diffusers has no {new!r}): "
                                  "the checkpoint and the config describe different networks")
            if tuple(value.shape) != tuple(expected[new]):
                raise ConfigError(f"checkpoint key {key!r} has shape {shape(tensor.shape)}, but {architecture} needs "
                                  f"{shape(expected[new])} for diffusers' {new!r}: the config does not describe this "
                                  "checkpoint (check --config)")
            out[new] = value.clone(memory_format=torch.contiguous_format)  # own storage, as safetensors needs
    missing = [k for k in expected if k not in out]
    if missing:
        owners = [(len(dst), src) for src, (dst, _) in table.items() if missing[0].startswith(dst)]
        where = f" (from the source module {max(owners)[1]!r})" if owners else ""
        raise ConfigError(f"the checkpoint has no weights for diffusers' {missing[0]!r}{where}, which {architecture} "
                          f"has ({len(missing)} such keys): the config describes a larger network than the checkpoint")
    return out


def build_model(model_class: Type[nn.Module], config: Mapping, state: Mapping[str, torch.Tensor],
                table: ModuleTable, architecture: str) -> nn.Module:
    """The diffusers ``model_class(**config)`` holding ``state`` mapped through ``table`` (never randomly
    initialised: its parameters are created empty and then take the checkpoint's tensors)."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = model_class(**config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(map_state_dict(state, table, expected, architecture), strict=True, assign=True)
    return model.eval()
