"""Optimised latents: message vectors fitted by gradient descent so that the frozen receiver, reading them inside a
user turn, restates what the sender read.

The bound on what a latent can carry, and sender-side refinement of the head's latent (``compress(...,
refine_steps=k)``). Only the n message vectors of each input change: the backbone is frozen and the head is not
touched, so the result is an ordinary ``Latent`` with the head's fingerprint and backbone id that every reader, the
wire format and the agents take unchanged. Each step is one forward and backward pass of the frozen backbone over
the reading prompt and the restatement (the template and the text before the vectors come from a KV cache).
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from tqdm.auto import tqdm

from latentcomm.model.heads import embedding_statistics
from latentcomm.model.latent import Latent
from latentcomm.model.losses import row_losses
from latentcomm.model.prompt import as_items
from latentcomm.model.reading import Instruction

if TYPE_CHECKING:
    from latentcomm.model.embedder import GenerativeEmbedder
    from latentcomm.model.prompt import Item

RESTATE: Instruction = ("Here is a message from a colleague:\n", "\nRepeat the message word for word.")
"""The reading objective: the receiver reads the vectors inside a user turn and restates the message."""
Init = Literal["head", "random"]


@dataclass(frozen=True)
class OptimiseConfig:
    """How message vectors are fitted: Adam on the vectors alone, one reading objective per step in turn."""

    steps: int = 60
    """The most steps per input (an input stops early once its loss is below ``stop_loss``)."""
    lr: float = 0.05
    stop_loss: float | None = 0.05
    """Mean negative log-likelihood per restated token (nats) under which an input is done; None: run every step."""
    instructions: tuple[Instruction, ...] = (RESTATE,)
    """The reading prompts, used in turn (several make vectors that are read under other instructions too)."""
    init: Init = "head"
    """Start from the head's latent of the input (refinement) or from random vectors of token-embedding scale."""
    seed: int = 0
    max_target_tokens: int = 128
    """Restatements longer than this are cut (the input's first tokens are the ones fitted)."""

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.stop_loss is not None and not (math.isfinite(self.stop_loss) and self.stop_loss >= 0):
            raise ValueError(f"stop_loss must be None or a finite number >= 0, got {self.stop_loss}")
        if not self.instructions or any(not (isinstance(i, tuple) and len(i) == 2 and all(isinstance(t, str) for t in i))
                                        for i in self.instructions):
            raise ValueError("instructions must be (text before, text after) pairs, at least one")
        if self.init not in ("head", "random"):
            raise ValueError(f"init must be 'head' or 'random', got {self.init!r}")
        if self.max_target_tokens < 1:
            raise ValueError(f"max_target_tokens must be >= 1, got {self.max_target_tokens}")


@dataclass
class Optimised:
    """The fitted latent, and how the fit went for each input."""

    latent: Latent
    losses: list[list[float]]
    """Per input, its loss before each step it took (nats per restated token)."""
    steps: list[int]
    """Per input, the steps it took."""
    seconds: float = 0.0
    final_losses: list[float] = field(default_factory=list)
    """Per input, its loss after its last step."""


def restatement_targets(items: Sequence["Item"]) -> list[str]:
    """What each input's receiver should restate: its text parts, in order (a latent part is not text to restate)."""
    return ["".join(p for p in parts if isinstance(p, str)).strip() for parts in as_items(list(items))]


def optimise_latent(model: "GenerativeEmbedder", inputs: "Item | Sequence[Item]", *,
                    config: OptimiseConfig = OptimiseConfig(), targets: Sequence[str] | None = None,
                    initial: Latent | None = None, batch_size: int = 8,
                    show_progress_bar: bool | None = None) -> Optimised:
    """Fit n message vectors per input so that the frozen receiver, reading them with ``config.instructions``,
    restates ``targets`` (default: each input's text parts).

    The start is ``initial`` when given, else the head's latent of each input (``init="head"``) or random vectors
    (``init="random"``). Inputs run ``batch_size`` at a time; an input whose loss falls below ``stop_loss`` leaves
    its batch. Gradients reach the vectors only: the backbone and the head are unchanged.
    """
    items = as_items(inputs)
    targets = list(targets) if targets is not None else restatement_targets(items)
    if len(targets) != len(items):
        raise ValueError(f"{len(targets)} targets for {len(items)} inputs")
    if any(not isinstance(t, str) or not t.strip() for t in targets):
        raise ValueError("every input needs a non-empty text to restate (an input of latents alone has none: pass "
                         "targets=)")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start_time = time.perf_counter()
    tok = model.backbone.tokenizer
    ids = tok(targets, add_special_tokens=False).input_ids
    targets = [tok.decode(row[:config.max_target_tokens]) for row in ids]
    start = initial if initial is not None else _start(model, items, config)
    if start.shape[0] != len(items) or start.shape[1:] != (model.config.num_compression, model.backbone.hidden_size):
        raise ValueError(f"initial latent {start.shape} does not fit {len(items)} inputs of this head")
    vectors = start.vectors.clone().float()
    losses: list[list[float]] = [[] for _ in items]
    finals = [math.nan] * len(items)
    steps = [0] * len(items)
    total = len(items) * config.steps
    with tqdm(total=total, desc="optimise", unit="step", disable=_quiet(show_progress_bar, total)) as bar, \
            torch.enable_grad():
        for first in range(0, len(items), batch_size):
            rows = list(range(first, min(first + batch_size, len(items))))
            _fit(model, vectors, rows, targets, config, losses, finals, steps, bar)
    latent = Latent(vectors, model.fingerprint, model.backbone.backbone_id)
    return Optimised(latent, losses, steps, time.perf_counter() - start_time, finals)


def _quiet(show: bool | None, total: int) -> bool:
    return not (show if show is not None else total > 50 and sys.stderr.isatty())


def _start(model: "GenerativeEmbedder", items: list, config: OptimiseConfig) -> Latent:
    if config.init == "head":
        return model.compress(items)
    generator = torch.Generator().manual_seed(config.seed)
    mean, scale = embedding_statistics(model.backbone.model.get_input_embeddings().weight)
    shape = (len(items), model.config.num_compression, model.backbone.hidden_size)
    vectors = mean + scale * torch.randn(shape, generator=generator)
    return Latent(vectors, model.fingerprint, model.backbone.backbone_id)


def _fit(model: "GenerativeEmbedder", vectors: torch.Tensor, rows: list[int], targets: list[str],
         config: OptimiseConfig, losses: list[list[float]], finals: list[float], steps: list[int], bar: tqdm) -> None:
    """Adam on ``vectors[rows]`` in place (per-row moments, so a row that stops keeps its value)."""
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    device, dtype = model.device, model.backbone.dtype
    moment1 = torch.zeros_like(vectors[rows])
    moment2 = torch.zeros_like(vectors[rows])
    active = list(range(len(rows)))
    counts_of = {i: len(ids) for i, ids in enumerate(model.response_ids([targets[r] for r in rows]))}
    for step in range(config.steps + 1):
        if not active:
            break
        instruction = config.instructions[step % len(config.instructions)]
        batch = vectors[[rows[i] for i in active]].to(device).requires_grad_(True)
        logits, labels = model.reconstruction_logits(batch.to(dtype), [targets[rows[i]] for i in active],
                                                     [instruction] * len(active))
        row_loss = row_losses(logits, labels, [counts_of[i] for i in active])
        values = row_loss.detach().cpu().tolist()
        done = [config.stop_loss is not None and v < config.stop_loss or step == config.steps for v in values]
        for i, v, stop in zip(active, values, done):
            if stop:
                finals[rows[i]] = v
            else:
                losses[rows[i]].append(v)
        if all(done):
            break
        (grad,) = torch.autograd.grad(row_loss.sum(), batch)
        grad = grad.float().cpu()
        keep = [j for j, stop in enumerate(done) if not stop]
        for j in keep:
            i = active[j]
            steps[rows[i]] += 1
            t = steps[rows[i]]
            moment1[i] = beta1 * moment1[i] + (1 - beta1) * grad[j]
            moment2[i] = beta2 * moment2[i] + (1 - beta2) * grad[j].square()
            update = (moment1[i] / (1 - beta1 ** t)) / ((moment2[i] / (1 - beta2 ** t)).sqrt() + eps)
            vectors[rows[i]] -= config.lr * update
        bar.update(len(keep))
        active = [active[j] for j in keep]
