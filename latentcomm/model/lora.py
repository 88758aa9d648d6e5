"""Encoder-side LoRA: low-rank adapters on chosen backbone linears, active only while a head compresses.

The adapters belong to the head (its state dict, its file, its fingerprint); the backbone's own weights stay
frozen and shared. ``EncoderLoRA.active(model)`` hooks the adapters onto the backbone for the duration of a
``with`` block and removes the hooks on exit, so every pass outside it (decode, respond, a teacher) runs the
plain backbone: one set of backbone weights in memory serves both sides. The hooks only act in the thread
that entered the block. Each adapter adds ``up(down(x))`` to its linear's output, ``up`` starting at zero, so
a fresh adapter changes nothing.
"""
from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

LORA_TARGETS: tuple[str, ...] = ("q_proj", "v_proj")
"""Names of the linears that get an adapter in every decoder layer (attention query and value projections)."""


def lora_targets(model: nn.Module, names: Sequence[str] = LORA_TARGETS) -> dict[str, tuple[int, int]]:
    """Module path -> (in_features, out_features) of every ``nn.Linear`` of ``model`` whose own name is in
    ``names``: the shapes an ``EncoderLoRA`` on this backbone has."""
    shapes = {path: (module.in_features, module.out_features) for path, module in model.named_modules()
              if isinstance(module, nn.Linear) and path.rpartition(".")[2] in names}
    if not shapes:
        raise ValueError(f"the backbone has no nn.Linear named {list(names)}: encoder LoRA cannot attach to it")
    return shapes


class LowRank(nn.Module):
    """``x -> up(down(x))`` with ``down`` (rank x in) Kaiming-uniform and ``up`` (out x rank) zero."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x.to(self.down.weight.dtype)))


class EncoderLoRA(nn.Module):
    """One ``LowRank`` adapter per target linear of the backbone, in sorted path order."""

    def __init__(self, targets: dict[str, tuple[int, int]], rank: int) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.paths = sorted(targets)
        self.adapters = nn.ModuleList(LowRank(*targets[path], rank) for path in self.paths)

    @contextmanager
    def active(self, model: nn.Module) -> Iterator[None]:
        """Within the block, every target linear of ``model`` (the backbone) adds its adapter's output."""
        modules = dict(model.named_modules())
        missing = [path for path in self.paths if path not in modules]
        if missing:
            raise ValueError(f"the backbone has no module {missing[0]} (this LoRA was made for another backbone)")
        owner = threading.get_ident()

        def hook(adapter: LowRank):
            def add(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
                if threading.get_ident() != owner:
                    return None
                return output + adapter(args[0]).to(output.dtype)
            return add

        handles = [modules[path].register_forward_hook(hook(adapter))
                   for path, adapter in zip(self.paths, self.adapters)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
