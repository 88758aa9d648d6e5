"""Agents in their own processes: ``AgentHost`` runs an ``Agent`` inside a Ray actor, ``RemoteAgent`` addresses it.

A ``RemoteAgent`` can be the recipient of any ``Agent.send``: the packed protocol bytes travel to the host
process, which verifies, de-duplicates, orders and handles them there. If the host dies, Ray restarts it
(``max_restarts``) and the sender re-sends the same bytes (same message id): at-least-once delivery.
De-duplication memory lives in the host, so it does not survive a restart of the host itself.

    host = start_agent("critic", pool, role="Check the answer.")
    draft = await solver.send(host, "What is 7 * 6?")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray

from latentcomm.actors.agent import Agent, Handler, Recipient, Said
from latentcomm.actors.trace import Hop
from latentcomm.protocols import Description
from latentcomm.runtime.pool import ReplicaPool


class AgentHost:
    """The actor body: one Agent, using the given pool's replicas, with its own inbox and trace."""

    def __init__(self, name: str, pool: ReplicaPool, options: dict[str, Any], handlers: dict[str, Handler]) -> None:
        self.agent = Agent(name, pool, **options)
        for kind, handler in handlers.items():
            self.agent.on(kind, handler)

    async def receive(self, data: bytes) -> Any:
        return await self.agent.receive(data)

    async def send(self, to: Recipient, said: Said, options: dict[str, Any]) -> Any:
        return await self.agent.send(to, said, **options)

    async def describe(self, peer: Description | None) -> Description:
        return await self.agent.describe(peer)

    def hops(self) -> list[Hop]:
        return self.agent.trace.hops

    def counters(self) -> dict[str, int]:
        return {"duplicates": self.agent.duplicates, "rejected": self.agent.rejected, "handled": len(self.agent.trace)}


@dataclass(frozen=True)
class RemoteAgent:
    """A handle to an agent hosted in another process; pass it wherever a recipient agent is expected."""

    name: str
    handle: Any

    async def receive(self, data: bytes) -> Any:
        return await self.handle.receive.remote(data)

    async def send(self, to: Recipient, said: Said, **options: Any) -> Any:
        """``Agent.send`` (same options: ``kind``, ``generate``, ``byte_budget``, ``conversation_id``,
        ``metadata``), run in the host process."""
        return await self.handle.send.remote(to, said, options)

    async def describe(self, peer: Description | None = None) -> Description:
        """``Agent.describe`` of the hosted agent (a link that chooses its kind asks it once)."""
        return await self.handle.describe.remote(peer)

    async def hops(self) -> list[Hop]:
        return await self.handle.hops.remote()

    async def counters(self) -> dict[str, int]:
        return await self.handle.counters.remote()


def start_agent(name: str, pool: ReplicaPool, *, handlers: dict[str, Handler] | None = None,
                num_cpus: float = 0.0, max_restarts: int = 3, **options: Any) -> RemoteAgent:
    """Start an agent in its own actor process, sharing ``pool``'s replicas; ``options`` go to ``Agent``.

    Handlers must be importable functions (or picklable callables): they run in the host process.
    """
    actor = ray.remote(AgentHost).options(num_cpus=num_cpus, max_restarts=max_restarts, max_task_retries=0)
    return RemoteAgent(name, actor.remote(name, pool, options, handlers or {}))
