"""The modes of the main job as a table: how each hop of a chain is sent and how its receiver reads it.

A mode is one ``Mode`` entry in ``MODES``; the job, its scoring, its table and its plot follow the table, so a new
way of talking is one entry here (and, where it needs one, a new kind of hop in ``Agent``). ``text`` is the
baseline every other mode is compared with: it always runs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from latentcomm.actors.agent import Agent, Handler, Recipient, Said, decode_latent, keep_latent
from latentcomm.model.optimise import OptimiseConfig
from latentcomm.protocols import MetaValue

HopKind = Literal["latent", "kv", "text", "auto"]
Relay = Literal["fold", "forward"]


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
    relay: Relay = "fold"
    """What a relay sends: one message of all it read ("fold": a received latent is compressed again with the
    relay's own input), or what it received, unchanged, beside its own message ("forward")."""
    refine: OptimiseConfig | None = None
    """The first agent's latent is fitted to its text for up to ``refine.steps`` steps before it is sent (None: the
    head's latent as it is)."""
    default: bool = True
    """It runs when ``--modes`` is not given (else only when named)."""

    def __post_init__(self) -> None:
        if self.generate and self.kind != "text":
            raise ValueError(f"mode {self.name!r}: only a text hop can be generated")
        if self.relay == "forward" and self.kind != "latent":
            raise ValueError(f"mode {self.name!r}: only latents are forwarded")
        if self.refine is not None and self.kind != "latent":
            raise ValueError(f"mode {self.name!r}: only latents are refined")

    @property
    def short(self) -> str:
        return self.label or self.name

    @property
    def handled_kind(self) -> str:
        """The kind ``read`` handles: ``kind``, or a latent where the link chooses (a KV cache and a text keep the
        agents' defaults)."""
        return "latent" if self.kind == "auto" else self.kind


BASELINE = "text"
REFINE = "refine"
"""The family of modes ``refine-<k>``: the first agent's latent fitted k steps, one mode per ``--refine-steps``
value."""
OPTIMISE_STOP_LOSS = 0.05
"""Where the optimised latent stops (nats per restated token: the receiver restates the text almost surely)."""
MODES: dict[str, Mode] = {mode.name: mode for mode in (
    Mode("latent", "latent", "every agent but the last sends its latent (one forward pass), which the next one "
         "reads in context; a relay compresses what it received again with its own input", read=keep_latent,
         color="tab:blue"),
    Mode("latent-forward", "latent", "as latent, but a relay forwards what it received unchanged beside its own "
         "latent (the last agent reads K - 1 latents)", read=keep_latent, relay="forward", label="forward",
         color="tab:cyan"),
    Mode("latent-decode", "latent", "as latent, but each receiver first decodes the latent to text and reads that",
         read=decode_latent, label="decode", color="tab:orange"),
    Mode(REFINE, "latent", "as latent-forward, but the first agent fits its latent to its text for k steps before "
         "sending (refine-<k>, one mode per --refine-steps value)", read=keep_latent, relay="forward",
         refine=OptimiseConfig(steps=0, stop_loss=OPTIMISE_STOP_LOSS), color="tab:purple"),
    Mode("optimised", "latent", "as latent-forward, but the first agent fits its latent to its text until the "
         "receiver restates it (the bound; at most --optimise-steps steps)", read=keep_latent, relay="forward",
         refine=OptimiseConfig(steps=0, stop_loss=OPTIMISE_STOP_LOSS), label="opt", color="tab:red"),
    Mode("kv", "kv", "every agent but the last sends the KV cache of all it read (one forward pass), the "
         "last one answers after it", color="tab:green"),
    Mode(BASELINE, "text", "every agent generates its answer and sends the text (the baseline)", generate=True,
         color="tab:gray"),
    Mode("auto", "auto", "every link chooses: the KV cache where it fits the receiver's limits, else the latent "
         "(read in context), else the generated text (only when named)", read=keep_latent, color="tab:brown",
         default=False),
)}
"""Every mode, in the order they run and are tabulated (``refine`` and ``optimised`` take their steps from the
job's flags: ``modes_to_run``)."""
DEFAULT_MODES: tuple[str, ...] = tuple(name for name, mode in MODES.items() if mode.default)


async def send(mode: Mode, sender: Agent, receiver: Recipient, said: Said, *, conversation_id: str,
               metadata: Mapping[str, MetaValue]) -> Any:
    """One hop of ``mode`` from ``sender`` to ``receiver``; returns what the receiver's handler made of it."""
    return await sender.send(receiver, said, kind=mode.kind, generate=mode.generate, conversation_id=conversation_id,
                             metadata=metadata)


def refine_mode(steps: int) -> Mode:
    """The ``refine-<steps>`` mode."""
    mode = MODES[REFINE]
    return dataclasses.replace(mode, name=f"{REFINE}-{steps}", label=f"r{steps}",
                               refine=dataclasses.replace(mode.refine, steps=steps))


def mode_named(name: str) -> Mode:
    """The mode of a results row: an entry of ``MODES`` or a ``refine-<k>`` mode."""
    prefix = f"{REFINE}-"
    if name not in MODES and name.startswith(prefix) and name[len(prefix):].isdigit():
        return refine_mode(int(name[len(prefix):]))
    return MODES[name]


def modes_to_run(names: tuple[str, ...], *, refine_steps: tuple[int, ...] = (), optimise_steps: int = 0
                 ) -> tuple[Mode, ...]:
    """The modes named, in table order, with the baseline added (every ratio is against it): ``refine`` becomes
    one mode per value of ``refine_steps``, ``optimised`` gets ``optimise_steps`` steps at most."""
    unknown = sorted(set(names) - set(MODES))
    if unknown:
        raise ValueError(f"modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    chosen: list[Mode] = []
    for name, mode in MODES.items():
        if name not in names and name != BASELINE:
            continue
        if name == REFINE:
            chosen += [refine_mode(k) for k in refine_steps]
        elif mode.refine is not None:
            chosen.append(dataclasses.replace(mode, refine=dataclasses.replace(mode.refine, steps=optimise_steps)))
        else:
            chosen.append(mode)
    return tuple(chosen)
