"""latentcomm: LLM2Vec-Gen generative embeddings as a latent communication channel between LLM agents.

The core is this package and ``latentcomm.protocols``; it imports neither Ray nor DeepSpeed (``runtime`` loads Ray
on first use). Its subpackages, innermost first:

* ``model``   — the frozen backbone, the compression head, compress / decode / embed / respond, KV hand-offs;
* ``engine``  — a replica spoken to in protocol bytes, with batching (no Ray);
* ``runtime`` — the pool of replica actors and Ray start-up (the one home of Ray in the core);
* ``http``    — the routes of ``latentcomm serve`` and a torch-free client;
* ``tasks``   — task data made or read by the project (the fact relay, GSM8K);
* ``cli``     — the ``latentcomm`` command.

The names below load on first use (PEP 562), so ``import latentcomm.http.client`` or ``latentcomm.protocols`` pulls
in no torch. Module paths of version 0.1 (``latentcomm.pool``, ``latentcomm.replica``, ...) still import, with a
``DeprecationWarning`` naming their new home.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from latentcomm.errors import HeadMismatchError, LatentcommError, LatentError
    from latentcomm.model.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
    from latentcomm.model.config import HeadConfig
    from latentcomm.model.embedder import GenerativeEmbedder, LossOutput, load_embedder
    from latentcomm.model.latent import Latent

_HOMES = {"DEFAULT_BACKBONE": "model.backbone", "Backbone": "model.backbone", "load_backbone": "model.backbone",
          "HeadConfig": "model.config", "HeadMismatchError": "errors", "LatentcommError": "errors",
          "LatentError": "errors", "Latent": "model.latent", "GenerativeEmbedder": "model.embedder",
          "LossOutput": "model.embedder", "load_embedder": "model.embedder"}
"""Each top-level name and the module it comes from."""

MOVED = {f"latentcomm.{old}": f"latentcomm.{new}" for old, new in {
    "backbone": "model.backbone", "config": "model.config", "heads": "model.heads", "head_file": "model.head_file",
    "latent": "model.latent", "lora": "model.lora", "losses": "model.losses", "generation": "model.generation",
    "kv": "model.kv", "reading": "model.reading", "teachers": "model.teachers", "replica": "engine.replica",
    "batching": "engine.batching", "continuous": "engine.continuous", "messaging": "engine.messaging",
    "pool": "runtime.pool", "cluster": "runtime.cluster", "httpapi": "http.api", "client": "http.client",
    "facts": "tasks.facts", "gsm8k": "tasks.gsm8k", "cliparser": "cli.parser", "demo": "cli.demo"}.items()}
"""Module paths of version 0.1 and where each module lives now."""

__all__ = sorted(_HOMES)
__version__ = "0.1.0"


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a module path of ``MOVED`` as the module at its new home (the same object, not a copy)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in MOVED else None

    def create_module(self, spec: Any) -> Any:
        warnings.warn(f"{spec.name} moved to {MOVED[spec.name]}", DeprecationWarning, stacklevel=2)
        module = importlib.import_module(MOVED[spec.name])
        spec.loader_state = module.__spec__  # the import system sets __spec__ to the alias's; exec_module restores it
        return module

    def exec_module(self, module: Any) -> None:
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'latentcomm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"latentcomm.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
