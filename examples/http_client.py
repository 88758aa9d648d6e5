"""An agent in another service talks to `latentcomm serve` over plain HTTP: no torch, no Ray, no latentcomm model.

It sends protocol bytes (`protocols/SPEC.md`; here packed with `latentcomm.protocols`, which needs only msgpack and
numpy) and JSON, with nothing but `requests`:

    latentcomm serve --port 8000 &
    python examples/http_client.py --url http://127.0.0.1:8000 "Why is the sky blue?"
"""
from __future__ import annotations

import argparse
import sys

import requests

from latentcomm.protocols import LatentMessage, pack, unpack

PROTOCOL = {"Content-Type": "application/x-latentcomm"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("question", nargs="?", default="Why is the sky blue?")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--max-new-tokens", type=int, default=24)
    args = p.parse_args()

    question = LatentMessage.from_text(args.question, sender="other-service", conversation_id="demo")
    reply = requests.post(f"{args.url}/compress", data=pack(question), headers=PROTOCOL, timeout=300)
    reply.raise_for_status()
    latent = unpack(reply.content)
    print(f"latent: {latent.shape} {latent.dtype}, {len(reply.content)} bytes, head {latent.fingerprint}, "
          f"conversation {latent.conversation_id!r}")

    decoded = requests.post(f"{args.url}/decode", params={"max_new_tokens": args.max_new_tokens},
                            data=reply.content, headers=PROTOCOL, timeout=300)
    decoded.raise_for_status()
    print(f"decoded from the latent: {unpack(decoded.content).text()}")

    answer = requests.post(f"{args.url}/respond", json={"text": args.question, "max_new_tokens": args.max_new_tokens},
                           timeout=300)
    answer.raise_for_status()
    print(f"the backbone's answer: {answer.json()['text']}")

    refused = requests.post(f"{args.url}/decode", data=b"not a message", headers=PROTOCOL, timeout=60)
    print(f"malformed bytes: HTTP {refused.status_code} {refused.text}")
    print(f"torch imported here: {'torch' in sys.modules}")


if __name__ == "__main__":
    main()
