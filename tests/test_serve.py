"""The HTTP front door on Ray Serve, on the tiny model: every route round-trips, oversized bodies get 413 before
they are read, malformed ones 400 with the ProtocolError text, keys are enforced; the client needs no torch."""
from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from latentcomm.http.client import Client
from latentcomm.runtime.cluster import QUIET_ENV
from latentcomm.errors import RequestError
from latentcomm.http.api import PROTOCOL_TYPE
from latentcomm.protocols import LatentMessage, pack, unpack
from latentcomm.engine.replica import ReplicaConfig
from conftest import TINY_HEAD, free_port
from test_actors import count_parses

PAYLOAD_LIMIT = 4096
KEY = bytes(range(32))
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "http_client.py"


@pytest.fixture(scope="module")
def urls(ray_local, tiny_backbone_dir, tmp_path_factory):
    """Two applications on one Serve instance: an open one at / and one that needs signed messages at /signed."""
    from ray import serve

    from latentcomm.actors.serve import ServeConfig, start

    replica = ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32", num_threads=1,
                            max_new_tokens=8)
    key_file = tmp_path_factory.mktemp("keys") / "keys.hex"
    key_file.write_text(f"{os.urandom(32).hex()}\n{KEY.hex()}\n")
    config = ServeConfig(port=free_port(), num_cpus=0, max_payload_bytes=PAYLOAD_LIMIT, replica=replica)
    open_url = start(config)
    signed_url = start(dataclasses.replace(config, key_file=str(key_file)), name="signed", route_prefix="/signed")
    yield open_url, signed_url
    serve.shutdown()


@pytest.fixture(scope="module")
def local(tiny_backbone_dir):
    """The same model in this process: what the server must answer."""
    from latentcomm.engine.replica import Replica

    return Replica(ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32",
                                 max_new_tokens=8)).model


@pytest.mark.slow
def test_every_route_round_trips(urls, local):
    client = Client(urls[0])
    question = "What is the capital of France?"
    latent = client.compress(question, dtype="float32", sender="ts", recipient="py", conversation_id="c7")
    assert (latent.kind, latent.fingerprint, latent.conversation_id, latent.sender) == \
        ("latent", local.fingerprint, "c7", "ts")
    np.testing.assert_allclose(latent.array(), local.compress(question).numpy()[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(client.embed(question).array(), local.encode(question), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(client.embed(latent).array(), local.encode(question), rtol=1e-4, atol=1e-5)
    assert client.decode(latent, max_new_tokens=6) == local.decode(local.compress(question), max_new_tokens=6)[0]
    assert client.respond(question) == local.respond(question, max_new_tokens=8)[0]
    info = client.info()
    assert info["fingerprint"] == local.fingerprint and info["counters"]["text_batches"] >= 1


@pytest.mark.slow
def test_json_text_in_json_or_bytes_out(urls, local):
    answer = requests.post(f"{urls[0]}/respond", json={"text": "hi", "max_new_tokens": 5}, timeout=120)
    assert answer.status_code == 200 and answer.json()["text"] == local.respond("hi", max_new_tokens=5)[0]
    latent = requests.post(f"{urls[0]}/compress", json={"text": "hi", "prompt": "Summarize:"}, timeout=120)
    assert latent.headers["content-type"] == PROTOCOL_TYPE
    np.testing.assert_allclose(unpack(latent.content).array(), local.compress("hi", prompt="Summarize:").numpy()[0],
                               rtol=1e-2, atol=1e-3)  # float16 on the wire
    text = requests.post(f"{urls[0]}/decode", data=latent.content, timeout=120,
                         headers={"Content-Type": PROTOCOL_TYPE, "Accept": "application/json"})
    assert text.json()["text"] == local.decode(local.compress("hi", prompt="Summarize:"), max_new_tokens=8)[0]


def _raw(url: str, head: str, body: bytes = b"", *, chunks: list[bytes] | None = None) -> tuple[int, str, float]:
    """Send a hand-made request; the status, the body and the seconds until the reply."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    start = time.perf_counter()
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        try:
            for chunk in chunks or []:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            if chunks is not None:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: what the test wants
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < _length(reply):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    status = int(reply.split(b" ", 2)[1])
    return status, reply.split(b"\r\n\r\n", 1)[1].decode("utf-8", "replace"), time.perf_counter() - start


def _length(reply: bytes) -> int:
    for line in reply.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


@pytest.mark.slow
def test_oversized_bodies_get_413_before_they_are_read(urls):
    host = urls[0].split("//")[1]
    declared = f"POST /decode HTTP/1.1\r\nHost: {host}\r\nContent-Type: {PROTOCOL_TYPE}\r\nContent-Length: {10**10}\r\n"
    status, text, seconds = _raw(urls[0], declared, b"\x89LCM")  # 10 GB announced, 4 bytes sent: no wait for more
    assert status == 413 and "10000000000" in text and seconds < 30
    chunked = f"POST /decode HTTP/1.1\r\nHost: {host}\r\nContent-Type: {PROTOCOL_TYPE}\r\nTransfer-Encoding: chunked\r\n"
    status, text, _ = _raw(urls[0], chunked, chunks=[b"x" * 32768] * 8)
    assert status == 413
    big = pack(LatentMessage.from_text("x" * (PAYLOAD_LIMIT + 1)))  # fits a body, but not the payload limit
    reply = requests.post(f"{urls[0]}/respond", data=big, headers={"Content-Type": PROTOCOL_TYPE}, timeout=60)
    assert reply.status_code == 413 and "LimitExceeded" in reply.text


@pytest.mark.slow
def test_malformed_requests_get_400_with_the_protocol_error(urls, local):
    url = urls[0]
    cases = [("decode", b"not a message", PROTOCOL_TYPE, 400, "MalformedMessage"),
             ("decode", pack(LatentMessage.from_text("hi")), PROTOCOL_TYPE, 400, "reads a latent message"),
             ("respond", b"{not json", "application/json", 400, "bad JSON"),
             ("respond", b'{"text": "hi", "tempreature": 1}', "application/json", 400, "unknown option"),
             ("compress", b'{"text": "hi"}', "text/plain", 415, "application/x-latentcomm"),
             ("nowhere", b"", PROTOCOL_TYPE, 404, "no route")]
    for route, body, kind, status, text in cases:
        reply = requests.post(f"{url}/{route}", data=body, headers={"Content-Type": kind}, timeout=60)
        assert (reply.status_code, text in reply.text) == (status, True), (route, reply.status_code, reply.text)
    assert requests.get(f"{url}/compress", timeout=60).status_code == 405
    latent = Client(url).compress("hi")
    alien = dataclasses.replace(latent, backbone_id="llama-64x2-000000000000", signature=None)
    with pytest.raises(RequestError) as refused:
        Client(url).decode(alien)
    assert refused.value.status == 422 and "HeadMismatchError" in refused.value.reason
    assert requests.post(f"{url}/decode?max_new_tokens=lots", data=pack(latent), timeout=60,
                         headers={"Content-Type": PROTOCOL_TYPE}).status_code == 400


@pytest.mark.slow
def test_keys_are_required_and_replies_signed(urls):
    signed = Client(urls[1], key=KEY)
    latent = signed.compress("hi")  # verified with KEY by the client: the reply was signed
    assert signed.decode(latent, max_new_tokens=3)
    with pytest.raises(RequestError) as unsigned:
        Client(urls[1]).compress("hi")
    assert unsigned.value.status == 401 and "SignatureError" in unsigned.value.reason
    with pytest.raises(RequestError) as forged:
        Client(urls[1], key=b"another key").compress("hi")
    assert forged.value.status == 401
    assert requests.post(f"{urls[1]}/respond", json={"text": "hi"}, timeout=60).status_code == 401


def test_the_client_and_the_protocol_load_without_torch():
    code = ("import sys, latentcomm.http.client, latentcomm.protocols, latentcomm.http.api; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.slow
def test_example_talks_to_the_server_with_plain_requests(urls):
    done = subprocess.run([sys.executable, str(EXAMPLE), "--url", urls[0], "--max-new-tokens", "4"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, **QUIET_ENV})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "latent: (3, 64) float16" in done.stdout and "conversation 'demo'" in done.stdout
    assert "malformed bytes: HTTP 400" in done.stdout and "torch imported here: False" in done.stdout


async def _post(server, route: str, body: bytes, content_type: str = PROTOCOL_TYPE):
    """One request to a front door in this process (no Serve): its status and body."""
    from starlette.requests import Request

    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        return chunks.pop() if chunks else {"type": "http.disconnect"}

    scope = {"type": "http", "method": "POST", "scheme": "http", "server": ("test", 80), "root_path": "",
             "path": f"/{route}", "query_string": b"", "headers": [(b"content-type", content_type.encode())]}
    reply = await server(Request(scope, receive))
    return reply.status_code, reply.body


async def test_the_front_door_parses_each_request_once_and_never_repacks(tiny_backbone_dir, monkeypatch):
    from latentcomm.actors import serve

    replica = ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32",
                            max_new_tokens=4)
    server = serve.LatentcommServer(replica, keys=(KEY,))
    question = pack(LatentMessage.from_text("hi", sender="ts", conversation_id="c"), key=KEY)
    status, latent = await _post(server, "compress", question)
    assert status == 200 and unpack(latent, key=KEY).sender == "ts"
    parses = count_parses(monkeypatch)
    packs = []
    monkeypatch.setattr(serve, "pack", lambda *a, **kw: packs.append(1) or pack(*a, **kw))
    for route, body in [("compress", question), ("embed", question), ("embed", latent), ("decode", latent),
                        ("respond", question)]:
        before = len(parses)
        status, reply = await _post(server, route, body)
        assert status == 200 and len(parses) - before == 1, (route, parses[before:])
        assert unpack(reply, key=KEY).conversation_id == "c"
    assert packs == [1, 1]  # the two texts; the replica packs latents and embeddings addressed, the server signs
