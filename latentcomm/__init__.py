"""latentcomm: LLM2Vec-Gen generative embeddings as a latent communication channel between LLM agents.

The core (this package and ``latentcomm.protocols``) imports neither Ray nor DeepSpeed. The names below load on
first use (PEP 562), so ``import latentcomm.client`` or ``latentcomm.protocols`` pulls in no torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latentcomm.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
    from latentcomm.config import HeadConfig
    from latentcomm.errors import HeadMismatchError, LatentcommError, LatentError
    from latentcomm.latent import Latent
    from latentcomm.model import GenerativeEmbedder, LossOutput, load_embedder

_HOMES = {"DEFAULT_BACKBONE": "backbone", "Backbone": "backbone", "load_backbone": "backbone",
          "HeadConfig": "config", "HeadMismatchError": "errors", "LatentcommError": "errors", "LatentError": "errors",
          "Latent": "latent", "GenerativeEmbedder": "model", "LossOutput": "model", "load_embedder": "model"}
"""Each top-level name and the module it comes from."""

__all__ = sorted(_HOMES)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'latentcomm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"latentcomm.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
