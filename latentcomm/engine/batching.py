"""Dynamic batching: concurrent requests to one replica run as one model call, each caller gets its own result.

A ``Batcher`` collects requests that arrive while the model is busy (or within ``max_wait_s`` of the first) into
one call of a batch function on the replica's model thread, up to ``max_batch_size`` rows. Each caller gets its
own result, in its own order; when the joint call raises, every request of the batch is run again alone, so a
bad input fails its own request only, with its own error.

This is hand-written rather than Ray Serve's ``@serve.batch`` because the same replica also runs as a plain
Ray actor (``ReplicaPool``) and in-process, where ``serve.batch`` cannot run (it asks for the Serve replica
context and raises ``RayServeException`` elsewhere). Generation is not batched here: its rows join the replica's
continuous engine (``latentcomm.engine.continuous``), which ``serve.batch`` cannot do either.
"""
from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Generic, TypeVar

Q = TypeVar("Q")
A = TypeVar("A")


@dataclass(frozen=True)
class BatchConfig:
    """How one replica groups concurrent requests."""

    batching: bool = True
    """Off: every compress/embed request runs alone and generation runs one row at a time, in arrival order (the
    unbatched replica)."""
    max_batch_size: int = 32
    """Most rows (texts or latents) in one forward pass or one running generation."""
    max_wait_s: float = 0.005
    """How long the first compress/embed request waits for more before its pass starts (requests that arrive
    while a pass runs always wait for the next one; generation rows never wait: they join between steps)."""
    regroup_share: float = 0.25
    """While fewer rows wait than were in flight at the end of the last pass (its rows and those queued behind
    it), the next pass waits for the missing ones up to this share of the last pass's duration: callers whose
    replies and next requests take a slower hop (HTTP through a proxy) rejoin one batch instead of splitting
    into cohorts that alternate in half-full passes. 0: never."""

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not self.max_wait_s >= 0:
            raise ValueError(f"max_wait_s must be >= 0, got {self.max_wait_s}")
        if not 0 <= self.regroup_share <= 1:
            raise ValueError(f"regroup_share must be in [0, 1], got {self.regroup_share}")


class Batcher(Generic[Q, A]):
    """``await batcher.submit(request)`` runs ``run([request, ...])`` on ``executor`` with the requests waiting.

    ``run`` gets the requests of one batch and returns one result per request, in order. ``rows`` counts a
    request's rows against ``max_batch_size`` (a request larger than that runs in a batch of its own).
    """

    def __init__(self, run: Callable[[list[Q]], Sequence[A]], executor: Executor, config: BatchConfig,
                 rows: Callable[[Q], int] = lambda _: 1) -> None:
        self._run = run
        self._executor = executor
        self._config = config
        self._rows = rows
        self._queue: collections.deque[tuple[Q, asyncio.Future]] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        """Model calls made (a re-run of a failed batch's requests counts once per request)."""
        self.rows = 0
        """Rows those calls ran."""
        self.busy_s = 0.0
        """Seconds those calls took on the executor."""
        self._in_flight = 0
        """Rows of the last pass and those queued when it ended (the callers expected back)."""
        self._last_pass_s = 0.0

    async def submit(self, request: Q) -> A:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (asyncio.run again): the old one's task is gone
            self._loop, self._arrived, self._task = loop, asyncio.Event(), None
            self._queue.clear()
        future = loop.create_future()
        self._queue.append((request, future))
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drive())
        return await future

    async def _drive(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = [(request, future) for request, future in await self._gather() if not future.cancelled()]
            if not batch:
                continue
            start = time.monotonic()
            outcomes = await loop.run_in_executor(self._executor, self._run_isolated, [r for r, _ in batch])
            self._last_pass_s = time.monotonic() - start
            self._in_flight = sum(self._rows(r) for r, _ in batch) + self._waiting_rows()
            for (_, future), outcome in zip(batch, outcomes):
                if future.done():
                    continue
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _gather(self) -> list[tuple[Q, asyncio.Future]]:
        """The next batch: the first request, and what arrives within ``max_wait_s`` (or, while callers of the last
        pass are still to come back, within ``regroup_share`` of its duration) or is already waiting."""
        config = self._config
        wait, enough = config.max_wait_s, config.max_batch_size
        if self._waiting_rows() < self._in_flight:
            wait = max(wait, config.regroup_share * self._last_pass_s)
            enough = min(enough, self._in_flight)
        if config.batching and wait > 0:
            deadline = time.monotonic() + wait
            while self._waiting_rows() < enough and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
        batch = [self._queue.popleft()]
        rows = self._rows(batch[0][0])
        while config.batching and self._queue and rows + self._rows(self._queue[0][0]) <= config.max_batch_size:
            rows += self._rows(self._queue[0][0])
            batch.append(self._queue.popleft())
        return batch

    def _waiting_rows(self) -> int:
        return sum(self._rows(r) for r, f in self._queue if not f.cancelled())

    def _run_isolated(self, requests: list[Q]) -> list[A | BaseException]:
        """One joint call; if it raises, each request alone, so an error stays with the request that caused it."""
        if not requests:
            return []
        self.batches += 1
        self.rows += sum(self._rows(r) for r in requests)
        start = time.perf_counter()
        try:
            outcomes = list(self._run(requests))
        except Exception as err:
            self.busy_s += time.perf_counter() - start
            if len(requests) == 1:
                return [err]
            return [self._run_isolated([request])[0] for request in requests]
        self.busy_s += time.perf_counter() - start
        if len(outcomes) != len(requests):
            raise RuntimeError(f"batch function returned {len(outcomes)} results for {len(requests)} requests")
        return outcomes
