"""Training recipe: only the special tokens and the two heads learn, with DeepSpeed, on one process or Ray Train.

Read it top to bottom like a torchtune recipe: ``setup`` builds the distributed context, the data, the model
and the DeepSpeed engine (restoring the latest checkpoint with ``--resume``); ``train`` runs the loop
(forward -> loss -> backward -> step -> log -> checkpoint) and finally saves the head and the loss curve.
``main`` launches it either as one plain process (``--workers 0``) or as a Ray Train ``TorchTrainer`` with
N CPU or GPU workers (``--workers N``, ``--address`` to join a running cluster); the loop is the same code.
"""
from __future__ import annotations

import json
import math
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from latentcomm.model.backbone import load_backbone
from latentcomm.cli.parser import parser
from latentcomm.model.embedder import GenerativeEmbedder
from latentcomm.model.reading import Instruction, draw_instruction
from latentcomm.training.checkpoint import load_latest_checkpoint, save_checkpoint
from latentcomm.training.config import TrainConfig
from latentcomm.training.grounding import grounded_query
from latentcomm.training.metrics import MetricsLog, plot_losses
from latentcomm.training.objectives import Objective, draw_objective, make_sample
from latentcomm.training.responses import RESPONSES_DIR, read_responses
from latentcomm.training.targets import load_targets


# ---- data ------------------------------------------------------------------------------------------------
BUCKET_WINDOW = 32
"""Length bucketing sorts windows of this many global batches by length, then shuffles the batches."""


@dataclass
class TrainingData:
    """Training triples (query, own response, teacher embedding) and the deterministic batch order.

    The order depends only on (seed, epoch), so a resumed run sees exactly the batches it would have seen;
    so does each sample's reading instruction (``in_context_share``) and grounding (``grounding_share``).
    """

    ids: list[str]
    queries: list[str]
    responses: list[str]
    targets: np.ndarray
    _order: tuple[tuple, list[int]] = field(default=((), []), init=False, repr=False)
    """(what the order depends on, the order): computed once per epoch."""

    @classmethod
    def load(cls, cfg: TrainConfig) -> "TrainingData":
        responses_dir = Path(cfg.run) / RESPONSES_DIR
        records = [r for r in read_responses(responses_dir) if r["split"] == "train"][:cfg.train_limit]
        if not records:
            raise ValueError(f"no training responses in {responses_dir}")
        ids = [r["id"] for r in records]
        targets = load_targets(responses_dir, cfg.head.teacher).rows(ids)
        return cls(ids, [r["query"] for r in records], [r["response"] for r in records], targets)

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def embed_dim(self) -> int:
        """Width of the teacher's embeddings (the head's ``embed_dim``)."""
        return int(self.targets.shape[1])

    def steps_per_epoch(self, global_batch: int) -> int:
        steps = len(self) // global_batch
        if steps < 1:
            raise ValueError(f"{len(self)} training queries cannot fill one global batch of {global_batch}")
        return steps

    def epoch_order(self, cfg: TrainConfig, epoch: int) -> list[int]:
        """Sample indices of one epoch, whole global batches only; bucketed by length when configured."""
        generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self), generator=generator).tolist()
        order = order[:self.steps_per_epoch(cfg.global_batch) * cfg.global_batch]
        if not cfg.bucket_by_length:
            return order
        size, window = cfg.global_batch, cfg.global_batch * BUCKET_WINDOW
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: len(self.queries[i]) + len(self.responses[i]))
            batches += [chunk[j:j + size] for j in range(0, len(chunk), size)]
        return [i for k in torch.randperm(len(batches), generator=generator).tolist() for i in batches[k]]

    def micro_batch(self, cfg: TrainConfig, step: int, micro: int, rank: int
                    ) -> tuple[list[str], list[str], torch.Tensor, list[Instruction | None]]:
        """The ``micro``-th micro-batch of ``rank`` in optimizer step ``step`` (0-based, across epochs):
        queries, responses, targets (a NaN row: no teacher target) and each sample's reading instruction (None:
        bare prefix). Each sample's objective is drawn from its key (``training.objectives``)."""
        idx, keys = self._keys(cfg, step, micro, rank)
        samples = [make_sample(key, grounded_query(key, self.queries[i], self.responses[i], cfg.grounding_share),
                               self.responses[i], draw_instruction(key, cfg.in_context_share),
                               restate_share=cfg.restate_share, qa_share=cfg.qa_share,
                               restate_text=" ".join(self.queries[i].split()[:cfg.restate_words]))
                   for key, i in zip(keys, idx)]
        targets = torch.from_numpy(self.targets[idx]).clone()
        targets[[not s.aligned for s in samples]] = float("nan")
        return ([s.query for s in samples], [s.response for s in samples], targets,
                [s.instruction for s in samples])

    def objectives(self, cfg: TrainConfig, step: int, micro: int, rank: int) -> list[Objective]:
        """The objective of each sample of that micro-batch (``micro_batch``'s order), drawn from its key alone."""
        return [draw_objective(key, cfg.restate_share, cfg.qa_share) for key in self._keys(cfg, step, micro, rank)[1]]

    def _keys(self, cfg: TrainConfig, step: int, micro: int, rank: int) -> tuple[list[int], list[str]]:
        """Row indices and sample keys of one micro-batch."""
        epoch, within = divmod(step, self.steps_per_epoch(cfg.global_batch))
        key = (epoch, cfg.seed, cfg.global_batch, cfg.bucket_by_length)
        if self._order[0] != key:
            self._order = (key, self.epoch_order(cfg, epoch))
        start = within * cfg.global_batch + (micro * cfg.world_size + rank) * cfg.micro_batch
        idx = self._order[1][start:start + cfg.micro_batch]
        return idx, [f"{cfg.seed}:{epoch}:{self.ids[i]}" for i in idx]


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float):
    """LR multiplier: linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


# ---- distributed set-up ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int, int]:
    """Join the process group (Ray Train's or the launcher's) or make a one-process group; (rank, world, local).

    A plain ``python`` launch has no RANK/WORLD_SIZE/..., and DeepSpeed would then try MPI discovery, so
    single-process defaults are set here. DeepSpeed's shared-memory CPU collective (compiled with a C++
    toolchain on first use, about a minute) is switched off: gloo is plenty for head-sized gradients.
    """
    import deepspeed
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():
        defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(_free_port())}
        for key, value in defaults.items():
            os.environ.setdefault(key, value)
    backend = dist.get_backend() if dist.is_initialized() else ("nccl" if torch.cuda.is_available() else "gloo")
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if torch.cuda.is_available() and (cfg.use_gpu or cfg.workers == 0):
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# ---- the recipe ------------------------------------------------------------------------------------------
class TrainRecipe:
    """``setup()`` then ``train()``; every rank runs the same code, rank 0 logs and writes the outputs.

    A recipe for other data (an experiment) subclasses it and overrides ``load_data`` (anything with
    ``len``, ``embed_dim`` and ``steps_per_epoch``) and ``micro_batch``; the loop, DeepSpeed, checkpoints,
    resume and Ray Train stay the same.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)

    def setup(self) -> None:
        import deepspeed

        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.rank, world, local_rank = init_distributed()
        if world != cfg.world_size:
            raise RuntimeError(f"the process group has {world} ranks but the config expects {cfg.world_size} "
                               "(set --workers to match the launcher)")
        self.device = _device(cfg, local_rank)

        self.data = self.load_data()
        self.steps_per_epoch = self.data.steps_per_epoch(cfg.global_batch)
        self.total_steps = min(cfg.epochs * self.steps_per_epoch, cfg.max_steps or math.inf)

        backbone = load_backbone(cfg.backbone, device=self.device, dtype=cfg.torch_weights_dtype)
        if cfg.gradient_checkpointing:
            backbone.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            backbone.model.train()  # HF checkpoints only in train mode; Llama-style backbones have no dropout
        self.model = self.initial_model(backbone)

        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(cfg.warmup_steps, self.total_steps, cfg.min_lr_ratio))
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=self.model, model_parameters=params, optimizer=optimizer, lr_scheduler=schedule,
            config=cfg.deepspeed_config())

        self.checkpoints = self.out / "checkpoints"
        self.metrics = MetricsLog(self.out / "metrics.jsonl")
        self.start_step = load_latest_checkpoint(self.engine, self.checkpoints) if cfg.resume else 0
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            cfg.save(self.out / "train_config.json")
            self.metrics.truncate_after(self.start_step)

    def initial_model(self, backbone) -> GenerativeEmbedder:
        """A fresh head of the configured shape, or the saved ``init_head``: refused unless its shape is this run's,
        except that a head without encoder LoRA may start a run that adds it (the adapters start at zero, so the
        first step's latents are the saved head's)."""
        config = self.cfg.head_config(self.data.embed_dim)
        if self.cfg.init_head is None:
            return GenerativeEmbedder(backbone, config, seed=self.cfg.seed)
        saved = GenerativeEmbedder.from_pretrained(self.cfg.init_head, backbone=backbone)
        theirs, ours = saved.config.to_dict(), config.to_dict()
        differ = {k: (v, ours[k]) for k, v in theirs.items() if v != ours[k]}
        if not differ:
            return saved
        if set(differ) != {"encoder_lora_rank"} or saved.config.encoder_lora_rank:
            raise ValueError(f"init_head {self.cfg.init_head} has another head shape than this run "
                             f"(field: head's value, run's value): {differ}")
        model = GenerativeEmbedder(backbone, config, seed=self.cfg.seed)
        missing, unexpected = model.head.load_state_dict(saved.head.state_dict(), strict=False)
        if unexpected or any(not key.startswith("encoder_lora.") for key in missing):
            raise ValueError(f"init_head {self.cfg.init_head}: its tensors do not fit this run's head "
                             f"(missing {missing}, unexpected {unexpected})")
        return model

    def load_data(self) -> TrainingData:
        """The training samples: the run's queries, own responses and teacher targets."""
        return TrainingData.load(self.cfg)

    def micro_batch(self, step: int, micro: int) -> tuple[list, list[str], torch.Tensor, list[Instruction | None]]:
        """Queries (strings or lists of parts), responses, targets and reading instructions of one micro-batch."""
        return self.data.micro_batch(self.cfg, step, micro, self.rank)

    def objectives(self, step: int, micro: int) -> list[Objective] | None:
        """Each sample's objective in that micro-batch (None: the recipe has none; metrics then log no split)."""
        return self.data.objectives(self.cfg, step, micro, self.rank)

    def _autocast(self):
        if self.cfg.head_dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def train(self) -> dict[str, Any]:
        cfg, engine = self.cfg, self.engine
        engine.train()
        steps = range(self.start_step, self.total_steps)
        bar = tqdm(steps, initial=self.start_step, total=self.total_steps, desc="train", unit="step",
                   disable=self.rank != 0)
        done_here = 0
        for step in bar:
            started = time.perf_counter()
            sums = torch.zeros(3)
            by_objective: dict[str, list[float]] = {}
            for micro in range(cfg.grad_accum):
                queries, responses, targets, instructions = self.micro_batch(step, micro)
                objectives = self.objectives(step, micro)
                with self._autocast():
                    out = engine(queries, responses, targets.to(self.device), recon_weight=cfg.recon_weight,
                                 align_weight=cfg.align_weight, align_loss=cfg.align_loss,
                                 instructions=instructions, reference=not cfg.split_prefix)
                engine.backward(out.loss)
                engine.step()
                sums += torch.tensor([float(out.loss.detach()), out.recon, out.align])
                for objective, row in zip(objectives or [], out.recon_rows):
                    by_objective.setdefault(objective, []).append(row)
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(sums)
                sums /= dist.get_world_size()
            loss, recon, align = (sums / cfg.grad_accum).tolist()
            if not math.isfinite(loss):
                raise FloatingPointError(f"step {step + 1}: the loss is {loss} (recon {recon}, align {align}); "
                                         "stopped before saving a non-finite head: lower --lr or check the data")
            seconds = time.perf_counter() - started
            if self.rank == 0:
                self.metrics.append({"step": step + 1, "epoch": step // self.steps_per_epoch, "loss": loss,
                                     "recon": recon, "align": align,
                                     **{f"recon_{k}": sum(v) / len(v) for k, v in sorted(by_objective.items())},
                                     "lr": self.scheduler.get_last_lr()[0],
                                     "samples_per_s": cfg.global_batch / seconds})
                bar.set_postfix(loss=f"{loss:.3f}", recon=f"{recon:.3f}", align=f"{align:.5f}")
            done_here += 1
            finished = step + 1 == self.total_steps
            if (step + 1) % cfg.checkpoint_every == 0 or finished or done_here == cfg.stop_after:
                save_checkpoint(engine, self.checkpoints, step + 1, keep=cfg.keep_checkpoints)
            if done_here == cfg.stop_after and not finished:
                bar.close()
                return {"stopped_at": step + 1, "total_steps": self.total_steps}
        bar.close()
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Solve MLP_align in closed form (``align_fit_rows``), save the head (gathered from ZeRO-3 partitions) and the
        loss curve; rank 0 does the work and writes."""
        import deepspeed

        cfg = self.cfg
        params = list(self.model.parameters())
        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=0) if cfg.zero_stage == 3 else nullcontext()
        summary: dict[str, Any] = {"total_steps": self.total_steps, "train_queries": len(self.data),
                                   "head": str(self.out / "head")}
        with gather:
            if self.rank == 0:
                self.model.eval()
                if cfg.align_fit_rows:
                    rows = slice(0, cfg.align_fit_rows)
                    summary["align_fit"] = self.model.fit_alignment(self.data.queries[rows], self.data.targets[rows],
                                                                    show_progress_bar=True)
                self.model.save_pretrained(self.out / "head")
        if self.rank == 0:
            records = self.metrics.read()
            if records:
                plot_losses(records, self.out / "loss.png")
                summary["final"] = records[-1]
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if dist.is_initialized():
            dist.barrier()
        return summary


RecipeFactory = Callable[[TrainConfig], TrainRecipe]
"""What builds the recipe from its config: ``TrainRecipe`` itself, or a picklable callable (a subclass, a
``functools.partial``) for an experiment's recipe."""


def run_training(cfg: TrainConfig, recipe: RecipeFactory = TrainRecipe) -> dict[str, Any]:
    """Set up and train in this process (one rank of whatever group the launcher made, or a group of one)."""
    trainer = recipe(cfg)
    trainer.setup()
    return trainer.train()


# ---- launchers -------------------------------------------------------------------------------------------
def _ray_train_worker(loop_config: dict[str, Any]) -> None:
    run_training(TrainConfig.from_dict(loop_config["config"]), loop_config["recipe"])


def train_with_ray(cfg: TrainConfig, recipe: RecipeFactory = TrainRecipe) -> dict[str, Any]:
    """Run the recipe as a Ray Train ``TorchTrainer`` with ``cfg.workers`` CPU or GPU workers."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from latentcomm.runtime.cluster import init_ray

    out = Path(cfg.out).resolve()
    cfg = replace(cfg, run=str(Path(cfg.run).resolve()), out=str(out))
    init_ray(cfg.address, num_cpus=None if cfg.address else max(1, math.ceil(cfg.workers * cfg.cpus_per_worker)))
    trainer = TorchTrainer(
        _ray_train_worker,
        train_loop_config={"config": cfg.to_dict(), "recipe": recipe},
        torch_config=TorchConfig(backend="nccl" if cfg.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(name="ray-train", storage_path=str(out / "ray")),
    )
    trainer.fit()
    summary = out / "summary.json"
    return json.loads(summary.read_text()) if summary.is_file() else {"stopped": True}


def main(argv: list[str] | None = None) -> int:
    ap = parser("train", "Train a head (special tokens + MLP_recon + MLP_align) on a run's responses and targets.")
    TrainConfig.add_arguments(ap)
    cfg = TrainConfig.from_args(ap.parse_args(argv))
    cfg.check_inputs()
    summary = train_with_ray(cfg) if cfg.workers >= 1 else run_training(cfg)
    print(json.dumps(summary, indent=2))
    return 0
