"""Held-out evaluation of a head: query -> own-response retrieval, reconstruction loss and the fidelity table.

Compared in one run: the trained head, earlier heads (``--compare``), an untrained head of the same shape (its
standardisation statistics estimated on training queries, as the first training step sees it), the teacher
applied to the query text, and the mean-pooled backbone states of the query (the input-centric baseline; it
lives in the backbone's space, so it is scored against the ``self`` teacher's embeddings of the responses).
The fidelity table (``training.fidelity``) turns latents into text by decoding and by reading them in context,
with floors, a reference and a text ceiling beside them. Writes ``eval.json`` and ``eval.png``.
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentcomm.model.backbone import Backbone, load_backbone
from latentcomm.model.losses import alignment_loss, reconstruction_loss
from latentcomm.cli.parser import backbone_source, count, existing_dir, head_folder, output_dir, parser
from latentcomm.model.embedder import DEFAULT_HEAD_DIR, GenerativeEmbedder
from latentcomm.model.reading import EVALUATION_INSTRUCTION
from latentcomm.model.teachers import load_teacher, mean_pooled_states
from latentcomm.training.fidelity import (decoding_sweep, fidelity_table, retrieval_scores, rows_as_dicts,
                                          table_markdown)
from latentcomm.training.responses import RESPONSES_DIR, read_responses
from latentcomm.training.restatement import heldout_sets, restatement_table
from latentcomm.training.restatement import rows_as_dicts as restatement_rows
from latentcomm.training.restatement import table_markdown as restatement_markdown
from latentcomm.training.targets import compute_targets, load_targets, targets_path


@torch.no_grad()
def heldout_losses(model: GenerativeEmbedder, queries: list[str], responses: list[str], targets: np.ndarray,
                   batch_size: int = 16) -> dict[str, float]:
    """Mean held-out losses: reconstruction of each response from its own latent (as a bare soft prompt, and
    inside ``EVALUATION_INSTRUCTION``), from the next query's latent (how much the latent says about *this*
    query rather than responses in general), and alignment (MSE)."""
    latents = torch.cat([model.latent_vectors(queries[i:i + batch_size]) for i in range(0, len(queries), batch_size)])
    others = latents.roll(1, dims=0)
    sums = np.zeros(4)
    for start in range(0, len(queries), batch_size):
        sl = slice(start, start + batch_size)
        n = len(queries[sl])
        sums += n * np.array([
            float(reconstruction_loss(*model.reconstruction_logits(latents[sl], responses[sl]))),
            float(reconstruction_loss(*model.reconstruction_logits(latents[sl], responses[sl],
                                                                   [EVALUATION_INSTRUCTION] * n))),
            float(reconstruction_loss(*model.reconstruction_logits(others[sl], responses[sl]))),
            float(alignment_loss(model.head.embed(latents[sl]), torch.from_numpy(targets[sl]))),
        ])
    recon, recon_in_context, recon_other, align = sums / len(queries)
    return {"recon": recon, "recon_in_context": recon_in_context, "recon_other_query": recon_other,
            "align_mse": align}


CALIBRATION_QUERIES = 256
"""Training queries on which an untrained head's standardisation statistics are estimated (here and in the
benchmark suite)."""


def training_queries(run: str | os.PathLike, limit: int) -> list[str]:
    """The first ``limit`` training queries of ``run`` that have responses."""
    return [r["query"] for r in read_responses(Path(run) / RESPONSES_DIR) if r["split"] == "train"][:limit]


@dataclass
class HeldOut:
    """Held-out queries, their own responses, and the responses' embeddings by the head's teacher and by the
    ``self`` teacher (the space of the mean-pooled baseline)."""

    queries: list[str]
    responses: list[str]
    targets: np.ndarray
    self_teacher: np.ndarray

    @classmethod
    def load(cls, run: str | os.PathLike, backbone: Backbone, limit: int | None = None, teacher: str = "minilm"
             ) -> "HeldOut":
        """The held-out split of ``run``; the ``self`` embeddings are computed for the held-out responses only
        (a cached targets file is used when it covers them)."""
        responses_dir = Path(run) / RESPONSES_DIR
        records = [r for r in read_responses(responses_dir) if r["split"] == "heldout"][:limit]
        if len(records) < 2:
            raise ValueError(f"{responses_dir} has {len(records)} held-out responses; need at least 2")
        ids, responses = [r["id"] for r in records], [r["response"] for r in records]
        if targets_path(responses_dir, "self").is_file():
            self_teacher = load_targets(responses_dir, "self").rows(ids)
        else:
            self_teacher = load_teacher("self", backbone=backbone).embed(responses)
        return cls([r["query"] for r in records], responses, compute_targets(responses_dir, teacher).rows(ids),
                   self_teacher)


def load_heads(run: str | os.PathLike, head: str | os.PathLike, *, backbone: str | None = None,
               compare: dict[str, str | os.PathLike] | None = None, limit: int | None = None, batch_size: int = 16
               ) -> tuple[Backbone, HeldOut, dict[str, GenerativeEmbedder]]:
    """The backbone, the held-out split of ``run`` and the heads compared: "trained head" (``head``), the
    ``compare`` heads by name, and "untrained head" (same shape, standardisation fitted on training queries)."""
    meta = json.loads((Path(head) / "config.json").read_text())
    bb = load_backbone(backbone or meta["backbone"])
    trained = GenerativeEmbedder.from_pretrained(head, backbone=bb)
    data = HeldOut.load(run, bb, limit, trained.config.teacher)
    heads = {"trained head": trained}
    heads |= {name: GenerativeEmbedder.from_pretrained(path, backbone=bb) for name, path in (compare or {}).items()}
    heads["untrained head"] = GenerativeEmbedder(bb, trained.config, seed=0).fit_standardization(
        training_queries(run, CALIBRATION_QUERIES), batch_size=batch_size)
    return bb, data, heads


def evaluate(run: str | os.PathLike, head: str | os.PathLike = DEFAULT_HEAD_DIR, *, backbone: str | None = None,
             compare: dict[str, str | os.PathLike] | None = None, limit: int | None = None, decode_limit: int = 100,
             max_new_tokens: int = 64, batch_size: int = 16, sweep: bool = False, restatement: int = 0
             ) -> dict[str, Any]:
    """All acceptance figures for ``head`` (and the ``compare`` heads, by name) on the held-out split of ``run``."""
    if decode_limit < 1 or (limit is not None and limit < 2):
        raise ValueError(f"need decode_limit >= 1 and limit >= 2 (or None), got {decode_limit} and {limit}")
    bb, data, heads = load_heads(run, head, backbone=backbone, compare=compare, limit=limit, batch_size=batch_size)
    teacher_name = heads["trained head"].config.teacher
    teacher = load_teacher(teacher_name, backbone=bb)
    trained = heads["trained head"]
    retrieval = {name: retrieval_scores(m.encode(data.queries, batch_size=batch_size, show_progress_bar=True),
                                        data.targets) for name, m in heads.items()}
    retrieval[f"teacher ({teacher_name}) on query"] = retrieval_scores(teacher.embed(data.queries), data.targets)
    retrieval["mean-pooled backbone (query) vs self teacher"] = retrieval_scores(
        mean_pooled_states(bb, data.queries, batch_size=batch_size), data.self_teacher)

    n = min(decode_limit, len(data.queries))
    reconstruction = {name: heldout_losses(model, data.queries, data.responses, data.targets, batch_size)
                      for name, model in heads.items()}
    fidelity = fidelity_table(heads, data.queries[:n], data.responses[:n], teacher, max_new_tokens=max_new_tokens,
                              batch_size=batch_size)
    decoding = decoding_sweep(trained, data.queries[:n], data.responses[:n], teacher, max_new_tokens=max_new_tokens,
                              batch_size=batch_size) if sweep else []
    restated = restatement_table(heads, heldout_sets(restatement, data.queries), bound_of="trained head",
                                 batch_size=batch_size) if restatement else []
    return {
        "run": str(run), "head": str(head), "backbone": bb.backbone_id, "teacher": teacher_name,
        "compare": {k: str(v) for k, v in (compare or {}).items()},
        "heldout_queries": len(data.queries), "fidelity_queries": n, "max_new_tokens": max_new_tokens,
        "retrieval": retrieval, "reconstruction": reconstruction, "fidelity": rows_as_dicts(fidelity),
        "fidelity_markdown": table_markdown(fidelity), "decoding_sweep": decoding,
        "restatement": restatement_rows(restated), "restatement_markdown": restatement_markdown(restated),
        "examples": [{"query": q, "response": r} for q, r in zip(data.queries[:3], data.responses[:3])],
    }


def plot_evaluation(result: dict[str, Any], path: str | os.PathLike) -> Path:
    """Retrieval R@1 / MRR per method, reconstruction loss per head, and the fidelity table as grouped bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_ret, ax_rec, ax_fid) = plt.subplots(1, 3, figsize=(18, 4.8), gridspec_kw={"width_ratios": [3, 1.4, 4]})
    names = list(result["retrieval"])
    x = np.arange(len(names))
    for offset, metric in ((-0.2, "r@1"), (0.2, "mrr")):
        ax_ret.bar(x + offset, [result["retrieval"][k][metric] for k in names], width=0.4, label=metric)
    ax_ret.set_xticks(x, [k.replace(" (", "\n(").replace(" vs ", "\nvs ") for k in names], fontsize=7)
    ax_ret.set(title=f"query -> own response retrieval ({result['heldout_queries']} held-out)", ylabel="score")
    ax_ret.legend()
    heads = list(result["reconstruction"])
    x = np.arange(len(heads))
    for offset, key, label in ((-0.2, "recon", "own latent"), (0.2, "recon_other_query", "other query's latent")):
        ax_rec.bar(x + offset, [result["reconstruction"][h][key] for h in heads], width=0.4, label=label)
    ax_rec.set_xticks(x, [h.replace(" head", "\nhead") for h in heads], fontsize=7)
    ax_rec.set(title="reconstruction loss", ylabel="held-out cross-entropy (nats/token)")
    ax_rec.legend(fontsize=7)
    rows = result["fidelity"]
    labels = [r["row"] if r["source"] == "-" else f"{r['row']}\n({r['source']})" for r in rows]
    x = np.arange(len(rows))
    colors = ["tab:gray" if r["source"] == "-" else "tab:blue" for r in rows]
    ax_fid.bar(x - 0.2, [r["cosine"] for r in rows], width=0.4, color=colors, label="MiniLM cosine")
    ax_fid.bar(x + 0.2, [r["r_at_1"] for r in rows], width=0.4, color=colors, alpha=0.5, hatch="//", label="R@1")
    for xi, r in zip(x, rows):
        ax_fid.annotate(f"loops {r['loops']:.0%}", (xi, max(r["cosine"], r["r_at_1"]) + 0.02), ha="center",
                        fontsize=6, rotation=90, va="bottom")
    ax_fid.set_xticks(x, labels, fontsize=6, rotation=60, ha="right")
    ax_fid.set(title=f"fidelity to the backbone's own response ({result['fidelity_queries']} held-out)", ylim=(0, 1.15))
    ax_fid.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = parser("evaluate", "Held-out retrieval and reconstruction of a head vs an untrained head and baselines.")
    ap.add_argument("--run", required=True, type=existing_dir,
                    help="run directory with held-out responses (and targets)")
    ap.add_argument("--head", type=head_folder, default=str(DEFAULT_HEAD_DIR),
                    help="head folder (default: the shipped head)")
    ap.add_argument("--backbone", type=backbone_source, default=None,
                    help="backbone (default: the one named in the head's config)")
    ap.add_argument("--compare", action="append", default=[], metavar="NAME=PATH",
                    help="an earlier head to evaluate beside it (repeatable), e.g. 'previous head=runs/old/head'")
    ap.add_argument("--out", type=output_dir, default=None,
                    help="folder for eval.json and eval.png (default: the head folder)")
    ap.add_argument("--limit", type=count(2), default=None, help="use only the first N held-out queries")
    ap.add_argument("--decode-limit", type=count(1), default=100, help="held-out queries of the fidelity table")
    ap.add_argument("--max-new-tokens", type=count(1), default=64)
    ap.add_argument("--sweep-decoding", action="store_true",
                    help="also decode the trained head's latents under several repetition settings (decoding_sweep)")
    ap.add_argument("--restatement", type=count(0), default=0, metavar="N",
                    help="also the held-out restatement table on N made-up notes and N held-out queries (0: off)")
    ap.add_argument("--restatement-only", action="store_true",
                    help="only the restatement table (needs --restatement N): restatement.json and .md, no retrieval")
    ap.add_argument("--batch-size", type=count(1), default=16)
    ap.add_argument("--threads", type=count(1), default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    compare = {}
    for spec in args.compare:
        name, sep, path = spec.rpartition("=")
        if not sep or not name:
            ap.error(f"argument --compare: expected NAME=PATH, got {spec!r}")
        try:
            compare[name] = head_folder(path)
        except argparse.ArgumentTypeError as err:
            ap.error(f"argument --compare: {err}")
    read_responses(args.run / RESPONSES_DIR)  # refused here, before any model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out or args.head)
    if args.restatement_only:
        if not args.restatement:
            ap.error("--restatement-only needs --restatement N")
        _, data, heads = load_heads(args.run, args.head, backbone=args.backbone, compare=compare, limit=args.limit,
                                    batch_size=args.batch_size)
        rows = restatement_table(heads, heldout_sets(args.restatement, data.queries), bound_of="trained head",
                                 batch_size=args.batch_size)
        out.mkdir(parents=True, exist_ok=True)
        (out / "restatement.json").write_text(json.dumps(restatement_rows(rows), indent=2) + "\n")
        (out / "restatement.md").write_text(restatement_markdown(rows) + "\n")
        print(restatement_markdown(rows))
        print(f"wrote {out / 'restatement.json'} and {out / 'restatement.md'}")
        return 0
    result = evaluate(args.run, args.head, backbone=args.backbone, compare=compare, limit=args.limit,
                      decode_limit=args.decode_limit, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      sweep=args.sweep_decoding, restatement=args.restatement)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_evaluation(result, out / "eval.png")
    print(json.dumps({"retrieval": result["retrieval"], "reconstruction": result["reconstruction"]}, indent=2))
    print(result["fidelity_markdown"])
    if result["restatement"]:
        print(result["restatement_markdown"])
    print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0
