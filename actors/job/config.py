"""``JobConfig``: everything one ``latentcomm run`` does, and its flags (one per field, the default stated once)."""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import Literal

from latentcomm.actors.job.modes import BASELINE, DEFAULT_MODES, MODES, Mode, modes_to_run
from latentcomm.actors.tasks import TASKS, TaskName, get_task
from latentcomm.cli.parser import (add_config_arguments, backbone_source, config_from_args, count, head_folder,
                                   output_dir, parser, teacher_source)
from latentcomm.engine.replica import ReplicaConfig
from latentcomm.runtime.pool import PoolConfig

DESCRIPTION = "a chain of K agents answers questions in every mode (latents, KV caches, text), side by side"
MAX_AGENTS = 6


@dataclass(frozen=True)
class JobConfig:
    """Everything one ``latentcomm run`` does; written into results.json."""

    task: TaskName = "facts"
    questions: int = 8
    offset: int = 0
    agents: int = 3
    """Agents in the chain (2..6): K - 1 hops."""
    sweep: tuple[int, ...] = ()
    """Chain lengths to run one after the other (e.g. 2 3 4 5) instead of ``agents``."""
    modes: tuple[str, ...] = DEFAULT_MODES
    """The modes to run (names of ``MODES``); the text baseline runs whatever is chosen."""
    refine_steps: tuple[int, ...] = (5, 20)
    """The ``refine`` modes: one per value, the first agent's latent fitted that many steps to its text."""
    optimise_steps: int = 100
    """The most steps of the ``optimised`` mode (it stops where the receiver restates the text)."""
    concurrency: int = 2
    """Questions in flight at once, in every mode."""
    wire_dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float16"
    teacher: str = "minilm"
    """Sentence-transformers teacher for the agreement metrics ('minilm', a folder, or 'none' to skip)."""
    sign: bool = False
    """Sign every message with a random HMAC key (and verify it on receipt)."""
    address: str | None = None
    out: str = "runs"
    replica: ReplicaConfig = field(default_factory=lambda: ReplicaConfig(num_threads=1))
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(num_replicas=2, max_in_flight=4))

    def __post_init__(self) -> None:
        for k in (self.agents, *self.sweep):
            if not 2 <= k <= MAX_AGENTS:
                raise ValueError(f"agents must be in 2..{MAX_AGENTS}, got {k} (agents or sweep)")
        if self.questions < 1 or self.offset < 0 or self.concurrency < 1:
            raise ValueError("questions and concurrency must be >= 1 and offset >= 0")
        if not self.modes:
            raise ValueError("modes: name at least one")
        if any(k < 1 for k in self.refine_steps) or self.optimise_steps < 1:
            raise ValueError("refine_steps and optimise_steps must be >= 1")
        modes_to_run(self.modes)

    @property
    def chain_lengths(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.sweep)) if self.sweep else (self.agents,)

    @property
    def run_modes(self) -> tuple[Mode, ...]:
        """The modes that run, in table order: those chosen and the text baseline."""
        return modes_to_run(self.modes, refine_steps=tuple(dict.fromkeys(self.refine_steps)),
                            optimise_steps=self.optimise_steps)


HELPS = {"task": f"what the chain answers: {', '.join(TASKS)}", "questions": "how many questions",
         "offset": "skip this many questions first", "agents": f"agents in the chain (2..{MAX_AGENTS})",
         "sweep": "run these chain lengths (e.g. 2 3 4 5) instead of --agents",
         "modes": f"the modes to run ({', '.join(MODES)}); '{BASELINE}' always runs too (every ratio is against "
                  "it), and so does the floor (the last agent without any message). "
                  + "; ".join(f"{m.name}: {m.help}" for m in MODES.values()),
         "refine_steps": "the refine modes: one per value, the first agent's latent fitted that many steps to its text",
         "optimise_steps": "the most steps of the optimised mode (it stops once the receiver restates the text)",
         "concurrency": "questions in flight",
         "wire_dtype": "dtype of the latents on the wire",
         "weights_dtype": "backbone dtype (default: the device's fast one)",
         "teacher": "'minilm', a sentence-transformers folder, or 'none' (no agreement metrics)",
         "sign": "HMAC-sign every message with a random key", "backbone": "alias, HF folder or .gguf",
         "head": "a saved head folder (default: the shipped head)", "max_new_tokens": "generation budget per message",
         "num_replicas": "replica actors (one model each)", "num_threads": "torch threads per replica",
         "address": "join an existing Ray cluster (e.g. 'auto' or ray://host:10001)",
         "out": "parent folder of run-<timestamp>/",
         "max_payload_bytes": "largest message payload agents and replicas unpack (raise it for the KV caches of big "
                              "backbones)",
         "max_elements": "most values in one message agents and replicas unpack"}


def mode_name(text: str) -> str:
    """Flag type: the name of a mode in ``MODES``."""
    if text not in MODES:
        raise argparse.ArgumentTypeError(f"unknown mode {text!r}; choose from {', '.join(MODES)}")
    return text


def parse_config(argv: list[str] | None) -> JobConfig:
    """The ``latentcomm run`` flags (one per field of JobConfig, its ReplicaConfig and PoolConfig) as a checked
    ``JobConfig``."""
    p = parser("run", DESCRIPTION)
    add_config_arguments(p, JobConfig, helps=HELPS, exclude=("head_config",),
                         flag_types={"questions": count(1), "offset": count(0), "agents": count(2),
                                     "sweep": count(2), "modes": mode_name,
                                     "refine_steps": count(1), "optimise_steps": count(1), "concurrency": count(1),
                                     "backbone": backbone_source, "head": head_folder,
                                     "teacher": teacher_source("minilm", "none"), "out": output_dir,
                                     "num_threads": count(1), "max_new_tokens": count(1), "num_replicas": count(1)})
    args = p.parse_args(argv)
    config = config_from_args(JobConfig, args)
    if not config.address and config.pool.num_replicas * config.pool.num_cpus > (os.cpu_count() or 1):
        p.error(f"{config.pool.num_replicas} replicas x {config.pool.num_cpus} CPUs do not fit on {os.cpu_count()} "
                "local CPUs; lower --num-replicas or --num-cpus, or join a cluster with --address")
    try:
        get_task(config.task).load(config.questions, config.offset)  # before Ray starts: e.g. an offset past the end
    except ValueError as err:
        p.error(f"argument --offset: {err}")
    return config
