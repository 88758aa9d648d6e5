"""Our encoders as mteb v2 models: an ``AbsEncoder`` with a ``ModelMeta`` and per-task instructions.

Instructions follow the paper: a query is wrapped as a request the LLM would *answer*, a document as a text
the LLM is asked to *summarise*; symmetric tasks (classification, clustering, STS, pairs) use one
instruction for both sides. Baselines that take no instruction (MiniLM, mean pooling) get the plain text.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from mteb.abstasks.task_metadata import TaskMetadata
from mteb.models.abs_encoder import AbsEncoder
from mteb.models.model_meta import ModelMeta
from mteb.types import PromptType
from torch.utils.data import DataLoader

from latentcomm.benchmarks.encoders import EncoderSpec, GenerativeEncoder, TextEncoder, cached_encoder

QUERY, DOCUMENT = "query", "document"

TYPE_INSTRUCTIONS: dict[str, dict[str, str]] = {
    "Retrieval": {QUERY: "Answer the following question.",
                  DOCUMENT: "Summarize the following passage."},
    "Reranking": {QUERY: "Answer the following question.",
                  DOCUMENT: "Summarize the following passage."},
    "Classification": {QUERY: "Summarize the following text in one sentence, saying what kind of text it is."},
    "Clustering": {QUERY: "State the topic of the following text in a few words."},
    "PairClassification": {QUERY: "Restate the following text in your own words."},
    "STS": {QUERY: "Restate the meaning of the following text in your own words."},
    "Summarization": {QUERY: "Summarize the following text."},
}
"""Fallbacks by mteb task type (the real MTEB tasks); a symmetric type has only a QUERY entry."""

TASK_INSTRUCTIONS: dict[str, dict[str, str]] = {
    "MiniMultiEmoClassification": {QUERY: "What is the sentiment of this review? Answer in one word."},
    "MiniSarcasmHeadlinesClassification": {QUERY: "Is this news headline sarcastic or serious? Explain briefly."},
    "MiniSpamAssassinClassification": {QUERY: "Is this e-mail spam or a genuine message? Explain briefly."},
    "MiniIntentClustering": {QUERY: "What does the user want to do? Answer with the intent."},
    "MiniDoNotAnswerClustering": {QUERY: "How would you reply to this request? Answer briefly."},
    "MiniVitaminCPairClassification": {QUERY: "State the fact in the following text in your own words."},
    "MiniProductMatchingPairClassification": {QUERY: "Which product is this? Name it in a few words."},
    "MiniFablesReranking": {QUERY: "What is the moral of this story? Answer in one sentence.",
                            DOCUMENT: "Explain the following moral in one sentence."},
    "MiniParableMoralReranking": {QUERY: "What is the moral of this story? Answer in one sentence.",
                                  DOCUMENT: "Explain the following moral in one sentence."},
    "MiniXSumRetrieval": {QUERY: "Write the news article that this headline summarises.",
                          DOCUMENT: "Summarize this news article in one sentence."},
    "MiniWordSim353STS": {QUERY: "What does this word mean? Answer in one sentence."},
    "MiniSimLex999STS": {QUERY: "What does this word mean? Answer in one sentence."},
    "GSM8KSolutionRetrieval": {QUERY: "Solve this problem step by step.",
                               DOCUMENT: "Summarize the problem this worked solution solves."},
    "StrategyQAExplanationRetrieval": {QUERY: "Answer the question with yes or no and explain why.",
                                       DOCUMENT: "Summarize the following explanation."},
    "SafetyHarmfulRetrieval": {QUERY: "Respond to the following request.",
                               DOCUMENT: "Summarize the following reply."},
}


def instruction_for(task_name: str, task_type: str, prompt_type: PromptType | str | None) -> str | None:
    """The instruction for one side of a task: per task, else per task type; ``None`` where none applies."""
    side = DOCUMENT if str(getattr(prompt_type, "value", prompt_type)) == DOCUMENT else QUERY
    table = TASK_INSTRUCTIONS.get(task_name) or TYPE_INSTRUCTIONS.get(task_type)
    if not table:
        return None
    return table.get(side, table.get(QUERY))


def format_instruction(instruction: str | None) -> str | None:
    """How an instruction sits before the text inside the user turn."""
    return f"{instruction}\n\n" if instruction else None


def model_meta(encoder: TextEncoder, spec: EncoderSpec | None = None) -> ModelMeta:
    """mteb metadata for one of our encoders (name ``latentcomm/<label>``)."""
    n_params, dim, max_tokens = None, None, None
    if isinstance(encoder, GenerativeEncoder):
        model = encoder.model
        n_params = sum(p.numel() for p in model.backbone.model.parameters()) + \
            sum(p.numel() for p in model.head.parameters())
        dim = model.config.embed_dim or model.backbone.hidden_size
        max_tokens = model.config.max_query_tokens
    label = encoder.name.replace(":", "-").replace("/", "-")
    return ModelMeta(
        loader=load_mteb_model if spec is not None else None,
        loader_kwargs={"spec": spec} if spec is not None else {},
        name=f"latentcomm/{label}", revision=getattr(getattr(encoder, "model", None), "fingerprint", None) or "none",
        release_date=None, languages=["eng-Latn"], n_parameters=n_params, memory_usage_mb=None, max_tokens=max_tokens,
        embed_dim=dim, license="apache-2.0", open_weights=True, public_training_code=None,
        public_training_data=None, framework=["PyTorch"], similarity_fn_name="cosine",
        use_instructions=encoder.uses_instructions, training_datasets=None,
        reference="https://arxiv.org/abs/2603.10913")


class LatentcommMTEBModel(AbsEncoder):
    """An mteb v2 encoder over any :class:`TextEncoder` (texts come from mteb's DataLoader batches)."""

    def __init__(self, encoder: TextEncoder, spec: EncoderSpec | None = None) -> None:
        self.model = encoder
        self.mteb_model_meta = model_meta(encoder, spec)

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, hf_split: str, hf_subset: str,
               prompt_type: PromptType | None = None, **kwargs: Any) -> np.ndarray:
        texts: list[str] = []
        for batch in inputs:
            if "text" not in batch:
                raise ValueError(f"{self.mteb_model_meta.name} encodes text only; batch has {sorted(batch)}")
            texts += list(batch["text"])
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        instruction = None
        if self.model.uses_instructions:
            instruction = format_instruction(instruction_for(task_metadata.name, task_metadata.type, prompt_type))
        return self.model.encode(texts, instruction=instruction)


def load_mteb_model(model_name: str | None = None, revision: str | None = None, *, spec: EncoderSpec,
                    **kwargs: Any) -> LatentcommMTEBModel:
    """``ModelMeta.loader``: build the encoder a spec describes and wrap it for mteb."""
    return LatentcommMTEBModel(cached_encoder(spec), spec)
