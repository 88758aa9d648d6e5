"""Training the step head with the training recipe: step k's latent reconstructs gold step k.

A sample is (task, k). Its query is ``step_input(question, z_{k-1})``, its response the task's gold step k and its
target the teacher's embedding of that step. z_{k-1} comes from the head being trained: before each
micro-batch the chain is rolled out to step k-1 (eval mode, no autograd), so the head learns to continue from
its own latents and no gradient crosses steps. ``k`` runs to one step past the task's last (the head learns to
restate its last step: a finished chain stays put) and, with the curriculum, only up to the current stage:
stage s of ``max_hops`` (an equal share of the optimizer steps) draws k from 1..s.

The data folder (written by ``write_chain_data``) holds the training tasks, the teacher embeddings of every
gold step and the chain settings, so that every Ray Train worker reads the same.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from latentcomm.model.latent import Latent
from latentcomm.model.embedder import Part
from latentcomm.model.reading import Instruction, draw_instruction
from latentcomm.model.teachers import load_teacher
from latentcomm.training.config import TrainConfig
from latentcomm.training.train import TrainRecipe
from latentcomm.experiments.chain_tasks import ChainTask
from latentcomm.experiments.chaining import chain_steps, step_input

TASKS_FILE = "train_tasks.jsonl"
SETTINGS_FILE = "chain.json"


def targets_file(teacher: str) -> str:
    return f"targets-{Path(teacher).name}.npz"


def write_tasks(tasks: Sequence[ChainTask], path: Path) -> None:
    path.write_text("".join(json.dumps(asdict(t)) + "\n" for t in tasks))


def read_tasks(path: Path) -> list[ChainTask]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [ChainTask(**{**r, "steps": tuple(r["steps"]), "names": tuple(r["names"])}) for r in rows]


def write_chain_data(folder: Path, tasks: Sequence[ChainTask], teacher: str, *, max_hops: int, curriculum: bool,
                     backbone: str) -> Path:
    """Training tasks, teacher embeddings of their gold steps and the chain settings in ``folder`` (once)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_tasks(tasks, folder / TASKS_FILE)
    (folder / SETTINGS_FILE).write_text(json.dumps({"max_hops": max_hops, "curriculum": curriculum}) + "\n")
    path = folder / targets_file(teacher)
    if not path.is_file():
        texts = sorted({step for t in tasks for step in t.steps})
        bb = None
        if teacher == "self":
            from latentcomm.model.backbone import load_backbone

            bb = load_backbone(backbone)
        embeddings = load_teacher(teacher, backbone=bb).embed(texts, show_progress_bar=True)
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez(tmp, texts=np.array(texts), embeddings=embeddings.astype(np.float32))
        os.replace(tmp, path)
    return folder


@dataclass
class ChainData:
    """The training tasks and the teacher embedding of every gold step; draws (task, k) samples."""

    tasks: list[ChainTask]
    embeddings: np.ndarray
    index: dict[str, int]
    max_hops: int
    curriculum: bool

    @classmethod
    def load(cls, cfg: TrainConfig) -> "ChainData":
        folder = Path(cfg.run)
        settings = json.loads((folder / SETTINGS_FILE).read_text())
        stored = np.load(folder / targets_file(cfg.head.teacher))
        index = {str(text): i for i, text in enumerate(stored["texts"])}
        tasks = read_tasks(folder / TASKS_FILE)
        if not tasks:
            raise ValueError(f"no training tasks in {folder}")
        return cls(tasks, stored["embeddings"], index, settings["max_hops"], settings["curriculum"])

    def __len__(self) -> int:
        """Distinct samples: every task at steps 1..hops + 1 (capped at ``max_hops``)."""
        return sum(min(t.hops + 1, self.max_hops) for t in self.tasks)

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def steps_per_epoch(self, global_batch: int) -> int:
        steps = len(self) // global_batch
        if steps < 1:
            raise ValueError(f"{len(self)} chain samples cannot fill one global batch of {global_batch}")
        return steps

    def stage(self, step: int, total_steps: int) -> int:
        """The deepest chain step drawn at optimizer step ``step`` (the curriculum stage, or ``max_hops``)."""
        if not self.curriculum:
            return self.max_hops
        return min(self.max_hops, 1 + step * self.max_hops // max(total_steps, 1))

    def samples(self, cfg: TrainConfig, step: int, micro: int, rank: int, total_steps: int
                ) -> list[tuple[ChainTask, int]]:
        """The (task, k) pairs of one micro-batch: drawn from (seed, step, micro, rank) alone, so resumed runs
        and every worker count see the same ones."""
        generator = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 1_009 + micro) * 101 + rank)
        picks = torch.randint(len(self.tasks), (cfg.micro_batch,), generator=generator).tolist()
        depth = self.stage(step, total_steps)
        draws = torch.rand(cfg.micro_batch, generator=generator).tolist()
        out = []
        for i, u in zip(picks, draws):
            task = self.tasks[i]
            top = min(depth, task.hops + 1)
            out.append((task, 1 + int(u * top)))
        return out

    def targets(self, samples: Sequence[tuple[ChainTask, int]]) -> torch.Tensor:
        return torch.from_numpy(self.embeddings[[self.index[t.step(k)] for t, k in samples]])


class ChainRecipe(TrainRecipe):
    """The training recipe on chain samples: its loop, DeepSpeed engine, checkpoints and Ray Train launch."""

    data: ChainData

    def load_data(self) -> ChainData:  # type: ignore[override]
        return ChainData.load(self.cfg)

    def micro_batch(self, step: int, micro: int) -> tuple[list[list[Part]], list[str], torch.Tensor,
                                                          list[Instruction | None]]:
        cfg = self.cfg
        samples = self.data.samples(cfg, step, micro, self.rank, self.total_steps)
        previous = self.previous_latents(samples)
        queries = [step_input(task.question, z) for (task, _), z in zip(samples, previous)]
        instructions = [draw_instruction(f"{cfg.seed}:{step}:{micro}:{self.rank}:{i}", cfg.in_context_share)
                        for i in range(len(samples))]
        return queries, [t.step(k) for t, k in samples], self.data.targets(samples), instructions

    def objectives(self, step: int, micro: int) -> None:
        """Chain samples have one objective (the step's response): no split in the metrics."""
        return None

    @torch.no_grad()
    def previous_latents(self, samples: Sequence[tuple[ChainTask, int]]) -> list[Latent | None]:
        """z_{k-1} of each sample from the current head (None where k is 1), in eval mode."""
        depth = max(k for _, k in samples) - 1
        if depth == 0:
            return [None] * len(samples)
        self.model.eval()
        try:
            chain = list(chain_steps(self.model, [t.question for t, _ in samples], depth, batch_size=len(samples)))
        finally:
            self.model.train()
        return [None if k == 1 else chain[k - 2][i] for i, (_, k) in enumerate(samples)]
