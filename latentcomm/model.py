"""GenerativeEmbedder: a frozen causal LM plus a compression head — compress, encode, embed, decode, respond."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from latentcomm.backbone import DEFAULT_BACKBONE, Backbone, load_backbone
from latentcomm.config import HeadConfig
from latentcomm.errors import HeadMismatchError
from latentcomm.generation import Sampling, generate
from latentcomm.heads import CompressionHead, FeatureStandardize, embedding_statistics, initial_token_embeddings
from latentcomm.latent import Latent, LatentError, check_vectors
from latentcomm.losses import IGNORE_INDEX, AlignLoss, alignment_loss, reconstruction_loss

log = logging.getLogger(__name__)

HEAD_FORMAT = "latentcomm-head"
HEAD_FORMAT_VERSION = 2
"""2: MLP_recon standardises its input (format 1 heads fed raw states and cannot be loaded)."""
DEFAULT_HEAD_DIR = Path(__file__).parent / "pretrained" / DEFAULT_BACKBONE
"""The trained head shipped for the default backbone (made by ``latentcomm train``)."""
_SPLIT = "\x00LATENTCOMM_QUERY\x00"


@dataclass
class LossOutput:
    """The weighted training loss and its two parts (floats detached for logging)."""

    loss: torch.Tensor
    recon: float
    align: float


def _as_texts(texts: str | Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    if not texts:
        raise ValueError(f"{what} is empty: pass at least one string")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{what} must be strings, got {sorted(set(bad))}")
    return texts


def _batches(order: list[int], batch_size: int, show: bool | None, desc: str) -> Iterator[list[int]]:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(order), batch_size)
    if show is None:
        show = len(starts) > 1 and sys.stderr.isatty()
    for start in tqdm(starts, desc=desc, disable=not show, unit="batch"):
        yield order[start:start + batch_size]


def _pad(rows: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad id lists to one length; returns (ids, attention_mask) as (B, T) tensors."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


class GenerativeEmbedder(nn.Module):
    """LLM2Vec-Gen on a frozen backbone. Only ``head`` (special tokens + MLP_recon + MLP_align) is a submodule,
    so ``parameters()``, ``state_dict()`` and optimizers see exactly what trains.

    Data flow: text -> query tokens ⊕ m thought ⊕ n compression tokens -> frozen LLM -> last-layer states
    of the n compression tokens (B, n, H) -> MLP_recon -> latent p (B, n, H) -> either a soft prompt for
    ``decode`` or MLP_align + mean -> embedding (B, D).
    """

    def __init__(self, backbone: Backbone, config: HeadConfig | None = None, *, seed: int = 0) -> None:
        """A fresh (untrained) head on ``backbone``; the same ``seed`` gives the same head in any process."""
        super().__init__()
        self.backbone = backbone
        self.config = config or HeadConfig()
        vocab = backbone.model.get_input_embeddings().weight
        init = initial_token_embeddings(vocab, self.config.num_special, seed)
        prompt_mean, prompt_scale = embedding_statistics(vocab)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            head = CompressionHead(self.config, backbone.hidden_size, init, prompt_mean=prompt_mean,
                                   prompt_scale=prompt_scale)
        self.head = head.to(backbone.device)
        self.padding_side = "left"
        self._template_cache: dict[str | None, tuple[list[int], list[int]]] = {}
        self._fingerprint: tuple[tuple[int, ...], str] | None = None
        self.eval()  # inference by default; a training loop calls train()

    # ---- identity ----------------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        """Hash of the backbone identity, the head config and the head weights (recomputed after updates)."""
        params = [p for _, p in sorted(self.head.state_dict(keep_vars=True).items())]
        versions = tuple(p._version for p in params)
        if self._fingerprint is None or self._fingerprint[0] != versions:
            digest = hashlib.sha256(self.backbone.backbone_id.encode())
            digest.update(self.config.to_json().encode())
            for name, tensor in sorted(self.head.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = (versions, digest.hexdigest()[:16])
        return self._fingerprint[1]

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # ---- tokenisation ------------------------------------------------------------------------------
    def _template(self, prompt: str | None) -> tuple[list[int], list[int]]:
        """Token ids before and after the query (chat template and instruction), cached per prompt."""
        if prompt not in self._template_cache:
            tok = self.backbone.tokenizer
            content = (prompt or "") + _SPLIT
            if self.config.chat_template and tok.chat_template:
                text = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                               tokenize=False)
                before, after = text.split(_SPLIT)
                ids = (tok(before, add_special_tokens=False).input_ids, tok(after, add_special_tokens=False).input_ids)
            else:
                ids = (tok(content.split(_SPLIT)[0], add_special_tokens=True).input_ids, [])
            self._template_cache[prompt] = ids
        return self._template_cache[prompt]

    def query_token_ids(self, texts: list[str], prompt: str | None = None) -> list[list[int]]:
        """Template + query ids per text; the query alone is truncated to fit ``max_query_tokens``."""
        before, after = self._template(prompt)
        budget = max(self.config.max_query_tokens - len(before) - len(after), 0)
        encoded = self.backbone.tokenizer(texts, add_special_tokens=False).input_ids
        return [before + ids[:budget] + after for ids in encoded]

    def _special_inputs(self, texts: list[str], prompt: str | None) -> tuple[torch.Tensor, ...]:
        """Inputs with the special tokens appended: (embeds (B,T,H), mask (B,T), positions (B,T), compression (B,T))."""
        cfg, bb = self.config, self.backbone
        k = cfg.num_special
        rows = [ids + [bb.tokenizer.pad_token_id] * k for ids in self.query_token_ids(texts, prompt)]
        ids, mask = _pad(rows, bb.tokenizer.pad_token_id, self.padding_side)
        ids, mask = ids.to(bb.device), mask.to(bb.device)
        ends = mask.cumsum(-1)
        lengths = mask.sum(-1, keepdim=True)
        slot = ends - (lengths - k) - 1  # 0..k-1 on the special positions of each row
        is_special = (mask == 1) & (slot >= 0)
        special = self.head.special().to(bb.dtype)[slot.clamp(0, k - 1)]
        embeds = torch.where(is_special[..., None], special, bb.embed_tokens(ids))
        positions = (ends - 1).clamp(min=0)
        return embeds, mask, positions, is_special & (slot >= cfg.num_thought)

    # ---- the differentiable path ---------------------------------------------------------------------
    def latent_vectors(self, texts: list[str], prompt: str | None = None) -> torch.Tensor:
        """(B, n, H) float32 latents, differentiable w.r.t. the head (the backbone is frozen)."""
        embeds, mask, positions, compression = self._special_inputs(texts, prompt)
        hidden = self.backbone.model.base_model(inputs_embeds=embeds, attention_mask=mask,
                                                position_ids=positions).last_hidden_state
        states = hidden[compression].view(len(texts), self.config.num_compression, -1)
        return self.head.latent(states)

    def reconstruction_logits(self, latent: torch.Tensor, responses: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of each response token given the latent as soft prompt, and the matching labels (B, L)."""
        bb = self.backbone
        tok = bb.tokenizer
        eos = tok.eos_token_id
        limit = self.config.max_response_tokens
        rows = [ids[:limit - 1] + [eos] for ids in tok(responses, add_special_tokens=False).input_ids]
        ids, mask = _pad(rows, tok.pad_token_id, "right")
        ids, mask = ids.to(bb.device), mask.to(bb.device)
        n = latent.shape[1]
        inputs = torch.cat([latent.to(bb.dtype), bb.embed_tokens(ids)], dim=1)
        full_mask = torch.cat([mask.new_ones(len(rows), n), mask], dim=1)
        positions = torch.arange(inputs.shape[1], device=bb.device).expand(len(rows), -1)
        hidden = bb.model.base_model(inputs_embeds=inputs, attention_mask=full_mask,
                                     position_ids=positions).last_hidden_state
        logits = bb.model.get_output_embeddings()(hidden[:, n - 1:-1])
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        return logits, labels

    def forward(self, queries: list[str], responses: list[str], targets: torch.Tensor, *,
                recon_weight: float = 1.0, align_weight: float = 1.0, align_loss: AlignLoss = "mse",
                prompt: str | None = None) -> LossOutput:
        """Training loss: recon_weight * L_recon + align_weight * L_align for one batch."""
        if not (len(queries) == len(responses) == len(targets)):
            raise ValueError(f"batch sizes differ: {len(queries)} queries, {len(responses)} responses, "
                             f"{len(targets)} targets")
        latent = self.latent_vectors(queries, prompt)
        zero = latent.new_zeros(())
        recon = reconstruction_loss(*self.reconstruction_logits(latent, responses)) if recon_weight else zero
        align = alignment_loss(self.head.embed(latent), targets, align_loss) if align_weight else zero
        total = recon_weight * recon + align_weight * align
        return LossOutput(total, float(recon.detach()), float(align.detach()))

    @torch.no_grad()
    def fit_standardization(self, texts: Sequence[str], *, batch_size: int = 16, prompt: str | None = None
                            ) -> "GenerativeEmbedder":
        """Estimate the standardisation statistics of MLP_recon's and MLP_align's inputs on ``texts``; returns self.

        No parameter changes: this makes an untrained head what the first training step sees. Training keeps
        these statistics itself; without them an untrained head's latents are the raw compression states
        (see ``CompressionHead``), which no backbone can read as a prompt.
        """
        texts = _as_texts(texts, "calibration texts")
        layers = {m: m.momentum for m in self.head.modules() if isinstance(m, FeatureStandardize)}
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a plain average over all batches
        self.train()
        try:
            for start in range(0, len(texts), batch_size):
                self.head.embed(self.latent_vectors(texts[start:start + batch_size], prompt))
        finally:
            for layer, momentum in layers.items():
                layer.momentum = momentum
            self.eval()
        return self

    # ---- the public, batched inference API ------------------------------------------------------------
    @torch.no_grad()
    def compress(self, texts: str | Sequence[str], *, batch_size: int = 16, prompt: str | None = None,
                 show_progress_bar: bool | None = None) -> Latent:
        """Texts -> Latent (B, n, H): one forward pass per batch, no generation."""
        texts = _as_texts(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), self.config.num_compression, self.backbone.hidden_size)
        for idx in _batches(order, batch_size, show_progress_bar, "compress"):
            out[idx] = self.latent_vectors([texts[i] for i in idx], prompt).float().cpu()
        return Latent(out, self.fingerprint, self.backbone.backbone_id)

    @torch.no_grad()
    def embed_latent(self, latent: Latent, *, normalize_embeddings: bool = False, convert_to_numpy: bool = True
                     ) -> np.ndarray | torch.Tensor:
        """Latent (B, n, H) -> embeddings (B, D) through MLP_align + mean pooling. Needs this very head."""
        self._check_latent(latent, same_head=True)
        emb = self.head.embed(latent.vectors.to(self.device)).float()
        if normalize_embeddings:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy() if convert_to_numpy else emb.cpu()

    def encode(self, sentences: str | Sequence[str], *, batch_size: int = 32, show_progress_bar: bool | None = None,
               normalize_embeddings: bool = False, convert_to_numpy: bool = True, convert_to_tensor: bool = False,
               prompt: str | None = None) -> np.ndarray | torch.Tensor:
        """Embed texts (sentence-transformers conventions): (N, D) array, or (D,) for a single string.

        ``prompt`` is an instruction placed before each text inside the user turn. Texts are sorted by
        length internally to waste less padding; the output follows the input order.
        """
        single = isinstance(sentences, str)
        latent = self.compress(sentences, batch_size=batch_size, prompt=prompt, show_progress_bar=show_progress_bar)
        emb = self.embed_latent(latent, normalize_embeddings=normalize_embeddings,
                                convert_to_numpy=convert_to_numpy and not convert_to_tensor)
        return emb[0] if single else emb

    @torch.no_grad()
    def decode(self, latent: Latent, *, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
               repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
               seed: int | None = None, batch_size: int = 16, use_cache: bool = True,
               show_progress_bar: bool | None = None) -> list[str]:
        """Latent -> text: the frozen LLM continues from the latent as a soft prompt (batched, KV-cached).

        Any head on the same backbone can produce the latent; greedy unless ``temperature`` > 0.
        """
        self._check_latent(latent, same_head=False)
        sampling = Sampling(temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        vectors = latent.vectors.to(self.device, self.backbone.dtype)
        mask = torch.ones(vectors.shape[:2], dtype=torch.long, device=self.device)
        texts: list[str] = []
        for idx in _batches(list(range(len(latent))), batch_size, show_progress_bar, "decode"):
            texts += self._generate(vectors[idx], mask[idx], max_new_tokens, sampling, seed, use_cache)
        return texts

    @torch.no_grad()
    def respond(self, texts: str | Sequence[str], *, max_new_tokens: int = 128, temperature: float = 0.0,
                top_p: float = 1.0, repetition_penalty: float = 1.1, no_repeat_ngram_size: int = 4,
                seed: int | None = None, batch_size: int = 8, use_cache: bool = True,
                show_progress_bar: bool | None = None) -> list[str]:
        """The backbone's own answer to each text through its chat template (no special tokens involved)."""
        texts = _as_texts(texts)
        sampling = Sampling(temperature, top_p, repetition_penalty, no_repeat_ngram_size)
        tok = self.backbone.tokenizer
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        answers: list[str] = [""] * len(texts)
        for idx in _batches(order, batch_size, show_progress_bar, "respond"):
            rows = self.query_token_ids([texts[i] for i in idx])
            ids, mask = _pad(rows, tok.pad_token_id, "left")
            ids, mask = ids.to(self.device), mask.to(self.device)
            outs = self._generate(self.backbone.embed_tokens(ids), mask, max_new_tokens, sampling, seed, use_cache)
            for i, text in zip(idx, outs):
                answers[i] = text
        return answers

    def _generate(self, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, sampling: Sampling,
                  seed: int | None, use_cache: bool) -> list[str]:
        tok = self.backbone.tokenizer
        eos = {tok.eos_token_id} | set(np.atleast_1d(self.backbone.model.generation_config.eos_token_id or []).tolist())
        ids = generate(self.backbone.model, embeds, mask, max_new_tokens=max_new_tokens, eos_token_ids=eos,
                       pad_token_id=tok.pad_token_id, sampling=sampling, seed=seed, use_cache=use_cache)
        return [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]

    def _check_latent(self, latent: Latent, *, same_head: bool) -> None:
        if not isinstance(latent, Latent):
            raise TypeError(f"expected a Latent, got {type(latent).__name__} (wrap arrays with Latent.from_numpy)")
        check_vectors(latent.vectors, self.backbone.hidden_size)
        if latent.backbone_id != self.backbone.backbone_id:
            raise HeadMismatchError(f"latent comes from backbone {latent.backbone_id}, this model runs "
                                    f"{self.backbone.backbone_id}")
        if same_head and latent.fingerprint != self.fingerprint:
            raise HeadMismatchError(f"latent was made by head {latent.fingerprint}, this head is {self.fingerprint}; "
                                    "embedding needs the producing head (decoding only needs the same backbone)")

    # ---- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write only the trainable parts: ``head.safetensors`` (fp32) and ``config.json``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().cpu().contiguous() for k, v in self.head.state_dict().items()}
        save_file(state, directory / "head.safetensors", metadata={"fingerprint": self.fingerprint})
        meta = {"format": HEAD_FORMAT, "format_version": HEAD_FORMAT_VERSION, "backbone": self.backbone.name,
                "backbone_id": self.backbone.backbone_id, "fingerprint": self.fingerprint,
                "head": self.config.to_dict()}
        (directory / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike = DEFAULT_HEAD_DIR, *, backbone: Backbone | str | None = None,
                        device: torch.device | str | None = None, dtype: torch.dtype | None = None
                        ) -> "GenerativeEmbedder":
        """Load a saved head onto its backbone (loaded by name from the head's config unless given)."""
        directory = Path(directory)
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"no head at {directory} (expected config.json and head.safetensors)")
        meta = json.loads(config_path.read_text())
        if meta.get("format") != HEAD_FORMAT:
            raise HeadMismatchError(f"{config_path} is not a latentcomm head")
        if meta.get("format_version") != HEAD_FORMAT_VERSION:
            raise HeadMismatchError(f"{config_path} has head format {meta.get('format_version')}; this latentcomm "
                                    f"reads format {HEAD_FORMAT_VERSION} only (retrain the head)")
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone or meta["backbone"], device=device, dtype=dtype)
        if backbone.backbone_id != meta["backbone_id"]:
            raise HeadMismatchError(f"head {directory} was trained on backbone {meta['backbone_id']} "
                                    f"({meta['backbone']}), not on {backbone.backbone_id} ({backbone.name})")
        model = cls(backbone, HeadConfig.from_dict(meta["head"]))
        state = load_file(directory / "head.safetensors")
        model.head.load_state_dict({k: v.to(backbone.device) for k, v in state.items()})
        if model.fingerprint != meta["fingerprint"]:
            raise HeadMismatchError(f"head weights in {directory} do not match the fingerprint in its config")
        return model


def load_embedder(head: str | os.PathLike | None = None, *, backbone: str | os.PathLike | None = None,
                  device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                  config: HeadConfig | None = None) -> GenerativeEmbedder:
    """The usual entry point: a saved head (the shipped default when ``head`` is None) on its backbone.

    With a ``backbone`` other than the default and no head, or when no default head is shipped, returns
    an untrained head (``config`` or the defaults) and logs that it is untrained.
    """
    if head is not None:
        return GenerativeEmbedder.from_pretrained(head, backbone=backbone, device=device, dtype=dtype)
    if backbone in (None, DEFAULT_BACKBONE) and config is None and (DEFAULT_HEAD_DIR / "config.json").is_file():
        return GenerativeEmbedder.from_pretrained(DEFAULT_HEAD_DIR, device=device, dtype=dtype)
    log.warning("no trained head given: using an untrained head on %s", backbone or DEFAULT_BACKBONE)
    return GenerativeEmbedder(load_backbone(backbone or DEFAULT_BACKBONE, device=device, dtype=dtype), config)
