"""Join an existing Ray cluster and spread replicas over it; the agents run in this (driver) process.

Start a cluster first, e.g. ``ray start --head --num-cpus 4`` (or use your own), then:

    python examples/join_cluster.py --address auto --replicas 2
"""
from __future__ import annotations

import argparse
import asyncio

import ray

from latentcomm.actors.agent import Agent
from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.runtime.cluster import init_ray
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.engine.replica import ReplicaConfig


async def work(backbone: str, replicas: int, gpus: float) -> None:
    pool = ReplicaPool(ReplicaConfig(backbone=backbone, num_threads=1, max_new_tokens=32),
                       PoolConfig(num_replicas=replicas, num_cpus=1, num_gpus=gpus), name="cluster")
    for info in await pool.ready():
        print(f"replica pid {info['pid']} on {info['device']}: head {info['fingerprint']}")
    planner, worker = Agent("planner", pool), Agent("worker", pool)
    questions = ["Plan a picnic.", "Plan a birthday party.", "Plan a study week."]
    replies = await asyncio.gather(*(planner.send(worker, q, conversation_id=q) for q in questions))
    for q, r in zip(questions, replies):
        print(f"{q} -> {r[:70]!r}")
    print(f"calls per replica: {pool.stats()['calls']}")
    pool.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--address", default="auto", help="'auto', host:port, or ray://host:10001")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--gpus-per-replica", type=float, default=0.0)
    p.add_argument("--backbone", default=DEFAULT_BACKBONE, help="must be loadable on every node")
    args = p.parse_args()
    init_ray(args.address)
    print(f"joined a cluster with {ray.cluster_resources()}")
    asyncio.run(work(args.backbone, args.replicas, args.gpus_per_replica))


if __name__ == "__main__":
    main()
