"""The argument parser every ``latentcomm`` subcommand starts from, and flag types that check values as they are
parsed (the command table is in ``cli.py``).

A parser made here raises ``UsageError`` — one line naming the flag — instead of printing its usage and exiting,
so the entry point reports every refused input the same way. The types below run while the flags are parsed,
before any model, Ray or file work: counts, finite numbers, files and folders that exist, heads that parse,
output folders that can be written.
"""
from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from latentcomm.errors import LatentcommError, UsageError


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
    from latentcomm.head_file import check_folder

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
    from latentcomm.backbone import DEFAULT_BACKBONE

    path = Path(text).expanduser()
    local = text.startswith((".", "/", "~")) or path.suffix == ".gguf" or text.count("/") > 1  # hub ids: org/name
    if not text or (text != DEFAULT_BACKBONE and local and not path.exists()):
        raise argparse.ArgumentTypeError(f"no backbone folder or file at {text!r}")
    return text
