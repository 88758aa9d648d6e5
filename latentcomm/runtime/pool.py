"""ReplicaPool: N replica actors behind one async call, with load balancing, back-pressure and retries.

Each call waits for a slot (at most ``max_in_flight`` requests outstanding per pool: back-pressure),
goes to the least-loaded (or next round-robin) live replica, and is retried when the replica dies:
Ray restarts it (``max_restarts``) and the call is sent again, so a killed replica loses no request.
Errors raised by the replica's own code (bad input, protocol errors) are not retried.

The one Ray model-replica pool: the agents (``actors/``) and the response generation job (``training/``) both
use it, so it lives in the core, which loads without Ray; Ray is imported when a pool is made.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from latentcomm.errors import NoReplicaError
from latentcomm.engine.replica import Replica, ReplicaConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
Strategy = Literal["least_loaded", "round_robin"]


@dataclass(frozen=True)
class PoolConfig:
    """How many replicas, what each one reserves, and how hard the pool pushes and retries."""

    num_replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_in_flight: int = 8
    """Requests outstanding at once over the whole pool; further calls wait (back-pressure)."""
    max_restarts: int = 3
    """Times Ray restarts a dead replica (-1: forever)."""
    retry_for_s: float = 120.0
    """How long one call keeps being re-sent after replicas die (restarting one reloads its model)."""
    retry_backoff_s: float = 0.1
    """First pause before a re-send; it doubles up to 2 s."""
    strategy: Strategy = "least_loaded"

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {self.num_replicas}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus and num_gpus must be >= 0")
        if self.strategy not in ("least_loaded", "round_robin"):
            raise ValueError(f"strategy must be 'least_loaded' or 'round_robin', got {self.strategy!r}")


class ReplicaPool:
    """N ``Replica`` actors; ``await pool.call("decode", [data])`` runs a replica method on one of them."""

    def __init__(self, replica: ReplicaConfig | None = None, config: PoolConfig | None = None, *,
                 name: str = "replicas") -> None:
        import ray

        if not ray.is_initialized():
            raise RuntimeError("Ray is not running: call latentcomm.runtime.cluster.init_ray() first")
        self.replica = replica or ReplicaConfig()
        self.config = config or PoolConfig()
        self.name = name
        actor_class = ray.remote(Replica).options(num_cpus=self.config.num_cpus, num_gpus=self.config.num_gpus,
                                                  max_restarts=self.config.max_restarts, max_task_retries=0)
        self.actors = [actor_class.remote(self.replica) for _ in range(self.config.num_replicas)]
        self.in_flight = [0] * len(self.actors)
        self.calls = [0] * len(self.actors)
        self.method_calls: collections.Counter[str] = collections.Counter()
        """Calls made through this pool by replica method (the call log: e.g. how many generations a job ran)."""
        self.retries = 0
        self._suspect_until = [0.0] * len(self.actors)
        self._shut_down = False
        self._turn = 0
        self._slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = \
            weakref.WeakKeyDictionary()

    # ---- calls ------------------------------------------------------------------------------------
    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``Replica.<method>(*args, **kwargs)`` on a live replica; retried if that replica dies."""
        from ray.exceptions import RayActorError

        if not callable(getattr(Replica, method, None)) or method.startswith("_"):
            raise AttributeError(f"Replica has no method {method!r}")
        self.method_calls[method] += 1
        async with self._slot():
            delays = retry_delays(self.config.retry_for_s, self.config.retry_backoff_s)
            while True:
                index = self._choose()
                self.in_flight[index] += 1
                self.calls[index] += 1
                try:
                    return await getattr(self.actors[index], method).remote(*args, **kwargs)
                except RayActorError as err:
                    delay = next(delays, None)
                    if delay is None:
                        raise NoReplicaError(f"{self.name}: {method} kept failing for {self.config.retry_for_s} s: "
                                             f"{err}") from err
                    self._suspect_until[index] = time.monotonic() + 2 * delay
                    self.retries += 1
                    log.warning("%s: replica %d failed during %s (%s); retrying", self.name, index, method,
                                type(err).__name__)
                    await asyncio.sleep(delay)
                finally:
                    self.in_flight[index] -= 1

    async def ready(self) -> list[dict[str, Any]]:
        """Wait until every replica has loaded; returns each one's ``info()``. Checks they share one head."""
        infos = await asyncio.gather(*(actor.info.remote() for actor in self.actors))
        heads = {(i["backbone_id"], i["fingerprint"]) for i in infos}
        if len(heads) > 1:
            raise RuntimeError(f"{self.name}: replicas disagree on backbone/head: {sorted(heads)}")
        return list(infos)

    def stats(self) -> dict[str, Any]:
        return {"name": self.name, "replicas": len(self.actors), "calls": list(self.calls),
                "method_calls": dict(self.method_calls), "retries": self.retries}

    def shutdown(self) -> None:
        """Kill every replica for good."""
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self._shut_down = True

    def __getstate__(self) -> dict[str, Any]:
        """Picklable (to share the replicas with agents in other processes); per-loop semaphores stay here."""
        return self.__dict__ | {"_slots": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._slots = weakref.WeakKeyDictionary()

    # ---- internals --------------------------------------------------------------------------------
    def _slot(self) -> asyncio.Semaphore:
        """The back-pressure semaphore of the running event loop (asyncio primitives belong to one loop)."""
        loop = asyncio.get_running_loop()
        if loop not in self._slots:
            self._slots[loop] = asyncio.Semaphore(self.config.max_in_flight)
        return self._slots[loop]

    def _choose(self) -> int:
        """A replica that has not just failed (if any), then the least loaded or the next in turn."""
        if self._shut_down:
            raise NoReplicaError(f"{self.name} was shut down")
        now = time.monotonic()
        live = [i for i in range(len(self.actors)) if self._suspect_until[i] <= now] or list(range(len(self.actors)))
        if self.config.strategy == "round_robin":
            self._turn += 1
            return live[self._turn % len(live)]
        return min(live, key=lambda i: (self.in_flight[i], self.calls[i]))


def retry_delays(for_s: float, first_s: float = 0.1, cap_s: float = 2.0) -> Iterator[float]:
    """Pauses of an exponential back-off (``first_s``, doubling, at most ``cap_s``) for about ``for_s`` seconds."""
    deadline = time.monotonic() + for_s
    delay = first_s
    while time.monotonic() + delay <= deadline:
        yield delay
        delay = min(2 * delay, cap_s)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from synchronous code (not from inside a running event loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    coro.close()
    raise RuntimeError("called a synchronous twin (e.g. send_sync) inside a running event loop: await the async "
                       "method instead")
