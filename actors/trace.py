"""A conversation trace: every hop between agents (who, what kind, bytes, latency, what was said).

For latents the trace keeps the text the receiver decoded — or, for a latent read in context, what it decodes
to, computed afterwards and labelled as such (``annotate``); for a KV cache, what its sender would have answered,
generated afterwards — so a person can read what was "said"; export with ``to_jsonl`` and read with ``table()``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEXT_FROM = {"message": "a text message", "receiver": "decoded by the receiver",
             "off the clock": "decoded after the run, for the trace only (the receiver read the latent in context)",
             "answered off the clock": "the sender's own answer to what it read, generated after the run for the "
                                       "trace only (it sent its KV cache)"}
"""Where a hop's ``text`` came from."""
MARKED = {"off the clock": "[decoded off the clock]", "answered off the clock": "[answered off the clock]"}
"""The mark ``Trace.table`` puts before a text the receiver did not read (made for the trace only)."""


@dataclass(frozen=True)
class Hop:
    """One delivered message. Times are seconds; ``latency_s`` runs from the sender starting to produce the
    message to the receiver's handler finishing with it (``produce_s`` + ``deliver_s`` + ``handle_s``)."""

    conversation_id: str
    message_id: str
    sender: str
    receiver: str
    kind: str
    bytes: int
    produce_s: float
    """Sender side: inputs -> packed message (compress, embed or generate the text)."""
    deliver_s: float
    """Wire: pack, hand over, unpack and verify."""
    handle_s: float
    """Receiver side: the handler (e.g. decode the latent)."""
    latency_s: float
    text: str | None = None
    """What was said: the text of a text message, the decoded text of a latent, the sender's answer for a KV cache
    (once annotated), None for embeddings."""
    text_from: str = ""
    """Where ``text`` came from: a key of ``TEXT_FROM`` ("" when there is none)."""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    """The message's own metadata (e.g. a job's mode and question id), without the agents' routing keys."""
    choice: str = ""
    """On a link that chose the kind (``kind="auto"``): why this kind ("" otherwise)."""
    fallback: str = ""
    """The kind the receiver refused before this message on the same send, and the error ("" when none)."""


@dataclass(frozen=True)
class HopStats:
    """Statistics of a group of hops: how many, their mean size and times, and their median latency."""

    count: int
    mean_bytes: float
    mean_latency_s: float
    p50_latency_s: float
    mean_produce_s: float
    mean_handle_s: float


def hop_stats(hops: Sequence[Hop]) -> HopStats:
    """The statistics of ``hops`` (at least one); every report of hop times and sizes is made from these."""
    if not hops:
        raise ValueError("no hops to summarise")
    return HopStats(count=len(hops), mean_bytes=statistics.fmean(h.bytes for h in hops),
                    mean_latency_s=statistics.fmean(h.latency_s for h in hops),
                    p50_latency_s=statistics.median(h.latency_s for h in hops),
                    mean_produce_s=statistics.fmean(h.produce_s for h in hops),
                    mean_handle_s=statistics.fmean(h.handle_s for h in hops))


class Trace:
    """An append-only, thread-safe list of hops."""

    def __init__(self, hops: list[Hop] | None = None) -> None:
        self._hops: list[Hop] = list(hops or [])
        self._lock = threading.Lock()

    def record(self, hop: Hop) -> None:
        with self._lock:
            self._hops.append(hop)

    @property
    def hops(self) -> list[Hop]:
        with self._lock:
            return list(self._hops)

    def __len__(self) -> int:
        return len(self._hops)

    def annotate(self, texts: dict[str, str], text_from: str = "off the clock") -> None:
        """Give the hops of these message ids (id -> text) the text their latent decodes to, labelled ``text_from``."""
        if text_from not in TEXT_FROM:
            raise ValueError(f"text_from must be one of {sorted(TEXT_FROM)}, got {text_from!r}")
        with self._lock:
            self._hops = [dataclasses.replace(h, text=texts[h.message_id], text_from=text_from)
                          if h.message_id in texts else h for h in self._hops]

    def conversation(self, conversation_id: str) -> list[Hop]:
        """The hops of one conversation, oldest first."""
        return [h for h in self.hops if h.conversation_id == conversation_id]

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        """One JSON object per hop."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for hop in self.hops:
                f.write(json.dumps(dataclasses.asdict(hop), ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> "Trace":
        with Path(path).open() as f:
            return cls([Hop(**json.loads(line)) for line in f if line.strip()])

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per (mode, sender -> receiver, kind): the ``HopStats`` fields (count, mean bytes, mean/p50 latency, ...);
        the mode is the messages' ``mode`` metadata, where they have one."""
        groups: dict[str, list[Hop]] = {}
        for hop in self.hops:
            mode = hop.metadata.get("mode")
            key = f"{str(mode) + ' ' if mode else ''}{hop.sender}->{hop.receiver} {hop.kind}"
            groups.setdefault(key, []).append(hop)
        return {key: dataclasses.asdict(hop_stats(hops)) for key, hops in groups.items()}

    def table(self, *, width: int = 60, limit: int | None = None) -> str:
        """A readable table of the hops (text cut to ``width`` characters), oldest first."""
        hops = self.hops[:limit] if limit else self.hops
        rows = [("conv", "sender", "receiver", "kind", "bytes", "latency", "said")]
        for hop in hops:
            said = "" if hop.text is None else " ".join(hop.text.split())
            said = said if len(said) <= width else said[:width - 1] + "…"
            said = f"{MARKED[hop.text_from]} {said}" if hop.text_from in MARKED else said
            rows.append((hop.conversation_id[:24], hop.sender, hop.receiver, hop.kind, str(hop.bytes),
                         f"{hop.latency_s * 1000:.0f} ms", said))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]
        lines.insert(1, "-" * len(lines[0]))
        return "\n".join(lines)
