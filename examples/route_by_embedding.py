"""An agent that routes incoming latents by embedding similarity: each goes on, unchanged, to the closest expert.

The router never generates text: it embeds each latent (MLP_align + mean pooling, no decoding), compares it
with the embeddings of the experts' descriptions and forwards the same latent to the best match, who decodes it.

    python examples/route_by_embedding.py
"""
from __future__ import annotations

import argparse
import asyncio

import numpy as np

from latentcomm.actors.agent import Agent, Incoming
from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.runtime.cluster import init_ray
from latentcomm.engine.messaging import message_embedding
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.protocols import unpack
from latentcomm.engine.replica import ReplicaConfig

EXPERTS = {"cook": "Recipes, cooking, food and kitchen questions.",
           "mathematician": "Arithmetic, algebra, numbers and maths word problems.",
           "gardener": "Plants, gardening, soil, flowers and vegetables."}
QUESTIONS = ["How long should I boil an egg?", "What is 15% of 240?", "When should I plant tomatoes?"]


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


async def route(backbone: str) -> None:
    pool = ReplicaPool(ReplicaConfig(backbone=backbone, num_threads=1, max_new_tokens=32), PoolConfig(num_replicas=1))
    await pool.ready()
    experts = {name: Agent(name, pool) for name in EXPERTS}
    packed = await pool.call("embed_texts", list(EXPERTS.values()))
    profiles = unit(np.stack([message_embedding(unpack(d)) for d in packed]))
    router = Agent("router", pool, trace=experts["cook"].trace)

    async def forward(agent: Agent, incoming: Incoming) -> tuple[str, str]:
        scores = profiles @ unit(await agent.embed(incoming))
        name = list(EXPERTS)[int(np.argmax(scores))]
        reply = await agent.send_message(experts[name], incoming.message,
                                         conversation_id=incoming.message.conversation_id)
        return name, reply

    router.on("latent", forward)
    user = Agent("user", pool)
    for i, question in enumerate(QUESTIONS):
        name, reply = await user.send(router, question, conversation_id=f"q{i}")
        print(f"{question!r} -> {name}: {reply[:80]!r}")
    pool.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    args = p.parse_args()
    init_ray(num_cpus=2)
    asyncio.run(route(args.backbone))


if __name__ == "__main__":
    main()
