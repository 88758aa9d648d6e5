"""The argument parser every ``latentcomm`` subcommand starts from, and flag types that check values as they are
parsed (the command table is in ``cli.py``).

A parser made here raises ``UsageError`` — one line naming the flag — instead of printing its usage and exiting,
so the entry point reports every refused input the same way. The types below run while the flags are parsed,
before any model, Ray or file work: counts, finite numbers, files and folders that exist, heads that parse,
output folders that can be written.

Config dataclasses become flags here too (``add_config_arguments`` / ``config_from_args``): one ``--field-name``
per field, the default stated once, in the dataclass, and a refused value reported under its flag's name.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any, Literal, NoReturn, TypeVar, Union

from latentcomm.errors import LatentcommError, UsageError

C = TypeVar("C")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser named ``latentcomm PROG`` that shows each flag's default in ``--help`` and raises
    ``UsageError`` on a bad flag (``ap.error(message)`` does the same for checks after parsing)."""
    return _Parser(prog=f"latentcomm {prog}", description=description,
                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def count(minimum: int = 1) -> Callable[[str], int]:
    """Flag type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    parse.__name__ = f"integer >= {minimum}"
    return parse


def number(minimum: float = -math.inf, maximum: float = math.inf, *, above: bool = False) -> Callable[[str], float]:
    """Flag type: a finite number in [``minimum``, ``maximum``] (with ``above``: greater than ``minimum``)."""
    bounds = [f"{'>' if above else '>='} {minimum:g}"] if minimum > -math.inf else []
    bounds += [f"<= {maximum:g}"] if maximum < math.inf else []
    wanted = " and ".join(["a finite number", *bounds]).replace("number and", "number", 1)

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum or value > maximum or (above and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value
    parse.__name__ = "number"
    return parse


def existing_file(text: str) -> Path:
    """Flag type: a file that exists."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no file at {text!r}")
    return path


def existing_dir(text: str) -> Path:
    """Flag type: a folder that exists."""
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no folder at {text!r}")
    return path


def output_dir(text: str) -> Path:
    """Flag type: a folder that exists and is writable, or can be made (its nearest existing parent is)."""
    if not text:
        raise argparse.ArgumentTypeError("needs a folder")
    path = Path(text).expanduser()
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{str(existing)!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{str(existing)!r} is not writable")
    return path


def output_file(text: str) -> Path:
    """Flag type: a file that can be written (not a folder; its folder passes ``output_dir``)."""
    path = Path(text).expanduser()
    if not text or path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a folder, not a file")
    output_dir(str(path.parent))
    return path


def head_folder(text: str) -> str:
    """Flag type: a saved head folder whose config.json and head.safetensors agree (checked without a backbone)."""
    from latentcomm.model.head_file import check_folder

    if not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"no head folder at {text!r}")
    try:
        check_folder(Path(text).expanduser())
    except LatentcommError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def teacher_source(*names: str) -> Callable[[str], str]:
    """Flag type: one of the teacher ``names`` or a sentence-transformers folder that exists."""
    def parse(text: str) -> str:
        if text in names or Path(text).expanduser().is_dir():
            return text
        raise argparse.ArgumentTypeError(f"{text!r} is none of {', '.join(names)} and no sentence-transformers folder")
    parse.__name__ = "teacher"
    return parse


def backbone_source(text: str) -> str:
    """Flag type: the default alias, a hub id, or a local folder / .gguf file that exists."""
    from latentcomm.model.backbone import DEFAULT_BACKBONE

    path = Path(text).expanduser()
    local = text.startswith((".", "/", "~")) or path.suffix == ".gguf" or text.count("/") > 1  # hub ids: org/name
    if not text or (text != DEFAULT_BACKBONE and local and not path.exists()):
        raise argparse.ArgumentTypeError(f"no backbone folder or file at {text!r}")
    return text


def add_config_arguments(ap: argparse.ArgumentParser, cls: type, *, helps: Mapping[str, str] | None = None,
                         defaults: Mapping[str, Any] | None = None, exclude: Collection[str] = (),
                         flag_types: Mapping[str, Callable[[str], Any]] | None = None,
                         required: Collection[str] = ()) -> None:
    """``--field-name`` for every field of the config dataclass ``cls`` but ``exclude``.

    Booleans become ``--flag/--no-flag``, ``Literal`` fields take one of their values, floats must be finite,
    ``X | None`` fields parse as X, tuples take one or more values; ``flag_types`` overrides a field's parser.
    A field holding another config dataclass contributes that dataclass's fields (the same flat names;
    ``config_from_args`` rebuilds it). Defaults come from ``defaults``, else the dataclass (for a nested config,
    its value in the outer config's default, e.g. a ``default_factory``); fields of other types keep their
    default and get no flag.
    """
    flags = _flags(cls, exclude)
    names = [name for name, _, _ in flags]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise TypeError(f"{cls.__name__}: nested configs repeat the fields {clash}; flags must be unique")
    for name, kind, default in flags:
        flag = "--" + name.replace("_", "-")
        default = (defaults or {}).get(name, default)
        options: dict[str, Any] = {"default": default, "help": (helps or {}).get(name, name.replace("_", " "))}
        if kind is bool:
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        if name in required and name not in (defaults or {}):
            options["required"] = True
        if typing.get_origin(kind) is tuple:
            options["nargs"], kind = "+", typing.get_args(kind)[0]
        if (flag_types or {}).get(name):
            options["type"] = flag_types[name]
        elif typing.get_origin(kind) is Literal:
            options["choices"] = typing.get_args(kind)
        else:
            options["type"] = number() if kind is float else kind
        ap.add_argument(flag, **options)


def config_from_args(cls: Callable[..., C], args: argparse.Namespace, **values: Any) -> C:
    """The config of ``cls`` that the flags of ``add_config_arguments`` describe (``values`` fills fields without
    a flag); a value the config refuses raises ``UsageError`` with the field named as its flag."""
    return _from_args(cls, args, values, None)


def _from_args(cls: Callable[..., C], args: argparse.Namespace, values: dict[str, Any], base: Any) -> C:
    """``config_from_args`` over ``base`` (a nested config's default, whose values fields without a flag keep)."""
    hints, given = typing.get_type_hints(cls), set(values)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in given:
            continue
        if dataclasses.is_dataclass(hints[field.name]):
            default = _default(field, base)
            values[field.name] = _from_args(hints[field.name], args, {}, default if dataclasses.is_dataclass(default)
                                            else None)
        elif hasattr(args, field.name):
            value = getattr(args, field.name)
            values[field.name] = str(value) if isinstance(value, Path) else tuple(value) if isinstance(value, list) \
                else value
    try:
        return dataclasses.replace(base, **values) if base is not None else cls(**values)
    except ValueError as err:
        names = "|".join(sorted((name for name, _, _ in _flags(cls, given)), key=len, reverse=True))
        message = re.sub(rf"(?<![\w'-])({names})(?![\w'])", lambda m: "--" + m[1].replace("_", "-"), str(err))
        raise UsageError(message) from None


def _flags(cls: type, exclude: Collection[str] = (), instance: Any = None) -> list[tuple[str, Any, Any]]:
    """(name, type, default) of every flag field of ``cls`` but ``exclude``, nested config dataclasses
    flattened; defaults are those of ``instance`` where given (a nested config's value in its outer default)."""
    flags = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kind = hints[field.name]
        default = _default(field, instance)
        if dataclasses.is_dataclass(kind):
            flags += _flags(kind, exclude, default if dataclasses.is_dataclass(default) else None)
            continue
        scalar = _scalar(kind)
        if scalar is not None:
            flags.append((field.name, scalar, default))
    return flags


def _default(field: dataclasses.Field, instance: Any) -> Any:
    """A field's default: its value in ``instance`` where given, else the dataclass's default (None without one)."""
    if instance is not None:
        return getattr(instance, field.name)
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _scalar(kind: Any) -> Any:
    """The flag type of a field (int, float, str, bool, a Literal, a tuple of one of those), or None."""
    if typing.get_origin(kind) in (Union, types.UnionType):
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    if typing.get_origin(kind) is tuple:
        item = typing.get_args(kind)[0]
        return tuple[item] if _scalar(item) in (int, float, str) else None
    if kind in (int, float, str, bool) or typing.get_origin(kind) is Literal:
        return kind
    return None
