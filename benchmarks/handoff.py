"""Benchmark latent vs text hand-off between agents, and actor-to-actor round trips (protocol bytes vs pickle).

Part 1 — hand-off on the default backbone, sender -> receiver, one message per question:
  * latent -> decode: the sender compresses (one forward pass), the receiver decodes the latent to text;
  * latent -> embed: the sender compresses, the receiver embeds the latent (routing/retrieval: no generation);
  * text (baseline): the sender generates its full answer and sends the text.
  Reported: time until the receiver holds the sender's answer (sender part and receiver part), bytes per
  message, and quality of what the receiver holds: teacher (all-MiniLM-L6-v2) cosine with GSM8K's reference
  solution, and for decoded latents the cosine with the sender's own text answer.
Part 2 — round trip between two actors, actor A -> actor B -> actor A, of one (n, H) latent: packed protocol
  bytes (A packs, B unpacks to an array and packs a reply, A unpacks) vs the float32 torch tensor pickled by
  Ray; p50/p99 over many trips.
Writes ``handoff.json`` and ``handoff.png`` into ``--out``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch
from tqdm.auto import tqdm

from latentcomm.actors.agent import Agent, embed_latent
from latentcomm.actors.trace import Trace, hop_stats
from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.cli.parser import backbone_source, count, head_folder, output_dir, parser
from latentcomm.runtime.cluster import init_ray
from latentcomm.tasks.gsm8k import load_gsm8k
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.protocols import LatentMessage, pack, unpack
from latentcomm.engine.replica import ReplicaConfig
from latentcomm.model.teachers import load_teacher, paired_cosines

MODES = ("latent->decode", "latent->embed", "text")


class Peer:
    """A benchmark actor: echoes latents as protocol bytes or as tensors, and times round trips to a peer."""

    def echo_bytes(self, data: bytes) -> bytes:
        msg = unpack(data)
        return pack(LatentMessage.from_array(msg.array(), dtype=msg.dtype, sender="b", recipient="a"))

    def echo_tensor(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def round_trips(self, peer: Any, how: str, shape: tuple[int, int], dtype: str, trips: int) -> list[float]:
        """Seconds per round trip to ``peer`` (after 10 warm-up trips)."""
        array = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        times = []
        for i in range(trips + 10):
            start = time.perf_counter()
            if how == "protocol":
                data = pack(LatentMessage.from_array(array, dtype=dtype, sender="a", recipient="b"))
                unpack(ray.get(peer.echo_bytes.remote(data))).array()
            else:
                ray.get(peer.echo_tensor.remote(torch.from_numpy(array)))
            if i >= 10:
                times.append(time.perf_counter() - start)
        return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def handoff(questions: list, pool: ReplicaPool, max_new_tokens: int, wire_dtype: str) -> tuple[Trace, dict]:
    """Every question once per mode, one at a time (so times are service times, not queueing)."""
    trace = Trace()
    sender = Agent("sender", pool, trace=trace, wire_dtype=wire_dtype, max_new_tokens=max_new_tokens)
    reader = Agent("reader", pool, trace=trace, max_new_tokens=max_new_tokens)
    router = Agent("router", pool, trace=trace).on("latent", embed_latent)
    sent_texts: dict[str, str] = {}
    for question in tqdm(questions, desc="hand-off", unit="question"):
        for mode in MODES:
            conversation, metadata = f"{mode}:{question.id}", {"mode": mode, "question": question.id}
            if mode == "latent->decode":
                await sender.send(reader, question.text, conversation_id=conversation, metadata=metadata)
            elif mode == "latent->embed":
                await sender.send(router, question.text, conversation_id=conversation, metadata=metadata)
            else:
                sent_texts[question.id] = await sender.send(reader, question.text, kind="text", generate=True,
                                                            conversation_id=conversation, metadata=metadata)
    return trace, sent_texts


def quality(trace: Trace, questions: list, sent_texts: dict[str, str]) -> dict[str, dict[str, float]]:
    """Teacher cosine of what the reader holds with GSM8K's reference solution and with the sender's text."""
    teacher = load_teacher("minilm")
    reference = {q.id: q.solution for q in questions}
    out = {}
    for mode in ("latent->decode", "text"):
        hops = [h for h in trace.hops if h.metadata.get("mode") == mode]
        ids = [h.metadata["question"] for h in hops]
        held = [h.text or "" for h in hops]
        out[mode] = {
            "cosine_to_reference": float(np.mean(paired_cosines(teacher, held, [reference[i] for i in ids]))),
            "cosine_to_sender_text": float(np.mean(paired_cosines(teacher, held, [sent_texts[i] for i in ids])))}
    return out


def summarize(trace: Trace) -> dict[str, dict[str, float]]:
    """Per mode: messages, bytes, sender and receiver seconds, and the time until the receiver holds the answer."""
    out = {}
    for mode in MODES:
        stats = hop_stats([h for h in trace.hops if h.metadata.get("mode") == mode])
        out[mode] = {"messages": stats.count, "bytes": stats.mean_bytes, "sender_s": stats.mean_produce_s,
                     "receiver_s": stats.mean_handle_s, "until_receiver_holds_s": stats.mean_latency_s,
                     "p50_until_receiver_holds_s": stats.p50_latency_s}
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hand = results["handoff"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    modes = list(hand)
    sender = [hand[m]["sender_s"] for m in modes]
    rest = [hand[m]["until_receiver_holds_s"] - s for m, s in zip(modes, sender)]
    colors = ["tab:blue", "tab:cyan", "tab:gray"]
    axes[0].bar(modes, sender, color=colors, label="sender produces")
    axes[0].bar(modes, rest, bottom=sender, color=colors, alpha=0.45, label="wire + receiver")
    axes[0].set_ylabel("seconds until the receiver holds it (mean)")
    axes[0].legend()
    axes[1].bar(modes, [hand[m]["bytes"] for m in modes], color=colors)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("bytes per message")
    trips = results["round_trip"]
    names = list(trips)
    x = np.arange(len(names))
    axes[2].bar(x - 0.2, [trips[n]["p50_ms"] for n in names], 0.4, label="p50")
    axes[2].bar(x + 0.2, [trips[n]["p99_ms"] for n in names], 0.4, label="p99")
    axes[2].set_xticks(x, names)
    axes[2].set_ylabel("ms per actor-to-actor round trip")
    axes[2].legend()
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=15)
    fig.suptitle(f"hand-off on {results['head']}, {results['config']['questions']} GSM8K questions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("bench handoff", __doc__.split("\n")[0])
    p.add_argument("--backbone", type=backbone_source, default=DEFAULT_BACKBONE)
    p.add_argument("--head", type=head_folder, default=None, help="saved head folder (default: the shipped head)")
    p.add_argument("--questions", type=count(1), default=6)
    p.add_argument("--max-new-tokens", type=count(1), default=64)
    p.add_argument("--wire-dtype", default="float16", choices=["float32", "float16", "bfloat16", "int8"])
    p.add_argument("--trips", type=count(1), default=300, help="actor-to-actor round trips per format")
    p.add_argument("--address", default=None, help="join an existing Ray cluster")
    p.add_argument("--out", type=output_dir, default="runs/bench/handoff")
    return p.parse_args(argv)


def round_trips(shape: tuple[int, int], wire_dtype: str, trips: int) -> dict[str, dict[str, float]]:
    """p50/p99 of actor A -> actor B -> actor A round trips of one latent: protocol bytes vs a pickled tensor."""
    peer_class = ray.remote(Peer).options(num_cpus=0)
    a, b = peer_class.remote(), peer_class.remote()
    out = {}
    for how in ("protocol", "pickle"):
        times = ray.get(a.round_trips.remote(b, how, shape, wire_dtype, trips))
        label = f"protocol ({wire_dtype})" if how == "protocol" else "pickled tensor (float32)"
        out[label] = {"p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3,
                      "trips": len(times)}
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Both parts of the benchmark on a running Ray cluster; returns the results."""
    questions = load_gsm8k(args.questions)
    pool = ReplicaPool(ReplicaConfig(backbone=args.backbone, head=args.head, num_threads=1,
                                     max_new_tokens=args.max_new_tokens), PoolConfig(num_replicas=1), name="bench")
    try:
        [info] = asyncio.run(pool.ready())
        trace, sent_texts = asyncio.run(handoff(questions, pool, args.max_new_tokens, args.wire_dtype))
    finally:
        pool.shutdown()
    round_trip = round_trips((info["num_compression"], info["hidden_size"]), args.wire_dtype, args.trips)
    hand = summarize(trace)
    for mode, scores in quality(trace, questions, sent_texts).items():
        hand[mode].update(scores)
    text = hand["text"]
    results = {"config": vars(args) | {"out": str(args.out)}, "head": f"{info['backbone']} head {info['fingerprint']}",
               "replica": info, "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
               "handoff": hand, "round_trip": round_trip,
               "ratios_vs_text": {m: {"until_receiver_holds": hand[m]["until_receiver_holds_s"]
                                      / text["until_receiver_holds_s"],
                                      "sender": hand[m]["sender_s"] / text["sender_s"],
                                      "bytes": hand[m]["bytes"] / text["bytes"]} for m in MODES},
               "trace_sample": [h.__dict__ for h in trace.hops[:len(MODES)]]}
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    """The hand-off table, the decoded-vs-sent cosine and the round-trip latencies."""
    hand, round_trip = results["handoff"], results["round_trip"]
    print(f"\n{results['head']}, {args.questions} questions, {args.max_new_tokens} new tokens max\n")
    print(f"{'mode':<16}{'sender s':>10}{'receiver s':>12}{'holds s':>10}{'x text':>8}{'bytes':>9}{'cos ref':>9}")
    for mode in MODES:
        h = hand[mode]
        cos = h.get("cosine_to_reference")
        print(f"{mode:<16}{h['sender_s']:>10.3f}{h['receiver_s']:>12.3f}{h['until_receiver_holds_s']:>10.3f}"
              f"{results['ratios_vs_text'][mode]['until_receiver_holds']:>8.2f}{h['bytes']:>9.0f}"
              f"{'' if cos is None else format(cos, '.3f'):>9}")
    if "cosine_to_sender_text" in hand["latent->decode"]:
        print(f"decoded latent vs the sender's own text answer (teacher cosine): "
              f"{hand['latent->decode']['cosine_to_sender_text']:.3f}")
    print("\nactor -> actor round trip of one latent:")
    for label, r in round_trip.items():
        print(f"  {label:<26} p50 {r['p50_ms']:.3f} ms   p99 {r['p99_ms']:.3f} ms")
    print(f"wrote {args.out / 'handoff.json'} and {args.out / 'handoff.png'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    init_ray(args.address, num_cpus=None if args.address else os.cpu_count())
    results = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "handoff.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    plot(results, args.out / "handoff.png")
    report(results, args)
    return 0
