"""The machinery of :mod:`openood_diffood.config`: strict, immutable dataclasses checked by their fields'
annotations, their command-line flags, and the strict reading of a yml mapping.

A field is its annotation plus :func:`option` (default, help text, flag). :func:`parse` reads the annotation:
``Optional[X]`` (None, "none", "null" -> None), ``Literal`` choices, ``Annotated[X, Ge(low)]`` bounds,
``Annotated[X, validator]`` (a special case, a function of the value), ``Tuple[X, ...]`` (a list, or "a,b"), bool,
int, float, str; :func:`add_flags` makes the command-line flags from the same annotations. Every error is a
:class:`ConfigError` that names the field, what it must be and the value given.
"""
import argparse
import dataclasses
import difflib
import os
from typing import Annotated, Any, Callable, Dict, Iterable, Literal, Mapping, NamedTuple, Optional, Tuple, Union
from typing import get_args, get_origin

import yaml

from .errors import ConfigError, MissingFileError

TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


class Ge(NamedTuple):
    """A lower bound of a number field: ``Annotated[int, Ge(1)]``."""
    low: float


def parse(name: str, hint: Any, value: Any) -> Any:
    """``value`` of field ``name`` checked and converted as its annotation ``hint`` says (see the module)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Union and type(None) in args:
        none = value is None or str(value).lower() in ("none", "null")
        return None if none else parse(name, next(a for a in args if a is not type(None)), value)
    if origin is Annotated:
        validators = [m for m in args[1:] if callable(m)]
        if validators:
            return validators[0](value)
        value = parse(name, args[0], value)
        for low in (m.low for m in args[1:] if isinstance(m, Ge) and value < m.low):
            raise ConfigError(f"{name} must be >= {low:g}, got {f'{value:g}' if isinstance(value, float) else value}")
        return value
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(args)}, got {value!r}")
        return value
    if hint is str:
        return str(value)
    if origin is tuple:
        try:
            return tuple(args[0](v) for v in (value.split(",") if isinstance(value, str) else value))
        except (TypeError, ValueError):
            what = "integers" if args[0] is int else "numbers"
            raise ConfigError(f"{name} must be a list of {what}, got {value!r}") from None
    if hint is bool:
        if isinstance(value, bool) or str(value).lower() in TRUE + FALSE:
            return value if isinstance(value, bool) else str(value).lower() in TRUE
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    what = "an integer" if hint is int else "a number"
    try:
        if hint is int and (isinstance(value, bool) or (isinstance(value, float) and not value.is_integer())):
            raise ValueError(value)  # True or 2.5 is no integer
        return hint(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be {what}, got {value!r}") from None


def option(default: Any, help: str, flag: Optional[str] = "", metavar: Optional[str] = None) -> Any:
    """A field: its default, ``--help`` text, command-line flag (``""``: ``--<name>``; None: no flag) and
    metavar; its annotation gives its check."""
    return dataclasses.field(default=default, metadata=dict(help=help, flag=flag, metavar=metavar))


def check_keys(mapping: Mapping[str, Any], known: Iterable[str], where: str = "config") -> None:
    """Raise a ConfigError for the first key of ``mapping`` that is not in ``known``, naming the nearest one."""
    known = tuple(known)
    for key in mapping:
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"unknown {where} key {key!r}{hint}; known keys: {', '.join(known)}")


def read_yaml(path: Union[str, os.PathLike], what: str) -> Dict[str, Any]:
    """A yml file as a mapping (empty: {}); a missing, invalid or non-mapping file is an error naming ``what`` it
    should be."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFileError(f"config file {path!r} does not exist; give the path of {what}")
    with open(path) as f:
        try:
            loaded = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path!r} is not valid YAML ({exc}); fix its syntax") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path!r} holds a {type(loaded).__name__}, not a mapping; give {what}")
    return loaded


class Strict:
    """Base of a ``@dataclass(frozen=True)`` whose every field is checked by :func:`parse` when it is made, and
    whose constructor names the nearest field for an unknown keyword (a ConfigError, not a TypeError)."""

    def __new__(cls, *args: Any, **kwargs: Any):
        check_keys(kwargs, cls.field_names())
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, parse(f.name, f.type, getattr(self, f.name)))
        self._check()

    def _check(self) -> None:
        """Checks that involve several fields."""

    @classmethod
    def field_names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **changes: Any):
        """A copy with some fields changed (unknown names are an error; every value is checked again)."""
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> Dict[str, Any]:
        """Every field as plain data."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


# ----------------------------------------------------------------------------------------------- command line
def argparse_type(name: str, hint: Any) -> Callable[[str], Any]:
    """An argparse type: :func:`parse` of a value annotated ``hint``, its ConfigError as argparse's error."""
    def convert(text: str) -> Any:
        try:
            return parse(name, hint, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


#: argparse type: an integer >= 1.
positive_int = argparse_type("the value", Annotated[int, Ge(1)])


def flag(f: dataclasses.Field) -> Optional[str]:
    """The command-line flag of field ``f`` (None: it has none)."""
    return None if f.metadata["flag"] is None else f.metadata["flag"] or "--" + f.name.replace("_", "-")


def dest(f: dataclasses.Field) -> str:
    """Where argparse puts field ``f``: its flag's dest, else the field's name (a command's own flag may set it)."""
    return flag(f)[2:].replace("-", "_") if flag(f) else f.name


def add_flags(group: Any, cls: type, skip: Iterable[str] = ()) -> None:
    """Add a flag, default None, for every field of ``cls`` that has one (not named in ``skip``): help from the
    field; the type (its check), choices and on/off switches from its annotation."""
    for f in dataclasses.fields(cls):
        if flag(f) is None or f.name in skip:
            continue
        kwargs: Dict[str, Any] = dict(action=argparse.BooleanOptionalAction) if f.type is bool else dict(
            type=argparse_type(f.name, f.type), metavar=f.metadata["metavar"],
            choices=get_args(f.type) if get_origin(f.type) is Literal else None)
        group.add_argument(flag(f), default=None, help=f.metadata["help"], **kwargs)


def flag_values(args: argparse.Namespace, cls: type) -> Dict[str, Any]:
    """The fields of ``cls`` that ``args`` sets (not None)."""
    values = {f.name: getattr(args, dest(f), None) for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if v is not None}
