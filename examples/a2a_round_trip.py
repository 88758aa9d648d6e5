"""Two processes talk A2A on loopback: a server process exposes the answerer of the facts relay as an A2A agent; this
process's holder sends it a note's latent, its KV cache and what "auto" chooses, each as a message part read in
context and answered, then the same exchange in text (the holder's answer as a text part). Prints the bytes of
every message beside the text part's, and the HTTP request bodies (JSON, the message base64-encoded).

    python examples/a2a_round_trip.py --questions 3                       # default backbone and shipped head
    python examples/a2a_round_trip.py --backbone path/to/tiny --questions 1

The server is ``latentcomm.integrations.a2a.a2a_app`` under uvicorn on 127.0.0.1 (``serve`` below, started as a
subprocess with the shared HMAC key in its environment); both sides load the same backbone and head in process.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time

import httpx

from latentcomm.actors.agent import Agent, keep_latent
from latentcomm.actors.tasks import FACTS
from latentcomm.engine.replica import ReplicaConfig
from latentcomm.integrations.a2a import ANSWERS_READ, A2APeer, a2a_app
from latentcomm.integrations.local import LocalPool
from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.protocols import Description, unpack

KEY_ENV = "LATENTCOMM_A2A_KEY"
KINDS = ("latent", "kv", "auto")


def replica_config(args: argparse.Namespace) -> ReplicaConfig:
    return ReplicaConfig(backbone=args.backbone, head=args.head, max_new_tokens=args.max_new_tokens, num_threads=1)


def serve(args: argparse.Namespace) -> None:
    """The server process: the relay's answerer (the facts task's last role) behind A2A on 127.0.0.1."""
    import uvicorn

    agent = Agent("answerer", LocalPool(replica_config(args)), role=FACTS.last_role, reads=ANSWERS_READ,
                  key=bytes.fromhex(os.environ[KEY_ENV])).on("latent", keep_latent)
    url = f"http://127.0.0.1:{args.port}"
    uvicorn.run(asyncio.run(a2a_app(agent, url)), host="127.0.0.1", port=args.port, log_level="warning")


async def talk(args: argparse.Namespace, url: str, key: bytes) -> None:
    holder = Agent("holder", LocalPool(replica_config(args)), role=FACTS.first_role, key=key)
    bodies: list[int] = []

    async def measure(request: httpx.Request) -> None:
        bodies.append(len(request.content))

    async with httpx.AsyncClient(timeout=600, event_hooks={"request": [measure]}) as http:
        peer = await A2APeer.connect(url, http=http)
        print(f"{peer.name} at {url} reads {', '.join((await peer.describe()).kinds)}\n")
        rows = [("question", "message", "message bytes", "request bytes", "correct", "answer")]
        for item in FACTS.load(args.questions, 0):
            before, _, ask = FACTS.later_input(item, "", last=True)
            asking = peer.asking(before, ask)
            said = FACTS.first_input(item)
            for kind in KINDS:
                recorded = Recorded(asking)
                answer = await holder.send(recorded, said, kind=kind, conversation_id=f"{kind}:{item.id}")
                sent = unpack(recorded.data, key=key).kind
                rows.append((item.id, sent if kind == sent else f"{kind}: {sent}", f"{len(recorded.data):,}",
                             f"{bodies[-1]:,}", str(FACTS.correct(answer, item)), " ".join(answer.split())[:60]))
            text = await holder.respond(said)
            answer = await asking.send_text(text)
            rows.append((item.id, "text part", f"{len(text.encode()):,}", f"{bodies[-1]:,}",
                         str(FACTS.correct(answer, item)), " ".join(answer.split())[:60]))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
        await peer.close()


class Recorded:
    """A peer that keeps the last message given to it (to print its kind and size)."""

    def __init__(self, peer: A2APeer) -> None:
        self.peer, self.name, self.data = peer, peer.name, b""

    async def describe(self, peer: Description | None = None) -> Description:
        return await self.peer.describe(peer)

    async def receive(self, data: bytes) -> str:
        self.data = data
        return await self.peer.receive(data)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", nargs="?", default="talk", choices=("talk", "serve"))
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    p.add_argument("--head", default=None)
    p.add_argument("--questions", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args(argv)
    if args.command == "serve":
        serve(args)
        return 0
    key, port = os.urandom(32), free_port()
    command = [sys.executable, __file__, "serve", "--port", str(port), "--backbone", args.backbone,
               "--max-new-tokens", str(args.max_new_tokens), *(["--head", args.head] if args.head else [])]
    server = subprocess.Popen(command, env={**os.environ, KEY_ENV: key.hex()})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                httpx.get(f"{url}/.well-known/agent-card.json", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the A2A server did not start") from None
                time.sleep(0.5)
        print(f"A2A server in process {server.pid}; this process {os.getpid()}")
        asyncio.run(talk(args, url, key))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
