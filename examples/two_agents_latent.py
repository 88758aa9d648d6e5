"""Two agents exchanging a latent: Alice compresses her answer, Bob decodes it (and gets the text baseline too).

    python examples/two_agents_latent.py "Why is the sky blue?"
"""
from __future__ import annotations

import argparse
import asyncio

from latentcomm.actors.agent import Agent
from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.runtime.cluster import init_ray
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.engine.replica import ReplicaConfig


async def converse(question: str, backbone: str) -> None:
    pool = ReplicaPool(ReplicaConfig(backbone=backbone, num_threads=1, max_new_tokens=48), PoolConfig(num_replicas=1))
    await pool.ready()
    alice = Agent("alice", pool, role="Answer briefly.")
    bob = Agent("bob", pool, trace=alice.trace)
    read = await alice.send(bob, question, conversation_id="demo")  # one forward pass at Alice
    said = await alice.send(bob, question, kind="text", generate=True, conversation_id="demo")  # generation at Alice
    print(f"bob decoded the latent: {read}\nbob read the text:      {said}\n")
    print(bob.trace.table())
    pool.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("question", nargs="?", default="Why is the sky blue?")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    args = p.parse_args()
    init_ray(num_cpus=2)
    asyncio.run(converse(args.question, args.backbone))


if __name__ == "__main__":
    main()
