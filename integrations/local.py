"""Replicas in the caller's process behind ``ReplicaPool.call``: agents without Ray (a one-process A2A server, a
LangGraph graph in a notebook, tests).

    pool = LocalPool(ReplicaConfig())                 # loads the backbone and head here
    alice, bob = Agent("alice", pool), Agent("bob", pool)
"""
from __future__ import annotations

import collections
import inspect
from typing import Any

from latentcomm.engine.replica import Replica, ReplicaConfig


class LocalPool:
    """One ``Replica`` in this process, called like a ``ReplicaPool`` (``await pool.call("compress", ...)``)."""

    def __init__(self, replica: Replica | ReplicaConfig, *, name: str = "local") -> None:
        self.replica = replica if isinstance(replica, Replica) else Replica(replica)
        self.name = name
        self.method_calls: collections.Counter[str] = collections.Counter()
        """Calls by replica method, as ``ReplicaPool.method_calls``."""

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``Replica.<method>(*args, **kwargs)``, awaited where it is a coroutine (``info`` and ``counters`` are
        not)."""
        if method.startswith("_") or not callable(getattr(Replica, method, None)):
            raise AttributeError(f"Replica has no method {method!r}")
        self.method_calls[method] += 1
        result = getattr(self.replica, method)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result
