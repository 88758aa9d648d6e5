"""``latentcomm info``: what this machine gives latentcomm — device, the backbone dtype chosen and why, threads, the
embedded defaults and which optional integrations are installed. Loads no model."""
from __future__ import annotations

import importlib.util
import platform
import sys

import torch

from latentcomm.model.backbone import DEFAULT_BACKBONE, choose_dtype, default_device, latentcomm_home
from latentcomm.cli.parser import parser

OPTIONAL = ("ray", "deepspeed", "langgraph", "a2a")
"""Optional integrations reported as installed or not."""


def describe() -> dict[str, str]:
    """The facts ``info`` prints, as ordered name → value pairs."""
    device = default_device()
    choice = choose_dtype(device)
    from latentcomm.model.embedder import DEFAULT_HEAD_DIR  # torch-heavy only through transformers; imported on call

    facts = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "device": str(device),
        "threads": str(torch.get_num_threads()),
        "dtype": f"{str(choice.dtype).removeprefix('torch.')} ({choice.reason})",
        "backbone": DEFAULT_BACKBONE,
        "shipped head": str(DEFAULT_HEAD_DIR) if (DEFAULT_HEAD_DIR / "config.json").is_file() else "none",
        "cache": str(latentcomm_home()),
    }
    for name in OPTIONAL:
        facts[name] = "installed" if importlib.util.find_spec(name) is not None else "not installed"
    return facts


def main(argv: list[str] | None = None) -> int:
    parser("info", __doc__.split("\n")[0]).parse_args(argv)
    for name, value in describe().items():
        print(f"{name:<13} {value}")
    return 0
