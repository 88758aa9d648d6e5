"""The modes of the main job as a table: how each hop of a chain is sent and how its receiver reads it.

A mode is one ``Mode`` entry in ``MODES``; the job, its scoring, its table and its plot follow the table, so a new
way of talking is one entry here (and, where it needs one, a new kind of hop in ``Agent``). ``text`` is the
baseline every other mode is compared with: it always runs.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from latentcomm.actors.agent import Agent, Handler, Recipient, Said, decode_latent, keep_latent
from latentcomm.protocols import MetaValue

HopKind = Literal["latent", "kv", "text", "auto"]


@dataclass(frozen=True)
class Mode:
    """One way a chain talks: what each hop sends and how each receiver reads it."""

    name: str
    kind: HopKind
    """The message kind of a hop ("auto": the link chooses, ``Agent.send``)."""
    help: str
    read: Handler | None = None
    """The receivers' handler for ``handled_kind`` (None: the agent's default)."""
    generate: bool = False
    """The sender generates its own answer and sends that (a text hop)."""
    label: str = ""
    """Short name in the ratio columns (``label/text``); the name when empty."""
    color: str | None = None
    """Its line in ``run.png`` (None: matplotlib's next colour)."""
    default: bool = True
    """It runs when ``--modes`` is not given (else only when named)."""

    def __post_init__(self) -> None:
        if self.generate and self.kind != "text":
            raise ValueError(f"mode {self.name!r}: only a text hop can be generated")

    @property
    def short(self) -> str:
        return self.label or self.name

    @property
    def handled_kind(self) -> str:
        """The kind ``read`` handles: ``kind``, or a latent where the link chooses (a KV cache and a text keep the
        agents' defaults)."""
        return "latent" if self.kind == "auto" else self.kind


BASELINE = "text"
MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("latent", "latent", "every agent but the last sends its latent (one forward pass), which the next one "
         "reads in context", read=keep_latent, color="tab:blue"),
    Mode("latent-decode", "latent", "as latent, but each receiver first decodes the latent to text and reads that",
         read=decode_latent, label="decode", color="tab:orange"),
    Mode("kv", "kv", "every agent but the last sends the KV cache of all it read (one forward pass), the "
         "last one answers after it", color="tab:green"),
    Mode(BASELINE, "text", "every agent generates its answer and sends the text (the baseline)", generate=True,
         color="tab:gray"),
    Mode("auto", "auto", "every link chooses: the KV cache where it fits the receiver's limits, else the latent "
         "(read in context), else the generated text (only when named)", read=keep_latent, color="tab:purple",
         default=False),
)}
"""Every mode, in the order they run and are tabulated."""
DEFAULT_MODES: tuple[str, ...] = tuple(name for name, mode in MODES.items() if mode.default)

async def send(mode: Mode, sender: Agent, receiver: Recipient, said: Said, *, conversation_id: str,
               metadata: Mapping[str, MetaValue]) -> Any:
    """One hop of ``mode`` from ``sender`` to ``receiver``; returns what the receiver's handler made of it."""
    return await sender.send(receiver, said, kind=mode.kind, generate=mode.generate, conversation_id=conversation_id,
                             metadata=metadata)


def modes_to_run(names: tuple[str, ...]) -> tuple[Mode, ...]:
    """The modes named, in table order, with the baseline added (every ratio is against it)."""
    unknown = sorted(set(names) - set(MODES))
    if unknown:
        raise ValueError(f"modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    return tuple(mode for name, mode in MODES.items() if name in names or name == BASELINE)
