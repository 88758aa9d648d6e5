"""The facts relay of ``latentcomm run`` as a LangGraph graph: the same chain of agents (holder -> relays ->
answerer) in every mode, "auto" included, and the same table.

    python examples/langgraph_relay.py --questions 8 --agents 3
    python examples/langgraph_relay.py --modes kv auto --max-payload-bytes 2000000   # auto drops to latents

This is ``latentcomm run`` (its flags, replicas, agents, scoring and report; without ``--modes`` every mode runs)
with one thing changed: each question goes through its chain as a LangGraph graph
(``latentcomm.integrations.langgraph.relay_graph`` of the job's agents), its messages through the graph's state
channel, instead of agent to agent.
"""
from __future__ import annotations

import sys
import time
from typing import Any

from latentcomm.actors.agent import Agent, Incoming
from latentcomm.actors.job.main import main
from latentcomm.actors.job.modes import MODES, Mode
from latentcomm.actors.job.results import Answer
from latentcomm.actors.job.run import Held
from latentcomm.actors.tasks import Item, Task
from latentcomm.integrations.langgraph import relay_graph


async def graph_answer(item: Item, mode: Mode, chain: list[Agent], task: Task, held: Held) -> Answer:
    """One question through ``chain`` as a graph: each agent's input is the task's, each message goes through the
    state; what the job annotates its trace from after the timed runs is kept in ``held``, as ``run.answer`` does."""
    said: list[Any] = []

    def prompt(i: int, state: dict[str, Any], received: Any) -> Any:
        for message in received if isinstance(received, list) else [received]:
            if isinstance(message, Incoming) and message.kind == "latent":
                held.latents[message.message.message_id] = message.data
            if isinstance(message, Incoming) and message.kind == "kv":
                held.kv[message.message.message_id] = (chain[i - 1], said[i - 1])
        said.append(task.first_input(item) if i == 0 else task.later_input(item, received, last=i == len(chain) - 1))
        return said[-1]

    graph = relay_graph(chain, prompt, kind=mode.kind, generate=mode.generate, forward=mode.relay == "forward")
    start = time.perf_counter()
    state = await graph.ainvoke({"messages": [], "conversation_id": f"{mode.name}:{len(chain)}:{item.id}",
                                 "metadata": {"mode": mode.name, "question": item.id, "agents": len(chain)}})
    final = state["answer"]
    return Answer(item.id, mode.name, len(chain), final, task.correct(final, item), time.perf_counter() - start,
                  state["answer_s"])


if __name__ == "__main__":
    argv = sys.argv[1:]
    sys.exit(main(argv if "--modes" in argv else [*argv, "--modes", *MODES], answering=graph_answer))
