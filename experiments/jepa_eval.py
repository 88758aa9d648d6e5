"""One head's held-out figures, a Ray task of ``latentcomm experiment jepa``: does its latent carry the response?

For a head: query -> own-response retrieval (in the space of the head's own teacher), held-out reconstruction
losses (own latent, in context, another query's latent) and its rows of the fidelity table. With ``text_only``:
the table's text rows (no message, query text, response text), read through the head's input settings. Every
fidelity row is judged by MiniLM, whatever teacher the head was trained on, so the rows of all heads compare.
"""
from __future__ import annotations

import os
from typing import Any

from latentcomm.model.backbone import load_backbone
from latentcomm.model.embedder import GenerativeEmbedder
from latentcomm.model.teachers import load_teacher
from latentcomm.training.evaluate import HeldOut, heldout_losses
from latentcomm.training.fidelity import generation_settings, latent_rows, retrieval_scores, rows_as_dicts, text_rows

JUDGE = "minilm"


def heldout_job(run: str, backbone: str, name: str, head: str, heldout: int, fidelity_queries: int,
                max_new_tokens: int, batch_size: int, text_only: bool = False, home: str | None = None
                ) -> dict[str, Any]:
    """Retrieval, reconstruction and fidelity rows of the head at ``head`` (or, ``text_only``, the text rows)."""
    if home:
        os.environ["LATENTCOMM_HOME"] = home
    model = GenerativeEmbedder.from_pretrained(head, backbone=load_backbone(backbone))
    judge = load_teacher(JUDGE)
    settings = generation_settings(max_new_tokens, batch_size, show_progress_bar=False)
    if text_only:
        data = HeldOut.load(run, model.backbone, fidelity_queries, JUDGE)
        rows = text_rows(model, data.queries, data.responses, judge.embed(data.responses), judge, settings=settings)
        return {"name": name, "fidelity": rows_as_dicts(rows)}
    data = HeldOut.load(run, model.backbone, heldout, model.config.teacher)
    n = min(fidelity_queries, len(data.queries))
    rows = latent_rows(name, model, data.queries[:n], judge.embed(data.responses[:n]), judge, settings=settings)
    return {"name": name, "teacher": model.config.teacher, "fingerprint": model.fingerprint,
            "retrieval": retrieval_scores(model.encode(data.queries, batch_size=batch_size), data.targets),
            "reconstruction": heldout_losses(model, data.queries, data.responses, data.targets, batch_size),
            "fidelity": rows_as_dicts(rows), "fidelity_queries": n}
