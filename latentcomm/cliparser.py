"""The argument parser every ``latentcomm`` subcommand starts from (the command table is in ``cli.py``)."""
from __future__ import annotations

import argparse


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser named ``latentcomm PROG`` that shows each flag's default in ``--help``."""
    return argparse.ArgumentParser(prog=f"latentcomm {prog}", description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)
