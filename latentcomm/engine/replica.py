"""A model replica: one frozen backbone + head, spoken to in protocol bytes (no Ray here).

``Replica`` is a plain class with async methods (usable in-process from any event loop);
``latentcomm.runtime.pool.ReplicaPool`` runs N of them as Ray actors, for the agents (``actors/``) and for the response
generation job (``training/``), and ``latentcomm serve`` behind Ray Serve. Only the ``ReplicaConfig`` is pickled
to the actor: the backbone and head are loaded inside it, from a path or the default alias. Latents and
embeddings leave the actor as packed ``LatentMessage`` bytes, addressed and ready to sign and send, never as
pickled tensors. A message enters it packed (parsed here) or as the ``LatentMessage`` that the receiver who
verified it parsed (an agent, the HTTP front door), which the replica reads as is: Ray ships a parsed message as
its fields and payload bytes without parsing it again, so each message is parsed once.

Concurrent calls are batched (``ReplicaConfig.batching``): compress and embed requests that arrive together run
as one forward pass; every generation (decode, respond, an answer after a KV prefix) is rows of one continuous
engine, which join the running batch between steps (``latentcomm.engine.continuous``; without batching, a batch
of one). All model work runs on one thread of the replica, so the event loop keeps accepting requests meanwhile.
Each call gets its own results, in order; a bad input fails its own call only.
"""
from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Literal, TypeVar, Union

import numpy as np
import torch

from latentcomm.model.backbone import DEFAULT_BACKBONE, load_backbone, quantize_int8
from latentcomm.engine.batching import BatchConfig, Batcher
from latentcomm.model.config import HeadConfig
from latentcomm.engine.continuous import ContinuousGenerator
from latentcomm.model.generation import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY, Sampling
from latentcomm.model.kv import KVPrefix, answer_prompt, prefill
from latentcomm.model.latent import Latent
from latentcomm.model.optimise import OptimiseConfig, optimise_latent
from latentcomm.engine.messaging import embedding_message, kv_message, latent_message, message_kv, message_latent, \
    routing_of
from latentcomm.model.embedder import GenerativeEmbedder, Part, load_embedder
from latentcomm.protocols import DEFAULT_LIMITS, FingerprintMismatch, LatentMessage, Limits, pack, unpack

T = TypeVar("T")
Received = Union[bytes, LatentMessage]
"""A message given to a replica: packed (parsed here, within ``ReplicaConfig.limits``), or parsed by the receiver
that verified it (read as is)."""
WireItem = Union[str, Sequence[Union[str, Received]]]
"""One input sent to a replica: a string, or parts in the user turn — strings and "latent" messages (read in
context as soft tokens, the way ``GenerativeEmbedder.compress`` reads ``Latent`` parts), and for ``prefill`` and
``respond`` at most one "kv" message (a KV prefix, attended to before the turn: ``latentcomm.model.kv``)."""
Routing = Mapping[str, Any]
"""Fields of the message a replica packs: sender, recipient, conversation_id, metadata (``messaging.address``)."""


@dataclass(frozen=True)
class ReplicaConfig:
    """What a replica loads: a backbone (alias, HF folder or GGUF) and a head (folder, or None for the default)."""

    backbone: str = DEFAULT_BACKBONE
    head: str | None = None
    """A saved head folder; None means the shipped head of the default backbone, else an untrained head."""
    head_config: HeadConfig | None = None
    """An untrained head of this shape instead of the shipped one (tests; response generation, which uses the
    backbone alone); ignored when ``head`` is given."""
    device: str | None = None
    weights_dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """The backbone's weights and compute dtype; None picks the device's fast one (messages have their own
    wire dtype, chosen per call)."""
    num_threads: int | None = None
    """torch CPU threads inside the actor; None keeps torch's default."""
    max_new_tokens: int = 64
    int8: bool = False
    """Dynamically quantised int8 linears in the backbone (CPU inference; see ``backbone.quantize_int8``)."""
    batching: BatchConfig = field(default_factory=BatchConfig)
    limits: Limits = DEFAULT_LIMITS
    """Bounds of the messages this replica unpacks (a KV cache of a big backbone needs higher ones)."""

    def __post_init__(self) -> None:
        if self.weights_dtype is not None and not isinstance(getattr(torch, self.weights_dtype, None), torch.dtype):
            raise ValueError(f"unknown weights_dtype {self.weights_dtype!r}; use e.g. 'float32' or 'bfloat16'")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class _TextRequest:
    """Texts to compress (``embed`` False: one latent each) or to embed (one embedding each)."""

    texts: list[str | list[Part]]
    prompt: str | None
    embed: bool


class Replica:
    """A frozen LLM with a compression head: compress, embed, decode and respond, over protocol bytes."""

    def __init__(self, config: ReplicaConfig) -> None:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        start = time.perf_counter()
        dtype = getattr(torch, config.weights_dtype) if config.weights_dtype else None
        self.config = config
        if config.head is None and config.head_config is not None:
            backbone = load_backbone(config.backbone, device=config.device, dtype=dtype)
            self.model = GenerativeEmbedder(backbone, config.head_config)
        else:
            self.model = load_embedder(config.head, backbone=config.backbone, device=config.device, dtype=dtype)
        if config.int8:
            self.model.backbone = quantize_int8(self.model.backbone)
        self.load_s = time.perf_counter() - start
        batching = config.batching
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-model")
        self._texts = Batcher(self._run_texts, self._thread, batching, rows=lambda r: len(r.texts))
        self._latents = Batcher(self._run_latents, self._thread, batching, rows=len)
        self._kv_calls = {"prefills": 0, "kv_generations": 0}
        self._generator = ContinuousGenerator(self.model.backbone.model, self._thread,
                                              max_batch_size=batching.max_batch_size if batching.batching else 1,
                                              eos_token_ids=self.model.stop_token_ids())

    def info(self) -> dict[str, Any]:
        """Identity of this replica: process id, backbone, head fingerprint, latent shape, load time, batching."""
        return {"pid": os.getpid(), "backbone": self.model.backbone.name, "backbone_id": self.model.backbone.backbone_id,
                "fingerprint": self.model.fingerprint, "num_compression": self.model.config.num_compression,
                "hidden_size": self.model.backbone.hidden_size, "device": str(self.model.device),
                "dtype": str(self.model.backbone.dtype).removeprefix("torch."), "load_s": self.load_s,
                "batching": dataclasses.asdict(self.config.batching)}

    def counters(self) -> dict[str, int]:
        """Model calls made so far: forward passes of compress/embed (with their rows and model time in ms),
        generation steps, KV prefills and answers."""
        return {"text_batches": self._texts.batches, "text_rows": self._texts.rows,
                "text_busy_ms": round(self._texts.busy_s * 1e3), "latent_batches": self._latents.batches,
                "generation_steps": self._generator.steps, **self._kv_calls}

    # ---- the API (async: concurrent calls batch) -------------------------------------------------------
    async def compress(self, texts: list[WireItem], *, dtype: str = "float16", prompt: str | None = None,
                       routing: Sequence[Routing] | None = None, refine: OptimiseConfig | None = None,
                       refine_targets: Sequence[str] | None = None) -> list[bytes]:
        """Inputs -> one packed "latent" message each (one forward pass, shared with concurrent calls).

        An input may hold received latents among its parts (an agent answering in a latent). ``routing`` (one
        per input) addresses each message, so it is packed once here, ready to send (unsigned: the sender
        appends its HMAC trailer with ``protocols.sign``). With ``refine``, each latent is then fitted to its
        input for up to ``refine.steps`` steps (``latentcomm.model.optimise``: the receiver restates
        ``refine_targets``, default the input's text), on the model thread, one call at a time.
        """
        items = _items(texts, self.config.limits, kv=False)
        routing = _routing_per_input(routing, len(items))
        latent = await self._texts.submit(_TextRequest(items, prompt, embed=False))
        if refine is not None and refine.steps:
            fit = functools.partial(optimise_latent, self.model, items, config=refine, targets=refine_targets,
                                    initial=latent, show_progress_bar=False)
            latent = (await self._on_model_thread(fit)).latent
        return [pack(latent_message(latent[i], dtype=dtype, **routing[i])) for i in range(len(latent))]

    async def embed(self, messages: list[Received], *, dtype: str = "float32") -> list[bytes]:
        """Latent messages (made by this head) -> packed "embedding" messages with the same routing."""
        parsed = [_parsed(m, self.config.limits, expect_fingerprint=self.model.fingerprint) for m in messages]
        if not parsed:
            return []
        vectors = await self._latents.submit([message_latent(msg) for msg in parsed])
        return [pack(self._embedding(v, dtype, routing_of(msg))) for v, msg in zip(vectors, parsed)]

    async def embed_texts(self, texts: list[str], *, dtype: str = "float32", prompt: str | None = None,
                          routing: Sequence[Routing] | None = None) -> list[bytes]:
        """Texts -> packed "embedding" messages (compress + MLP_align + mean pooling); ``routing`` as in
        ``compress`` (packed once here, ready to send)."""
        items = _items(texts, self.config.limits, kv=False)
        routing = _routing_per_input(routing, len(items))
        vectors = await self._texts.submit(_TextRequest(items, prompt, embed=True))
        return [pack(self._embedding(v, dtype, r)) for v, r in zip(vectors, routing)]

    async def prefill(self, texts: list[WireItem], *, dtype: str = "float16",
                      routing: Sequence[Routing] | None = None) -> list[bytes]:
        """Inputs -> one packed "kv" message each: the KV cache of the input's chat turn, after the KV prefix among
        its parts (one forward pass each, no generation; ``routing`` as in ``compress``)."""
        items = _items(texts, self.config.limits)
        routing = _routing_per_input(routing, len(items))
        out = []
        for item, address in zip(items, routing):
            prefix = await self._on_model_thread(prefill, self.model, item)
            self._kv_calls["prefills"] += 1
            out.append(pack(kv_message(prefix, dtype=dtype, **address)))
        return out

    async def decode(self, messages: list[Received], *, max_new_tokens: int | None = None,
                     repetition_penalty: float = REPETITION_PENALTY,
                     no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE) -> list[str]:
        """Latent messages -> text: the frozen LLM continues from each latent as a soft prompt (greedy, with
        ``GenerativeEmbedder.decode``'s repetition controls)."""
        latents = [message_latent(_parsed(m, self.config.limits)) for m in messages]
        if not latents:
            return []
        vectors, _ = self.model.decode_prompts(Latent.concat(latents, same_head=False))  # checks only: no queueing
        sampling = Sampling(repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size)
        return await self._generate(list(vectors), max_new_tokens, sampling, None)

    async def respond(self, texts: list[WireItem], *, max_new_tokens: int | None = None, temperature: float = 0.0,
                      top_p: float = 1.0, repetition_penalty: float = REPETITION_PENALTY, no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE,
                      seed: int | None = None) -> list[str]:
        """The backbone's own answer to each text (autoregressive generation: the text baseline, the training data).

        Inputs may hold packed latents among their parts (read in context). Sampling follows
        ``GenerativeEmbedder.respond``; with ``seed`` each row draws from its own generator
        (seeded from ``seed`` and its index), so a text does not depend on what else runs in the batch.
        """
        sampling = Sampling(temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        items = _items(texts, self.config.limits)
        if any(isinstance(p, KVPrefix) for item in items if not isinstance(item, str) for p in item):
            # each row prefilled after its own cache (a row without one after none), then a row like any other
            self._kv_calls["kv_generations"] += len(items)
            prompts = await self._on_model_thread(lambda: [answer_prompt(self.model, item) for item in items])
            return await self._generate([embeds for _, embeds in prompts], max_new_tokens, sampling, seed,
                                        prefixes=[cache for cache, _ in prompts])
        # the prompts are built (and the prefix cache used) on the model thread only
        embeds, mask = await self._on_model_thread(self.model.respond_prompts, items)
        return await self._generate([e[m.bool()] for e, m in zip(embeds, mask)], max_new_tokens, sampling, seed)

    # ---- internals ------------------------------------------------------------------------------------
    async def _on_model_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    async def _generate(self, prompts: list[torch.Tensor], max_new_tokens: int | None, sampling: Sampling,
                        seed: int | None, prefixes: list[Any] | None = None) -> list[str]:
        """Texts generated after ``prompts`` (each after its KV prefix, where given) as rows of the running batch."""
        ids = await self._generator.generate(prompts, max_new_tokens=max_new_tokens or self.config.max_new_tokens,
                                             sampling=sampling, seed=seed, prefixes=prefixes)
        return self.model.detokenize(ids)

    def _run_texts(self, requests: list[_TextRequest]) -> list[Latent | np.ndarray]:
        """One compress pass per distinct prompt over all requests' texts; embeddings where asked."""
        out: list[Latent | np.ndarray] = [None] * len(requests)  # type: ignore[list-item]
        for prompt in dict.fromkeys(r.prompt for r in requests):
            index = [i for i, r in enumerate(requests) if r.prompt == prompt]
            latent = self.model.compress([t for i in index for t in requests[i].texts], prompt=prompt,
                                         batch_size=self.config.batching.max_batch_size, show_progress_bar=False)
            start = 0
            for i in index:
                part = latent[start:start + len(requests[i].texts)]
                start += len(requests[i].texts)
                out[i] = self.model.embed_latent(part) if requests[i].embed else part
        return out

    def _run_latents(self, requests: list[list[Latent]]) -> list[np.ndarray]:
        """MLP_align + mean pooling of every request's latents in one pass."""
        vectors = self.model.embed_latent(Latent.concat([lat for r in requests for lat in r]))
        bounds = np.cumsum([0] + [len(r) for r in requests])
        return [vectors[a:b] for a, b in zip(bounds[:-1], bounds[1:])]

    def _embedding(self, vector: Any, dtype: str, routing: Routing) -> LatentMessage:
        return embedding_message(vector, fingerprint=self.model.fingerprint,
                                 backbone_id=self.model.backbone.backbone_id, dtype=dtype, **routing)


def _routing_per_input(routing: Sequence[Routing] | None, count: int) -> Sequence[Routing]:
    """One routing mapping per input (empty ones without ``routing``)."""
    if routing is None:
        return [{}] * count
    if len(routing) != count:
        raise ValueError(f"routing has {len(routing)} entries for {count} inputs")
    return routing


def _parsed(message: Received, limits: Limits, *, expect_fingerprint: str | None = None) -> LatentMessage:
    """``message`` parsed: unpacked within ``limits`` if packed, else as the receiver parsed it."""
    if not isinstance(message, LatentMessage):
        return unpack(message, limits=limits, expect_fingerprint=expect_fingerprint)
    if expect_fingerprint is not None and message.fingerprint != expect_fingerprint:
        raise FingerprintMismatch(f"message head fingerprint {message.fingerprint!r} != expected "
                                  f"{expect_fingerprint!r}")
    return message


def _items(texts: list[WireItem], limits: Limits, *, kv: bool = True) -> list[str | list[Any]]:
    """The inputs of one call as lists of parts (latents and, where ``kv``, KV prefixes as the model reads them),
    checked here so that a bad one fails its own call, not a batch."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of strings or of lists of parts, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty: pass at least one string")
    items = []
    for item in texts:
        if isinstance(item, str):
            items.append(item)
            continue
        if not isinstance(item, (list, tuple)):
            raise TypeError(f"texts must be strings or lists of parts, got {type(item).__name__}")
        bad = sorted({type(p).__name__ for p in item if not isinstance(p, (str, bytes, LatentMessage))})
        if bad:
            raise TypeError(f"parts must be strings or latent messages (LatentMessage or packed bytes), got {bad}")
        items.append([p if isinstance(p, str) else _part(_parsed(p, limits), kv) for p in item])
    return items


def _part(message: LatentMessage, kv: bool) -> Latent | KVPrefix:
    """A message part as what the model reads: a "latent" message as a Latent, a "kv" message (where taken) as a
    KVPrefix."""
    if message.kind == "kv" and kv:
        return message_kv(message)
    return message_latent(message)
