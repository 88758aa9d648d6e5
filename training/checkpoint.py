"""DeepSpeed checkpoints of a run: save every K steps (keeping the newest few), find and restore the latest."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

_TAG = re.compile(r"^step-(\d+)$")


def checkpoint_tags(directory: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, tag) of the complete checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _TAG.match(child.name)
        if match and (child / "complete").is_file():
            found.append((int(match.group(1)), child.name))
    return sorted(found)


def save_checkpoint(engine, directory: str | os.PathLike, step: int, *, keep: int = 2) -> None:
    """Model, optimizer and scheduler state after ``step`` steps (all ranks call this).

    A ``complete`` marker is written last, so a run killed mid-save never resumes from a partial checkpoint.
    """
    import torch.distributed as dist

    directory = Path(directory)
    tag = f"step-{step:07d}"
    engine.save_checkpoint(str(directory), tag=tag, client_state={"step": step})
    if dist.is_initialized():
        dist.barrier()
    if engine.global_rank == 0:
        (directory / tag / "complete").write_text(f"{step}\n")
        for _, old in checkpoint_tags(directory)[:-keep]:
            shutil.rmtree(directory / old, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def load_latest_checkpoint(engine, directory: str | os.PathLike) -> int:
    """Restore the newest complete checkpoint into ``engine``; returns its step (0 when there is none)."""
    tags = checkpoint_tags(directory)
    if not tags:
        return 0
    step, tag = tags[-1]
    path, client_state = engine.load_checkpoint(str(directory), tag=tag, load_optimizer_states=True,
                                                load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {tag} from {directory}")
    if client_state.get("step") != step:
        raise RuntimeError(f"checkpoint {tag} records step {client_state.get('step')}, expected {step}")
    return step
