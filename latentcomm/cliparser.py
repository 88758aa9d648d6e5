"""The argument parser every ``latentcomm`` subcommand starts from (the command table is in ``cli.py``), and
config dataclasses as flags: one ``--field-name`` per field, the default stated once, in the dataclass."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, Literal, TypeVar, Union

C = TypeVar("C")


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser named ``latentcomm PROG`` that shows each flag's default in ``--help``."""
    return argparse.ArgumentParser(prog=f"latentcomm {prog}", description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_config_arguments(ap: argparse.ArgumentParser, cls: type, *, help: Mapping[str, str] | None = None,
                         required: Collection[str] = ()) -> None:
    """``--field-name`` for every field of the config dataclass ``cls``, its default from the dataclass.

    Booleans become ``--flag/--no-flag``, ``Literal`` fields take one of their values, ``X | None`` fields
    parse as X. A field holding another config dataclass contributes that dataclass's fields (the same flat
    names; ``config_from_args`` rebuilds it). Fields of other types (a nested optional object) keep their
    default and get no flag.
    """
    for name, kind, default in _flags(cls):
        flag = "--" + name.replace("_", "-")
        doc = (help or {}).get(name, name.replace("_", " "))
        if kind is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=doc)
        elif typing.get_origin(kind) is Literal:
            ap.add_argument(flag, choices=typing.get_args(kind), default=default, help=doc, required=name in required)
        else:
            ap.add_argument(flag, type=kind, default=default, help=doc, required=name in required)


def config_from_args(cls: Callable[..., C], args: argparse.Namespace) -> C:
    """The config of ``cls`` that the flags of ``add_config_arguments`` describe."""
    values = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind = _hints(cls)[field.name]
        if dataclasses.is_dataclass(kind):
            values[field.name] = config_from_args(kind, args)
        elif hasattr(args, field.name):
            values[field.name] = getattr(args, field.name)
    return cls(**values)


def _flags(cls: type) -> list[tuple[str, Any, Any]]:
    """(name, parser type, default) of every flag of ``cls``, nested config dataclasses flattened."""
    flags = []
    for field in dataclasses.fields(cls):
        kind = _hints(cls)[field.name]
        if dataclasses.is_dataclass(kind):
            flags += _flags(kind)
            continue
        scalar = _scalar(kind)
        if scalar is not None:
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            flags.append((field.name, scalar, default))
    names = [name for name, _, _ in flags]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TypeError(f"{cls.__name__}: nested configs repeat the fields {clash}; flags must be unique")
    return flags


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _scalar(kind: Any) -> Any:
    """The parser type of a flag field (int, float, str, bool, a Literal), or None for other types."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    if kind in (int, float, str, bool) or typing.get_origin(kind) is Literal:
        return kind
    return None
