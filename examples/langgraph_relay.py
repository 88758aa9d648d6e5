"""The facts relay of ``latentcomm run`` as a LangGraph graph: the same chain of agents (holder -> relays ->
answerer) in every mode, "auto" included, and the same table.

    python examples/langgraph_relay.py --questions 8 --agents 3
    python examples/langgraph_relay.py --modes kv auto --max-payload-bytes 2000000   # auto drops to latents

The flags are ``latentcomm run``'s (without ``--modes`` every mode runs). Each mode's chain is
``latentcomm.integrations.langgraph.relay_graph`` of the job's agents (``build_chain``: the same roles, handlers and
replicas), one graph run per question, and the job's scoring and report make the table, ``results.json``,
``trace.jsonl`` and ``run.png``. Latents read in context are decoded for the trace after the timed runs, as the job
does; a KV hop's trace keeps no text.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import platform
import sys
import time
from typing import Any

from latentcomm.actors.agent import Incoming
from latentcomm.actors.job.config import JobConfig, parse_config
from latentcomm.actors.job.modes import MODES, Mode
from latentcomm.actors.job.report import print_report, write_results
from latentcomm.actors.job.results import Answer
from latentcomm.actors.job.run import (GENERATING, Held, JobRun, ModeRun, build_chain, decode_held, floor_answers,
                                       head_description, warm_up)
from latentcomm.actors.job.score import score_job
from latentcomm.actors.tasks import Item, Task, get_task
from latentcomm.actors.trace import Trace
from latentcomm.integrations.langgraph import relay_graph
from latentcomm.model.teachers import load_teacher
from latentcomm.runtime.cluster import init_ray
from latentcomm.runtime.pool import ReplicaPool


async def run_mode(mode: Mode, k: int, items: list[Item], task: Task, pool: ReplicaPool, trace: Trace,
                   config: JobConfig, key: bytes | None, held: Held) -> ModeRun:
    """Every question through the graph of ``mode``'s chain of ``k`` agents, ``config.concurrency`` at a time."""
    chain = build_chain(mode, k, task, pool, trace, config, key)

    def prompt(i: int, state: dict[str, Any], received: Any) -> Any:
        if isinstance(received, Incoming) and received.kind == "latent":
            held.latents[received.message.message_id] = received.data
        item = state["task"]
        return task.first_input(item) if i == 0 else task.later_input(item, received, last=i == k - 1)

    graph = relay_graph(chain, prompt, kind=mode.kind, generate=mode.generate)
    gate = asyncio.Semaphore(config.concurrency)

    async def one(item: Item) -> Answer:
        async with gate:
            start = time.perf_counter()
            state = await graph.ainvoke({"task": item, "messages": [], "conversation_id": f"{mode.name}:{k}:{item.id}",
                                         "metadata": {"mode": mode.name, "question": item.id, "agents": k}})
            final = state["answer"]
            return Answer(item.id, mode.name, k, final, task.correct(final, item), time.perf_counter() - start,
                          state["answer_s"])

    before = sum(pool.method_calls[m] for m in GENERATING)
    start = time.perf_counter()
    answers = await asyncio.gather(*(one(item) for item in items))
    wall_s = time.perf_counter() - start
    print(f"K={k} {mode.name}: {len(items)} questions through the graph in {wall_s:.1f} s", flush=True)
    return ModeRun(mode.name, k, list(answers), wall_s, sum(pool.method_calls[m] for m in GENERATING) - before)


async def run(config: JobConfig) -> JobRun:
    task = get_task(config.task)
    items = task.load(config.questions, config.offset)
    pool = ReplicaPool(config.replica, config.pool, name="langgraph")
    trace, held = Trace(), Held()
    key = os.urandom(32) if config.sign else None
    try:
        infos = await pool.ready()
        await warm_up(pool, config.pool.num_replicas)
        chains = {k: {mode.name: await run_mode(mode, k, items, task, pool, trace, config, key, held)
                      for mode in config.run_modes} for k in config.chain_lengths}
        floor = await floor_answers(items, task, pool, config)
        await decode_held(pool, held.latents, trace, config.replica.max_new_tokens)
        calls = pool.stats()
    finally:
        pool.shutdown()
    return JobRun(task, chains, floor, trace, infos, calls, head_description(config, infos[0]),
                  {"python": platform.python_version(), "cpus": os.cpu_count(), "graph": "langgraph"})


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    config = parse_config(argv)
    if "--modes" not in argv:
        config = dataclasses.replace(config, modes=tuple(MODES))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    init_ray(config.address, num_cpus=None if config.address else os.cpu_count())
    job = asyncio.run(run(config))
    teacher = None if config.teacher == "none" else load_teacher(config.teacher)
    result = score_job(job, config, teacher)
    folder = write_results(result, job.trace, config.out)
    print_report(result, job.trace, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
