"""The examples users copy from run as scripts, end to end, on the tiny backbone (each starts or joins Ray)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from latentcomm.runtime.cluster import QUIET_ENV

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(args: list[str], timeout: float = 240) -> str:
    env = {**os.environ, **QUIET_ENV}
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_two_agents_exchange_a_latent(tiny_backbone_dir) -> None:
    out = _run([str(EXAMPLES / "two_agents_latent.py"), "Why is the sky blue?", "--backbone", str(tiny_backbone_dir)])
    assert "bob decoded the latent:" in out and "bob read the text:" in out
    assert "alice" in out and "latent" in out and "text" in out  # the trace table: sender and both kinds


def test_router_forwards_each_latent_to_an_expert(tiny_backbone_dir) -> None:
    out = _run([str(EXAMPLES / "route_by_embedding.py"), "--backbone", str(tiny_backbone_dir)])
    routed = [line for line in out.splitlines() if " -> " in line]
    assert len(routed) == 3
    assert all(line.split(" -> ")[1].split(":")[0] in ("cook", "mathematician", "gardener") for line in routed)


HEAD_NODE = """
import sys
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
print(cluster.address, flush=True)
sys.stdin.read()
cluster.shutdown()
"""


def test_join_an_existing_cluster(tiny_backbone_dir) -> None:
    """A head node in its own process (stopped with its own processes only, never ``ray stop``), joined by address."""
    head = subprocess.Popen([sys.executable, "-c", HEAD_NODE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, **QUIET_ENV})
    try:
        address = head.stdout.readline().strip()
        assert address, "the head node did not start"
        out = _run([str(EXAMPLES / "join_cluster.py"), "--address", address, "--replicas", "2",
                    "--backbone", str(tiny_backbone_dir)])
    finally:
        head.stdin.close()
        head.wait(timeout=120)
    assert "joined a cluster with" in out
    assert out.count("replica pid") == 2
    assert sum(" -> " in line for line in out.splitlines()) == 3


def test_langgraph_relay_prints_the_main_jobs_table_for_every_mode(tiny_backbone_dir, tmp_path) -> None:
    out = _run([str(EXAMPLES / "langgraph_relay.py"), "--backbone", str(tiny_backbone_dir), "--questions", "2",
                "--max-new-tokens", "4", "--num-replicas", "1", "--num-cpus", "0", "--teacher", "none",
                "--out", str(tmp_path)])
    assert "K = 3 agents (2 hops)" in out and "task score 95% CI" in out
    assert all(f"{label}/text" in out for label in ("latent", "decode", "kv", "auto"))
    assert len(list(tmp_path.glob("run-*/results.json"))) == 1


def test_a2a_round_trip_between_two_processes(tiny_backbone_dir) -> None:
    out = _run([str(EXAMPLES / "a2a_round_trip.py"), "--backbone", str(tiny_backbone_dir), "--questions", "1",
                "--max-new-tokens", "4"])
    assert "answerer at http://127.0.0.1:" in out and "reads latent, kv, text" in out
    rows = [line.split()[1] for line in out.splitlines() if line.startswith("facts-0-0")]
    assert rows == ["latent", "kv", "auto:", "text"]
