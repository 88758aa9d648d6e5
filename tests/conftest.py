"""Shared fixtures: the tiny random backbone (in memory and as a folder) and a quiet local Ray cluster."""
from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch

# Before any test module imports them: matplotlib's font cache and mteb's result folder go to a scratch
# folder, not $HOME (mteb creates its folder at import time).
_SCRATCH = tempfile.mkdtemp(prefix="latentcomm-tests-")
os.environ.setdefault("MPLCONFIGDIR", os.path.join(_SCRATCH, "matplotlib"))
os.environ.setdefault("MTEB_CACHE", os.path.join(_SCRATCH, "mteb"))

from latentcomm import GenerativeEmbedder, HeadConfig  # noqa: E402
from latentcomm.testing import save_tiny_backbone, tiny_backbone  # noqa: E402

TINY_HEAD = HeadConfig(num_thought=2, num_compression=3, embed_dim=16, max_query_tokens=64, max_response_tokens=32)
OTHER_HEAD = HeadConfig(num_thought=1, num_compression=2, embed_dim=16, max_query_tokens=64, max_response_tokens=32)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for servers the tests start)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keep caches out of $HOME unless the run names one (the slow tests reuse a converted backbone)."""
    os.environ.setdefault("LATENTCOMM_HOME", str(tmp_path_factory.mktemp("latentcomm_home")))
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny():
    return tiny_backbone()


@pytest.fixture()
def tiny_model(tiny) -> GenerativeEmbedder:
    return GenerativeEmbedder(tiny, TINY_HEAD, seed=0)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory):
    """The tiny backbone saved as a Hugging Face folder (for other processes: Ray actors, DeepSpeed workers)."""
    return save_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"))


@pytest.fixture(scope="session")
def ray_local():
    """A quiet local Ray cluster shared by the whole session (2 CPUs, small object store)."""
    ray = pytest.importorskip("ray")
    from latentcomm.runtime.cluster import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def replicas(tiny_backbone_dir, tmp_path_factory):
    """Three in-process replicas (4 new tokens): "same" (the tiny backbone and head), "head" (the same backbone, another
    head) and "backbone" (another tiny backbone): the sides of links that choose their kind."""
    from latentcomm.engine.replica import Replica, ReplicaConfig

    other = save_tiny_backbone(tmp_path_factory.mktemp("other_backbone"), seed=1)
    options = dict(weights_dtype="float32", max_new_tokens=4)
    return {"same": Replica(ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, **options)),
            "head": Replica(ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=OTHER_HEAD, **options)),
            "backbone": Replica(ReplicaConfig(backbone=str(other), head_config=TINY_HEAD, **options))}
