"""``latentcomm bench serve``: requests/s and p50/p99 latency against concurrent agents, batching on and off.

Every agent is a closed loop: it sends one request (compress one text, or decode one latent to at most
``--max-new-tokens`` tokens, greedy), waits for the reply and sends the next, for ``--level-seconds`` and at
least ``--min-requests`` requests per level. One replica (one actor, ``--threads`` torch threads) serves each
configuration in turn, all in one run:

* direct actor calls (``ReplicaPool``) for 1, 2, 4, 8, 16, 32 agents: the replica unbatched (each request
  alone, generation one row at a time, in arrival order) and batched (compress passes shared by the requests
  that arrive together, decode rows joining the running generation between steps);
* the continuously batched replica behind the HTTP front door (``latentcomm serve``, one keep-alive
  connection per agent) against direct actor calls to an identical replica, back to back per level.

Reported: requests/s, p50/p99 latency, and the ratios against the unbatched replica and the actor path
measured in the same run; the 1-minute load average before and after (the machine may be shared).
Writes ``serve.json`` and ``serve.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.engine.batching import BatchConfig
from latentcomm.benchmarks.encode import benchmark_texts
from latentcomm.benchmarks.handoff import percentile
from latentcomm.cli.parser import backbone_source, count, head_folder, number, output_dir, parser
from latentcomm.runtime.cluster import init_ray
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.protocols import unpack
from latentcomm.engine.replica import ReplicaConfig

KINDS = ("compress", "decode")
MODES: dict[str, BatchConfig] = {"unbatched": BatchConfig(batching=False), "continuous": BatchConfig()}
"""The replica configurations compared."""


@dataclass(frozen=True)
class Level:
    """One measured load level."""

    kind: str
    mode: str
    path: str
    agents: int
    requests: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    passes: int | None = None
    """Compress forward passes the replica ran during the level (its ``counters``; None: not read)."""
    rows_per_pass: float | None = None
    model_share: float | None = None
    """Share of the level's wall time the replica's model thread spent in those passes."""
    ms_per_pass: float | None = None


Call = Callable[[int, int], Awaitable[Any]]
"""``call(agent, n)``: the n-th request of an agent."""


async def closed_loop(call: Call, agents: int, seconds: float, min_requests: int) -> tuple[list[float], float]:
    """``agents`` closed loops for ``seconds`` and at least ``min_requests`` requests; latencies and wall time."""
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = start + seconds

    async def agent(index: int) -> None:
        n = 0
        while time.perf_counter() < deadline or len(latencies) + agents - 1 < min_requests:
            sent = time.perf_counter()
            await call(index, n)
            latencies.append(time.perf_counter() - sent)
            n += 1

    await asyncio.gather(*(agent(i) for i in range(agents)))
    return latencies, time.perf_counter() - start


def level(kind: str, mode: str, path: str, agents: int, latencies: list[float], wall: float) -> Level:
    return Level(kind, mode, path, agents, len(latencies), wall, len(latencies) / wall,
                 percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3)


class Workload:
    """The requests of one kind: texts to compress, or latents (packed, made once) to decode."""

    def __init__(self, kind: str, texts: list[str], latents: list[bytes], max_new_tokens: int) -> None:
        self.kind, self.texts, self.latents, self.max_new_tokens = kind, texts, latents, max_new_tokens

    def actor_call(self, pool: ReplicaPool) -> Call:
        async def call(agent: int, n: int) -> Any:
            i = (agent * 7 + n) % len(self.texts)
            if self.kind == "compress":
                return await pool.call("compress", [self.texts[i]])
            return await pool.call("decode", [self.latents[i]], max_new_tokens=self.max_new_tokens)
        return call

    def http_call(self, url: str, agents: int, executor: ThreadPoolExecutor) -> Call:
        from latentcomm.http.client import Client

        clients = [Client(url) for _ in range(agents)]
        latents = [unpack(data) for data in self.latents]

        def blocking(agent: int, n: int) -> Any:
            i = (agent * 7 + n) % len(self.texts)
            if self.kind == "compress":
                return clients[agent].compress(self.texts[i])
            return clients[agent].decode(latents[i], max_new_tokens=self.max_new_tokens)

        async def call(agent: int, n: int) -> Any:
            return await asyncio.get_running_loop().run_in_executor(executor, blocking, agent, n)
        return call


Counters = Callable[[], Awaitable[dict[str, int]]]
"""The replica's ``counters()``, read through the same path as the calls."""


def with_passes(row: Level, before: dict[str, int], after: dict[str, int]) -> Level:
    """``row`` with the compress passes the replica ran between two readings of its counters."""
    passes = after["text_batches"] - before["text_batches"]
    busy_ms = after["text_busy_ms"] - before["text_busy_ms"]
    return replace(row, passes=passes, rows_per_pass=(after["text_rows"] - before["text_rows"]) / max(passes, 1),
                   model_share=busy_ms / 1e3 / row.seconds, ms_per_pass=busy_ms / max(passes, 1))


async def measure(call: Call, kind: str, mode: str, path: str, agents: list[int], args: argparse.Namespace,
                  counters: Counters | None = None) -> list[Level]:
    await closed_loop(call, 1, 0.0, 2)  # warm-up: the first calls fill caches
    rows = []
    for n in agents:
        before = await counters() if counters else None
        latencies, wall = await closed_loop(call, n, args.level_seconds, max(n, args.min_requests))
        rows.append(level(kind, mode, path, n, latencies, wall))
        if counters and kind == "compress":
            rows[-1] = with_passes(rows[-1], before, await counters())
        r = rows[-1]
        passes = "" if r.passes is None else \
            f"  {r.passes} passes of {r.rows_per_pass:.1f} rows, {r.ms_per_pass:.0f} ms each, model {r.model_share:.0%}"
        print(f"{kind:<9}{mode:<11}{path:<6}{n:>4} agents {r.requests_per_s:>8.2f} req/s  "
              f"p50 {r.p50_ms:>8.1f} ms  p99 {r.p99_ms:>8.1f} ms  ({len(latencies)} requests){passes}", flush=True)
    return rows


def replica_config(args: argparse.Namespace, batching: BatchConfig) -> ReplicaConfig:
    return ReplicaConfig(backbone=args.backbone, head=args.head, weights_dtype=args.dtype, num_threads=args.threads,
                         max_new_tokens=args.max_new_tokens,
                         batching=replace(batching, max_batch_size=args.max_batch, regroup_share=args.regroup_share))


def pool_of(args: argparse.Namespace, batching: BatchConfig, name: str) -> ReplicaPool:
    pool = ReplicaPool(replica_config(args, batching), PoolConfig(num_replicas=1, num_cpus=0, max_in_flight=256),
                       name=name)
    asyncio.run(pool.ready())
    return pool


def batching_levels(args: argparse.Namespace, workloads: dict[str, Workload]) -> list[Level]:
    """Part 1: each replica configuration, direct actor calls, every agent count, for compress and decode."""
    rows: list[Level] = []
    for mode, batching in MODES.items():
        pool = pool_of(args, batching, f"bench-{mode}")
        try:
            for kind in args.kinds:
                rows += asyncio.run(measure(workloads[kind].actor_call(pool), kind, mode, "actor", args.agents, args))
        finally:
            pool.shutdown()
    return rows


def http_levels(args: argparse.Namespace, workloads: dict[str, Workload]) -> list[Level]:
    """Part 2: the batched replica behind the HTTP front door vs direct actor calls, back to back per level."""
    from ray import serve

    from latentcomm.actors.serve import ServeConfig, start
    from latentcomm.http.client import Client

    url = start(ServeConfig(port=args.port, num_cpus=0, max_ongoing_requests=256,
                            replica=replica_config(args, MODES["continuous"])))
    pool = pool_of(args, MODES["continuous"], "bench-actor")
    rows: list[Level] = []
    info = Client(url)

    async def http_counters() -> dict[str, int]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: info.info()["counters"])

    try:
        with ThreadPoolExecutor(max(args.http_agents)) as executor:
            for kind in args.kinds:
                for n in args.http_agents:
                    http = workloads[kind].http_call(url, n, executor)
                    rows += asyncio.run(measure(workloads[kind].actor_call(pool), kind, "continuous", "actor", [n],
                                                args, partial(pool.call, "counters")))
                    rows += asyncio.run(measure(http, kind, "continuous", "http", [n], args, http_counters))
    finally:
        pool.shutdown()
        serve.shutdown()
    return rows


def ratios(rows: list[Level], args: argparse.Namespace) -> dict[str, Any]:
    """Throughput and latency ratios against the unbatched replica and against the actor path."""
    def find(kind: str, mode: str, path: str, agents: int) -> Level | None:
        """The first such level: for actor calls, the batching part's (the HTTP part measures its own after)."""
        found = [r for r in rows if (r.kind, r.mode, r.path, r.agents) == (kind, mode, path, agents)]
        return found[0] if found else None

    out: dict[str, Any] = {}
    many = 16 if 16 in args.agents else max(args.agents)
    for kind in args.kinds:
        base_many, base_one = find(kind, "unbatched", "actor", many), find(kind, "unbatched", "actor", 1)
        got_many, got_one = find(kind, "continuous", "actor", many), find(kind, "continuous", "actor", 1)
        if base_many and got_many:
            out[f"{kind}/continuous: throughput x unbatched at {many} agents"] = \
                got_many.requests_per_s / base_many.requests_per_s
        if base_one and got_one:
            out[f"{kind}/continuous: p99 x unbatched at 1 agent"] = got_one.p99_ms / base_one.p99_ms
        for n in args.http_agents:
            actor = [r for r in rows if (r.kind, r.path, r.agents) == (kind, "actor", n) and r.mode == "continuous"]
            http = find(kind, "continuous", "http", n)
            if actor and http:
                out[f"{kind}: http throughput x actor at {n} agents"] = http.requests_per_s / actor[-1].requests_per_s
                out[f"{kind}: http p50 x actor at {n} agents"] = http.p50_ms / actor[-1].p50_ms
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [Level(**r) for r in results["levels"]]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for col, kind in enumerate(KINDS):
        for mode in MODES:
            mine = [r for r in rows if (r.kind, r.mode, r.path) == (kind, mode, "actor") and r.agents in
                    results["config"]["agents"]]
            mine = sorted({r.agents: r for r in reversed(mine)}.values(), key=lambda r: r.agents)  # the first
            if not mine:
                continue
            axes[0, col].plot([r.agents for r in mine], [r.requests_per_s for r in mine], "o-", label=mode)
            axes[1, col].plot([r.agents for r in mine], [r.p99_ms for r in mine], "o-", label=f"{mode} p99")
            axes[1, col].plot([r.agents for r in mine], [r.p50_ms for r in mine], "o--", alpha=0.5,
                              label=f"{mode} p50")
        axes[0, col].set_title(f"{kind}: requests/s (actor calls)")
        axes[1, col].set_title(f"{kind}: latency (ms)")
        for ax in axes[:, col]:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent agents")
            ax.legend(fontsize=8)
        axes[1, col].set_yscale("log")
    http = [r for r in rows if r.mode == "continuous" and r.agents in results["config"]["http_agents"]]
    labels, values = [], []
    for kind in KINDS:
        for n in results["config"]["http_agents"]:
            for path_name in ("actor", "http"):
                found = [r for r in http if (r.kind, r.path, r.agents) == (kind, path_name, n)]
                if found:
                    labels.append(f"{kind}\n{n} ag. {path_name}")
                    values.append(found[-1].requests_per_s)
    axes[0, 2].bar(range(len(values)), values, color=["#4c72b0", "#dd8452"] * (len(values) // 2 + 1))
    axes[0, 2].set_xticks(range(len(labels)), labels, fontsize=7)
    axes[0, 2].set_title("HTTP front door vs actor calls: requests/s")
    axes[1, 2].axis("off")
    axes[1, 2].text(0, 1, "\n".join(f"{k}: {v:.2f}" for k, v in results["ratios"].items()), va="top", fontsize=7,
                    family="monospace")
    fig.suptitle(f"{results['backbone']} ({results['dtype']}), one replica, {results['config']['threads']} threads; "
                 f"load average {results['load_average']['before']:.1f} -> {results['load_average']['after']:.1f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("bench serve", __doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument("--backbone", type=backbone_source, default=DEFAULT_BACKBONE)
    p.add_argument("--head", type=head_folder, default=None, help="saved head folder (default: the shipped head)")
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                   help="backbone dtype (default: the device's fast one)")
    p.add_argument("--threads", type=count(1), default=2, help="torch threads of the replica")
    p.add_argument("--agents", type=count(1), nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--http-agents", type=count(1), nargs="+", default=[1, 16])
    p.add_argument("--level-seconds", type=number(0), default=6.0, help="closed-loop time per load level")
    p.add_argument("--min-requests", type=count(1), default=8, help="requests per level at least (and one per agent)")
    p.add_argument("--max-new-tokens", type=count(1), default=16, help="decode budget per request (greedy)")
    p.add_argument("--max-batch", type=count(1), default=32, help="rows per forward pass / running generation")
    p.add_argument("--regroup-share", type=number(0, 1), default=BatchConfig.regroup_share,
                   help="the batcher's regroup_share (0: never wait for the last pass's callers)")
    p.add_argument("--port", type=count(1), default=8765, help="port of the HTTP front door (127.0.0.1)")
    p.add_argument("--no-http", action="store_true", help="skip the HTTP part")
    p.add_argument("--kinds", choices=KINDS, nargs="+", default=list(KINDS), help="request kinds measured")
    p.add_argument("--note", default="", help="what else ran on the machine (recorded with the figures)")
    p.add_argument("--out", type=output_dir, default="runs/bench/serve")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    init_ray(num_cpus=os.cpu_count())
    texts = benchmark_texts(64)
    maker = pool_of(args, MODES["continuous"], "bench-latents")
    try:
        latents = asyncio.run(maker.call("compress", texts))
        [info] = asyncio.run(maker.ready())
    finally:
        maker.shutdown()
    workloads = {kind: Workload(kind, texts, latents, args.max_new_tokens) for kind in KINDS}
    rows = batching_levels(args, workloads)
    if not args.no_http:
        rows += http_levels(args, workloads)
    results = {"backbone": info["backbone"], "head": info["fingerprint"], "dtype": info["dtype"],
               "device": info["device"], "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
               "load_average": {"before": load_before, "after": os.getloadavg()[0]}, "note": args.note,
               "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "levels": [asdict(r) for r in rows], "ratios": {}}
    results["ratios"] = ratios(rows, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "serve.png")
    print(f"\n{os.cpu_count()} CPUs, load average {load_before:.2f} -> {results['load_average']['after']:.2f} (1 min)"
          + (f"; {args.note}" if args.note else ""))
    for name, value in results["ratios"].items():
        print(f"  {name}: {value:.2f}")
    print(f"wrote {args.out / 'serve.json'} and {args.out / 'serve.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
