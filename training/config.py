"""TrainConfig: every knob of a training run in one dataclass — the head it trains is a ``HeadConfig`` inside it —
mirrored one-to-one by ``latentcomm train`` flags."""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Collection, Literal, Mapping, get_args

from latentcomm.cli.parser import add_config_arguments, config_from_args, existing_dir, output_dir
from latentcomm.model.backbone import DEFAULT_BACKBONE, WeightsDtype
from latentcomm.model.config import HeadConfig

if TYPE_CHECKING:
    import torch

DEFAULT_ALIGN_FIT = 4096
"""Rows of the closed-form align fit when ``TrainConfig.align_fit`` is None and the fit applies."""
TRAIN_HEAD = HeadConfig(max_query_tokens=256, max_response_tokens=96)
"""The head a run trains unless flags say otherwise: ``HeadConfig``'s defaults with shorter queries and responses
(a step's time grows with both)."""

HeadDtype = Literal["float32", "bfloat16"]


@dataclass(frozen=True)
class TrainConfig:
    """A training run: data, head shape, DeepSpeed settings, schedule, losses and launch."""

    run: str = ""
    """Run directory holding queries.jsonl and responses/ (with the teacher targets)."""
    out: str = ""
    """Output directory: checkpoints/, metrics.jsonl, loss.png, head/, train_config.json."""
    backbone: str = DEFAULT_BACKBONE
    weights_dtype: WeightsDtype | None = None
    """The frozen backbone's weights dtype; None: the device's fast one (``latentcomm info`` says which)."""
    head: HeadConfig = TRAIN_HEAD
    """The head this run trains; its ``teacher`` names the targets to align to (a teacher name or a
    sentence-transformers folder) and ``embed_dim`` is left None: it is the teacher's width."""
    train_limit: int | None = None
    """Use only the first N training queries (in the run's shuffled order)."""
    # DeepSpeed
    zero_stage: int = 0
    head_dtype: HeadDtype = "float32"
    """The trainable head's dtype in DeepSpeed: bfloat16 trains it under bf16 autocast with fp32 master weights."""
    micro_batch: int = 8
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    # optimisation
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    """Cosine decay from ``lr`` to ``lr * min_lr_ratio`` at the last step."""
    epochs: int = 1
    max_steps: int | None = None
    """Stop after this many optimizer steps (overrides ``epochs`` when smaller)."""
    recon_weight: float = 1.0
    align_weight: float = 1.0
    align_loss: str = "mse"
    in_context_share: float = 0.0
    """Share of samples whose latent is reconstructed from inside a user turn with a reading instruction
    (``latentcomm.model.reading``); the rest read it as a bare soft prompt."""
    grounding_share: float = 0.0
    """Share of samples whose query holds its own response as context (``training.grounding``), the target
    unchanged: latents that carry words their input gives them."""
    restate_share: float = 0.0
    """Share of samples whose latent is read with a request to restate the query, its own text the answer
    (``training.objectives``: autoencoding)."""
    qa_share: float = 0.0
    """Share of samples replaced by a note (``training.notes``) whose latent is read with a question about it."""
    restate_words: int = 32
    """A restated query is cut to its first this many words (input and answer alike)."""
    init_head: str | None = None
    """Start the special tokens and heads from this saved head (same backbone and head shape) instead of fresh."""
    align_fit: int | None = None
    """After training, solve MLP_align in closed form on up to this many training queries (0: keep the align
    head SGD left). The closed form minimises the squared error, so it applies to a linear align head trained
    with the ``mse`` loss only; None: ``DEFAULT_ALIGN_FIT`` rows there, else 0 (see ``align_fit_rows``)."""
    seed: int = 0
    # speed
    split_prefix: bool = True
    """Run the query without autograd and hand its KV cache to the special tokens (off: the one-pass step)."""
    bucket_by_length: bool = True
    """Batch samples of similar length together (less padding); the order still depends only on seed and epoch."""
    # bookkeeping
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    resume: bool = False
    stop_after: int | None = None
    """Exit (as if killed) after this many steps of this invocation, after checkpointing: for resume tests."""
    # launch
    workers: int = 0
    """0 = one plain process; N >= 1 = Ray Train TorchTrainer with N workers."""
    use_gpu: bool = False
    cpus_per_worker: float = 1
    threads: int | None = None
    address: str | None = None
    """Join this Ray cluster (e.g. 'auto' or 'ray://head:10001') instead of starting a local one."""

    def __post_init__(self) -> None:
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"zero_stage must be 0..3, got {self.zero_stage}")
        if self.head_dtype not in get_args(HeadDtype):
            raise ValueError(f"head_dtype must be one of {get_args(HeadDtype)}, got {self.head_dtype!r}")
        if self.weights_dtype is not None and self.weights_dtype not in get_args(WeightsDtype):
            raise ValueError(f"weights_dtype must be one of {get_args(WeightsDtype)}, got {self.weights_dtype!r}")
        if not isinstance(self.head, HeadConfig):
            raise ValueError(f"head must be a HeadConfig, got {type(self.head).__name__}")
        if self.head.embed_dim is not None:
            raise ValueError(f"head.embed_dim is the teacher's width, set by training; got {self.head.embed_dim}")
        for name in ("micro_batch", "grad_accum", "epochs", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0) or self.warmup_steps < 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"need a finite lr > 0 (got {self.lr}), warmup_steps >= 0 and 0 <= min_lr_ratio <= 1")
        for name in ("recon_weight", "align_weight", "weight_decay"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.recon_weight == 0 and self.align_weight == 0:
            raise ValueError("recon_weight and align_weight are both 0: nothing would train")
        if not 0 <= self.in_context_share <= 1:
            raise ValueError(f"in_context_share must be in [0, 1], got {self.in_context_share}")
        if not 0 <= self.grounding_share <= 1:
            raise ValueError(f"grounding_share must be in [0, 1], got {self.grounding_share}")
        if not (0 <= self.restate_share and 0 <= self.qa_share and self.restate_share + self.qa_share <= 1):
            raise ValueError(f"restate_share and qa_share must be >= 0 and sum to at most 1, got "
                             f"{self.restate_share} and {self.qa_share}")
        if self.restate_words < 1:
            raise ValueError(f"restate_words must be >= 1, got {self.restate_words}")
        if self.align_fit is not None and (self.align_fit < 0 or (self.align_fit and not self._align_fit_applies)):
            raise ValueError(f"align_fit must be >= 0, and 0 unless align_head is 'linear' and align_loss 'mse' "
                             f"(got {self.align_fit})")
        if self.train_limit is not None and self.train_limit < 1:
            raise ValueError(f"train_limit must be >= 1, got {self.train_limit}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        for name in ("max_steps", "stop_after", "threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.cpus_per_worker) and self.cpus_per_worker >= 0):
            raise ValueError(f"cpus_per_worker must be a finite number >= 0, got {self.cpus_per_worker}")

    def check_inputs(self) -> None:
        """Refuse, before any work, a run without finished responses or without this teacher's targets, or an
        ``init_head`` that is no head folder."""
        from latentcomm.training.responses import RESPONSES_DIR, read_responses
        from latentcomm.training.targets import targets_path

        responses = Path(self.run) / RESPONSES_DIR
        read_responses(responses)
        if self.init_head is not None and not (Path(self.init_head) / "config.json").is_file():
            raise FileNotFoundError(f"no head at {self.init_head} (expected config.json and head.safetensors)")
        teacher = self.head.teacher
        if not targets_path(responses, teacher).is_file():
            raise FileNotFoundError(f"no {teacher} targets in {responses} (run 'latentcomm targets --run "
                                    f"{self.run} --teacher {teacher}')")

    def head_config(self, embed_dim: int) -> HeadConfig:
        """The head this run trains, ``embed_dim`` wide (the teacher's width), recording the teacher's name."""
        return replace(self.head, embed_dim=embed_dim, teacher=Path(self.head.teacher).name)

    @property
    def torch_weights_dtype(self) -> "torch.dtype | None":
        """``weights_dtype`` as a torch dtype (None: ``load_backbone`` picks the device's fast one)."""
        import torch

        return getattr(torch, self.weights_dtype) if self.weights_dtype else None

    @property
    def _align_fit_applies(self) -> bool:
        return self.head.align_head == "linear" and self.align_loss == "mse"

    @property
    def align_fit_rows(self) -> int:
        """Training queries the closed-form align fit uses (``align_fit``, or its default where it applies)."""
        if self.align_fit is not None:
            return self.align_fit
        return DEFAULT_ALIGN_FIT if self._align_fit_applies else 0

    @property
    def world_size(self) -> int:
        return max(self.workers, 1)

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    def deepspeed_config(self) -> dict[str, Any]:
        """The DeepSpeed JSON config for these settings (the optimizer and scheduler are passed as objects)."""
        return {
            "train_micro_batch_size_per_gpu": self.micro_batch,
            "gradient_accumulation_steps": self.grad_accum,
            "train_batch_size": self.global_batch,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": self.head_dtype == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "gradient_clipping": 1.0,
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """The config of ``to_dict``'s form, or of the flat form that runs saved before the head was a ``HeadConfig``
        (``current_form``)."""
        data = current_form(data)
        if "head" in data:
            data["head"] = HeadConfig.from_dict(data["head"])
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    # ---- command line: one flag per field ----------------------------------------------------------------
    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser, *, defaults: Mapping[str, Any] | None = None,
                      exclude: Collection[str] = (), helps: Mapping[str, str] | None = None) -> None:
        """``--field-name`` for every field (booleans as ``--flag/--no-flag``), defaults from the dataclass.

        A command that runs training inside something larger (an experiment) passes its own ``defaults``,
        leaves out the fields it sets itself (``exclude``) and may say what a flag means there (``helps``).
        """
        add_config_arguments(ap, cls, helps={**_HELP, **(helps or {})}, defaults=defaults,
                             exclude=(*exclude, "embed_dim"), flag_types=_FLAG_TYPES, required=("run", "out"))

    @classmethod
    def from_args(cls, args: argparse.Namespace, **values: Any) -> "TrainConfig":
        """The config of the parsed flags (``values`` gives the fields without a flag); a refused value raises
        ``UsageError`` naming its flag."""
        return config_from_args(cls, args, **values)


_HELP = {
    "run": "run directory with queries.jsonl and responses/ (from 'latentcomm generate' and 'targets')",
    "out": "output directory: checkpoints/, metrics.jsonl, loss.png, head/",
    "backbone": "frozen backbone: the default alias, a Hugging Face folder/id or a .gguf file",
    "weights_dtype": "backbone weights dtype (default: the device's fast one)",
    "teacher": "targets to align to (a teacher name from 'latentcomm targets')",
    "chat_template": "wrap each query as a user turn of the backbone's chat template",
    "train_limit": "use only the first N training queries",
    "zero_stage": "DeepSpeed ZeRO stage (0-3)",
    "head_dtype": "dtype of the trainable head in DeepSpeed (bfloat16: bf16 autocast, fp32 master weights)",
    "micro_batch": "queries per worker per forward pass",
    "grad_accum": "micro-batches accumulated per optimizer step",
    "gradient_checkpointing": "recompute backbone activations in backward (for big backbones)",
    "lr": "peak learning rate (AdamW)",
    "warmup_steps": "linear warm-up steps",
    "min_lr_ratio": "cosine decay ends at lr * this",
    "max_steps": "stop after this many optimizer steps (the schedule spans them)",
    "align_loss": "mse (the paper) or cosine",
    "state_layer": "compression states from the last layer (-1, the paper) or after decoder layer k",
    "align_fit": "after training, solve MLP_align in closed form on up to N training queries (0: off; default: "
                 "4096 for a linear align head trained with the mse loss, else off)",
    "encoder_lora_rank": "rank of encoder-side LoRA adapters on the backbone's q/v projections, on only while "
                         "compressing (0 = none)",
    "in_context_share": "share of samples reconstructed from the latent inside a user turn with a reading instruction",
    "grounding_share": "share of samples whose query holds its own response as context (the target unchanged)",
    "restate_share": "share of samples whose latent is read with a request to restate the query (autoencoding)",
    "qa_share": "share of samples replaced by a made-up note whose latent is read with a question about it",
    "restate_words": "a restated query is cut to its first N words",
    "init_head": "start from this saved head (same backbone and head shape) instead of a fresh one",
    "split_prefix": "query without autograd, its KV cache handed to the special tokens (--no-split-prefix: one pass)",
    "bucket_by_length": "batch samples of similar length together (less padding)",
    "checkpoint_every": "save a DeepSpeed checkpoint every K optimizer steps (and at the end)",
    "keep_checkpoints": "newest checkpoints kept on disk",
    "resume": "continue from the newest checkpoint in OUT/checkpoints (same data order and optimizer state)",
    "stop_after": "leave after this many steps of this invocation, checkpointed (simulates a kill; for tests)",
    "workers": "0 = one plain process; N = Ray Train TorchTrainer with N workers",
    "use_gpu": "Ray Train workers take one GPU each",
    "cpus_per_worker": "CPUs reserved per Ray Train worker",
    "threads": "torch CPU threads per process",
    "address": "join this Ray cluster (e.g. auto) instead of starting a local one",
}


_FLAG_TYPES = {"run": existing_dir, "out": output_dir}
"""Flags checked as they are parsed beyond their type (the ranges of every field are ``__post_init__``'s)."""


_HEAD_FIELDS = frozenset(f.name for f in dataclasses.fields(HeadConfig))
_RENAMED = {"backbone_dtype": "weights_dtype", "precision": "head_dtype"}
_OLD_DTYPES = {"auto": None, "fp32": "float32", "bf16": "bfloat16"}


def current_form(data: Mapping[str, Any]) -> dict[str, Any]:
    """A saved ``TrainConfig`` dict in today's form: the flat head fields of older runs (``num_compression``,
    ``max_query_tokens``, ``teacher``, ...) gathered into ``head`` over ``TRAIN_HEAD``, and ``backbone_dtype`` /
    ``precision`` (auto, fp32, bf16) as ``weights_dtype`` / ``head_dtype`` (None, float32, bfloat16)."""
    data = dict(data)
    for old, new in _RENAMED.items():
        if old in data:
            value = data.pop(old)
            data[new] = _OLD_DTYPES.get(value, value) if isinstance(value, str) else value
    flat = {name: data.pop(name) for name in _HEAD_FIELDS & set(data)}
    if flat:
        data["head"] = {**TRAIN_HEAD.to_dict(), **data.get("head", {}), **flat}
    return data
