"""Running the main job: chains of agents, one question through a chain, a mode over the questions, the floor.

Nothing here scores: ``run_job`` returns what was said and how long it took (``JobRun``), and ``score`` turns that
into results. Texts made only for the trace (what a latent read in context decodes to, what a KV cache's sender
would have answered) are generated off the clock, after the timed runs, and labelled so in the trace.
"""
from __future__ import annotations

import asyncio
import os
import platform
import time
from dataclasses import dataclass, field
from collections.abc import Awaitable, Callable
from typing import Any

from tqdm.auto import tqdm

from latentcomm.actors.agent import Agent, Incoming, Said
from latentcomm.actors.job.config import JobConfig
from latentcomm.actors.job.modes import Mode, send
from latentcomm.actors.job.results import Answer
from latentcomm.actors.tasks import Item, Task, get_task
from latentcomm.actors.trace import Trace
from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.model.embedder import DEFAULT_HEAD_DIR
from latentcomm.runtime.pool import ReplicaPool

GENERATING = ("respond", "decode")
"""The replica methods that generate text (the ``generations`` of a mode)."""


@dataclass(frozen=True)
class ModeRun:
    """All questions in one mode at one chain length: the answers (in item order), wall time and generations."""

    mode: str
    agents: int
    answers: list[Answer]
    wall_s: float
    generations: int


@dataclass(frozen=True)
class JobRun:
    """What a job did, unscored: each chain length's mode runs (by K, then mode name), the floor's answers, the
    trace of every hop, and the replicas and pool it ran on."""

    task: Task
    chains: dict[int, dict[str, ModeRun]]
    floor: list[Answer]
    trace: Trace
    replicas: list[dict[str, Any]]
    pool: dict[str, Any]
    head: str
    host: dict[str, Any]


@dataclass
class Held:
    """What the trace is annotated from after the timed runs: latents read in context (message id -> bytes) and
    each KV hop's sender with what it read (message id -> (agent, parts))."""

    latents: dict[str, bytes] = field(default_factory=dict)
    kv: dict[str, tuple[Agent, Said]] = field(default_factory=dict)


def agent_names(k: int) -> list[str]:
    return ["holder", *(f"relay{i}" for i in range(1, k - 1)), "answerer"]


def build_chain(mode: Mode, k: int, task: Task, pool: ReplicaPool, trace: Trace, config: JobConfig,
                key: bytes | None) -> list[Agent]:
    """K agents for ``mode``; every receiver reads its hops with the mode's handler. Only the first agent, which
    holds what answers the question, refines its latent (``mode.refine``): relays forward it unchanged."""
    names = agent_names(k)
    roles = [task.first_role, *[task.relay_role] * (k - 2), task.last_role]
    chain = [Agent(name, pool, role=role, key=key, trace=trace, wire_dtype=config.wire_dtype,
                   max_new_tokens=config.replica.max_new_tokens, limits=config.replica.limits,
                   refine=mode.refine if i == 0 else None)
             for i, (name, role) in enumerate(zip(names, roles))]
    if mode.read is not None:
        for agent in chain[1:]:
            agent.on(mode.handled_kind, mode.read)
    return chain


async def answer(item: Item, mode: Mode, chain: list[Agent], task: Task, held: Held) -> Answer:
    """One question through the chain in ``mode``; latents read in context are kept in ``held.latents`` (by message
    id) to be decoded for the trace after the run, and each KV hop's sender and input in ``held.kv``."""
    metadata = {"mode": mode.name, "question": item.id, "agents": len(chain)}
    conversation = f"{mode.name}:{len(chain)}:{item.id}"  # a unique stream name; nothing is parsed back out of it
    start = time.perf_counter()
    said: Any = task.first_input(item)
    carried: list[Incoming] = []  # what the next sender forwards before its own message (mode.relay "forward")
    for hop, (sender, receiver) in enumerate(zip(chain, chain[1:]), 1):
        received = [await sender.forward(receiver, message, conversation_id=conversation) for message in carried]
        received.append(await send(mode, sender, receiver, said, conversation_id=conversation, metadata=metadata))
        for message in received:
            if isinstance(message, Incoming) and message.kind == "kv":
                held.kv[message.message.message_id] = (sender, said)
            if isinstance(message, Incoming) and message.kind == "latent":
                held.latents[message.message.message_id] = message.data
        carried = received if mode.relay == "forward" else []
        said = task.later_input(item, received if len(received) > 1 else received[0], last=hop == len(chain) - 1)
    answer_start = time.perf_counter()
    final = await chain[-1].respond(said)
    done = time.perf_counter()
    return Answer(item.id, mode.name, len(chain), final, task.correct(final, item), done - start, done - answer_start)


Answering = Callable[[Item, Mode, list[Agent], Task, Held], Awaitable[Answer]]
"""How one question goes through a chain: ``answer``, or another runner of the same chain (e.g. a LangGraph graph:
``examples/langgraph_relay.py``)."""


async def run_mode(mode: Mode, items: list[Item], chain: list[Agent], task: Task, concurrency: int,
                   held: Held, answering: Answering = answer) -> tuple[list[Answer], float]:
    """All questions in ``mode``, ``concurrency`` at a time; returns the answers (in item order) and wall seconds."""
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(items), desc=f"K={len(chain)} {mode.name}", unit="question")

    async def one(item: Item) -> Answer:
        async with gate:
            result = await answering(item, mode, chain, task, held)
            bar.update()
            return result

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(item) for item in items))
    bar.close()
    return list(answers), time.perf_counter() - start


async def floor_answers(items: list[Item], task: Task, pool: ReplicaPool, config: JobConfig) -> list[Answer]:
    """The last agent asked the question without any message (not timed against the modes)."""
    last = Agent("answerer", pool, role=task.last_role, max_new_tokens=config.replica.max_new_tokens)
    finals = await asyncio.gather(*(last.respond(task.floor_input(item)) for item in items))
    return [Answer(item.id, "floor", 1, final, task.correct(final, item), 0.0, 0.0)
            for item, final in zip(items, finals)]


async def decode_held(pool: ReplicaPool, latents: dict[str, bytes], trace: Trace, max_new_tokens: int) -> None:
    """What the latents read in context decode to, for the trace only (after the timed runs), labelled so."""
    ids = list(latents)
    chunks = [ids[i:i + 8] for i in range(0, len(ids), 8)]
    texts = await asyncio.gather(*(pool.call("decode", [latents[i] for i in chunk], max_new_tokens=max_new_tokens)
                                   for chunk in chunks))
    trace.annotate({i: t for chunk, out in zip(chunks, texts) for i, t in zip(chunk, out)})


async def answer_held_kv(kv: dict[str, tuple[Agent, Said]], trace: Trace) -> None:
    """Each KV hop's sender's own answer to what it read, for the trace only (after the timed run), labelled so;
    empties ``kv`` (the inputs hold the caches)."""
    ids = list(kv)
    texts = await asyncio.gather(*(kv[i][0].respond(kv[i][1]) for i in ids))
    trace.annotate(dict(zip(ids, texts)), text_from="answered off the clock")
    kv.clear()


async def run_chain(k: int, items: list[Item], task: Task, pool: ReplicaPool, trace: Trace, config: JobConfig,
                    key: bytes | None, held: Held, answering: Answering = answer) -> dict[str, ModeRun]:
    """Every mode of ``config`` at one chain length; the KV hops' trace text is generated after each mode's run,
    so the caches are not kept for longer."""
    runs = {}
    for mode in config.run_modes:
        chain = build_chain(mode, k, task, pool, trace, config, key)
        before = sum(pool.method_calls[m] for m in GENERATING)
        answers, wall_s = await run_mode(mode, items, chain, task, config.concurrency, held, answering)
        generations = sum(pool.method_calls[m] for m in GENERATING) - before
        runs[mode.name] = ModeRun(mode.name, k, answers, wall_s, generations)
        await answer_held_kv(held.kv, trace)
    return runs


async def warm_up(pool: ReplicaPool, replicas: int) -> None:
    """Every path a mode times, once per replica, before anything is timed: compress, KV prefill, decode, and a
    short generation after a prompt and after a KV cache."""
    each = range(replicas)
    latents = await asyncio.gather(*(pool.call("compress", ["warm up"]) for _ in each))
    caches = await asyncio.gather(*(pool.call("prefill", ["warm up"]) for _ in each))
    await asyncio.gather(*(pool.call("decode", latent, max_new_tokens=2) for latent in latents))
    await asyncio.gather(*(pool.call("respond", ["warm up"], max_new_tokens=2) for _ in each))
    await asyncio.gather(*(pool.call("respond", [["warm up", *cache]], max_new_tokens=2) for cache in caches))


def head_description(config: JobConfig, info: dict[str, Any]) -> str:
    if config.replica.head:
        return f"{config.replica.head} ({info['fingerprint']})"
    shipped = config.replica.backbone == DEFAULT_BACKBONE and (DEFAULT_HEAD_DIR / "config.json").is_file()
    return f"{'shipped' if shipped else 'UNTRAINED'} head {info['fingerprint']} on {info['backbone']}"


async def run_job(config: JobConfig, answering: Answering = answer) -> JobRun:
    """Start replicas, run every mode at every chain length (each question by ``answering``) and the floor, annotate
    the trace; nothing scored or written."""
    task = get_task(config.task)
    items = task.load(config.questions, config.offset)
    pool = ReplicaPool(config.replica, config.pool, name="main")
    trace, held = Trace(), Held()
    key = os.urandom(32) if config.sign else None
    try:
        infos = await pool.ready()
        await warm_up(pool, config.pool.num_replicas)
        chains = {k: await run_chain(k, items, task, pool, trace, config, key, held, answering)
                  for k in config.chain_lengths}
        floor = await floor_answers(items, task, pool, config)
        await decode_held(pool, held.latents, trace, config.replica.max_new_tokens)
        calls = pool.stats()
    finally:
        pool.shutdown()
    return JobRun(task, chains, floor, trace, infos, calls, head_description(config, infos[0]),
                  {"python": platform.python_version(), "cpus": os.cpu_count()})
