"""The official ``llm2vec-gen`` package as a peer of ``bench encode``, built on our backbone (never installed here).

Install it yourself, without its pinned dependencies (flash-attn, mteb 1.x, ...), and ``peft``:

    pip install --no-deps llm2vec-gen==0.1.3 && pip install peft

The peer is what ``LLM2VecGenModel.encode`` runs on a released checkpoint, with our backbone and head shape: the
texts with the special tokens appended (no chat template), one left-padded pass of the backbone (a
``PeftModel`` whose only adapter is the special tokens' embeddings, as in the paper: the LLM is frozen), the
last ``num_compression`` states through the reconstruction and alignment projections, then their mean. Its
weights are random (speed does not depend on them). The shim: transformers 5 renamed the tokenizer's
``additional_special_tokens``, which ``encode`` reads; ``encode`` itself runs unchanged (its ``generate`` and
the loaders hard-code "cuda" or the Hub and are not used).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch

from latentcomm.model.backbone import resolve_backbone
from latentcomm.model.config import HeadConfig

PACKAGE = "llm2vec_gen"
INSTALL = "pip install --no-deps llm2vec-gen==0.1.3 && pip install peft"


def missing() -> str | None:
    """Why the official package cannot run here (None when it can)."""
    absent = [name for name in (PACKAGE, "peft") if importlib.util.find_spec(name) is None]
    if absent:
        return f"{' and '.join(absent)} not installed ({INSTALL}); the official peer was not measured"
    return None


class _SpecialTokensName:
    """The tokenizer under its transformers-4 name for the special tokens (``additional_special_tokens``)."""

    def __init__(self, tokenizer: Any, special_tokens: list[str]) -> None:
        self._tokenizer = tokenizer
        self.additional_special_tokens = special_tokens

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


class OfficialEncoder:
    """``llm2vec_gen.LLM2VecGenModel`` on ``backbone`` with the shape of ``head``; ``encode(texts)`` -> (N, D)."""

    def __init__(self, backbone: str, head: HeadConfig, embed_dim: int, dtype: torch.dtype, seed: int = 0) -> None:
        from llm2vec_gen.models import EncoderDecoderModel, LLM2VecGenModel, ProjectionModel
        from peft import TrainableTokensConfig, get_peft_model
        from transformers import AutoModel, AutoTokenizer

        source = resolve_backbone(backbone)
        tokenizer = AutoTokenizer.from_pretrained(source)
        special = [f"<|thought_{i}|>" for i in range(head.num_thought)] + \
            [f"<|compress_{i}|>" for i in range(head.num_compression)]
        tokenizer.add_special_tokens({"additional_special_tokens": special})
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        torch.manual_seed(seed)
        encoder = AutoModel.from_pretrained(source, dtype=dtype)
        encoder.resize_token_embeddings(len(tokenizer))
        ids = tokenizer.convert_tokens_to_ids(special)
        encoder = get_peft_model(encoder, TrainableTokensConfig(target_modules=["embed_tokens"], token_indices=ids))
        encoder.config.num_special_tokens = len(special)
        hidden = encoder.config.hidden_size
        model = EncoderDecoderModel(encoder_model=encoder, decoder_model=encoder,
                                    encoding_mode=f"last_{head.num_compression}_tokens",
                                    reconstruction_mlp=ProjectionModel(hidden, hidden, dtype=dtype),
                                    alignment_mlp=ProjectionModel(hidden, embed_dim, dtype=dtype))
        model.eval()
        self.model = LLM2VecGenModel(model, _SpecialTokensName(tokenizer, special), device="cpu")
        self.source = Path(source)

    def encode(self, texts: list[str], batch_size: int) -> torch.Tensor:
        """Embeddings (N, D), ``batch_size`` texts per ``LLM2VecGenModel.encode`` call, in the given order."""
        return torch.cat([self.model.encode(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])

    def tokens(self, texts: list[str], batch_size: int) -> int:
        """Positions the backbone runs over for ``texts`` (padding included), for the work comparison."""
        tok = self.model.tokenizer
        total = 0
        for i in range(0, len(texts), batch_size):
            batch = [t + "".join(tok.additional_special_tokens) for t in texts[i:i + batch_size]]
            total += tok(batch, padding=True, return_tensors="pt")["input_ids"].numel()
        return total
