"""Grounded samples: a training query rewritten to hold its own response as context, the target unchanged.

A head trained only on bare questions learns latents of what the backbone would say from its own knowledge;
given a passage and a question about it (a relay agent's input), its latent drops the passage's words. With
``grounding_share`` > 0 a share of the samples show the response inside the input — before the original
question, or before a request to restate it — and are still trained to reconstruct (and align to) that response,
so the latent must carry words its input gives it. This is the autoencoding objective of context compressors
(ICAE, 500xCompressor) folded into LLM2Vec-Gen's: it needs no new data and no generation.

The templates never use the words of the main job's tasks (``actors.tasks``: "Note:"), so the relay evaluation
does not read a phrasing the head was trained on.
"""
from __future__ import annotations

from latentcomm.model.reading import draw_instruction

GROUNDING_TEMPLATES: tuple[str, ...] = (
    "{response}\n\n{query}",
    "Context: {response}\n\nQuestion: {query}",
    "Here is some information:\n{response}\n\nUsing it, answer this: {query}",
    "Text:\n{response}\n\nRepeat the text above.",
    "{response}\n\nRestate what the passage above says.",
    "Document: {response}\n\nWhat does the document say?",
)


def grounded_query(key: str, query: str, response: str, share: float) -> str:
    """``query``, or for a share ``share`` of keys a template holding ``response`` (and ``query``).

    Deterministic in ``key`` (e.g. ``"<seed>:<epoch>:<query id>"``), so a resumed run sees the same samples.
    """
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"grounding share must be in [0, 1], got {share}")
    template = draw_instruction(f"grounding:{key}", share, GROUNDING_TEMPLATES)
    return query if template is None else template.format(response=response, query=query)
