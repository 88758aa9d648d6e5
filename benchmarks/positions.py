"""``latentcomm bench positions``: where along a response the latent informs the backbone, to choose how much of
each response training reconstructs (``--max-response-tokens``; the reconstruction pass dominates the step).

On held-out queries of a run, the backbone's per-token loss (NLL) of its own response at each position, read
three ways: after the head's latent (a bare soft prompt, as training reconstructs it), after the query as a user
turn (the text ceiling) and after an empty user turn (the floor: what the backbone predicts from the response's
own prefix). The latent's gain at a position is floor - latent; the share of its whole gain within the first K
tokens is what a cut at K keeps of the signal the head learned from. A response longer than
``max_response_tokens`` is scored without an end token (``response_ids``); the end token of one that fills it
exactly is scored apart (it marks where generation stopped, not content). Writes ``positions.json`` and
``positions.png``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latentcomm.cli.parser import count, existing_dir, head_folder, output_dir, parser
from latentcomm.model.embedder import GenerativeEmbedder, load_embedder
from latentcomm.model.losses import token_losses
from latentcomm.model.prompt import positions_of

READINGS = ("latent", "text", "empty")
CUTS = (8, 16, 24, 32, 48)


def _answer_nll(model: GenerativeEmbedder, prompt: torch.Tensor, answer: list[int]) -> np.ndarray:
    """Per-token NLL (len(answer),) of ``answer`` after ``prompt`` embeddings (T, H), one row, no padding."""
    bb = model.backbone
    ids = torch.tensor(answer, device=bb.device)
    embeds = torch.cat([prompt.to(bb.dtype), bb.embed_tokens(ids[:-1])])[None]
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=bb.device)
    hidden, _ = bb.hidden_states(embeds, mask, positions_of(mask))
    logits = bb.model.get_output_embeddings()(hidden[0, prompt.shape[0] - 1:])
    return token_losses(logits, ids, [len(answer)])[0].cpu().numpy()


@torch.no_grad()
def response_nll(model: GenerativeEmbedder, queries: list[str], responses: list[str], *, batch_size: int = 16
                 ) -> dict[str, list[np.ndarray]]:
    """Each response's per-token NLL after the latent of its query (read as training reconstructs it:
    ``reconstruction_logits``), the query as text, and an empty user turn."""
    answers = model.response_ids(responses)
    out: dict[str, list[np.ndarray]] = {reading: [] for reading in READINGS}
    for start in range(0, len(queries), batch_size):
        batch = slice(start, start + batch_size)
        logits, labels = model.reconstruction_logits(model.latent_vectors(queries[batch]), responses[batch])
        out["latent"] += [row.cpu().numpy() for row in token_losses(logits, labels, [len(a) for a in answers[batch]])]
    embeds, mask = model.respond_prompts([""])
    empty = embeds[0][mask[0].bool()]
    for query, answer in zip(queries, answers):
        embeds, mask = model.respond_prompts([query])
        out["text"].append(_answer_nll(model, embeds[0][mask[0].bool()], answer))
        out["empty"].append(_answer_nll(model, empty, answer))
    return out


def summarise(nll: dict[str, list[np.ndarray]], cut: list[bool]) -> dict[str, Any]:
    """Mean NLL per position (end tokens of cut responses apart) and the share of the latent's and the text's gain
    over the floor within the first K tokens, for each K of ``CUTS`` (None where the reading gains nothing over the
    floor in all: there is no gain to share out)."""
    content = {r: [row[:-1] if was_cut else row for row, was_cut in zip(rows, cut)] for r, rows in nll.items()}
    width = max(len(row) for row in content["latent"])
    by_position = {r: [float(np.mean([row[p] for row in rows if len(row) > p])) for p in range(width)]
                   for r, rows in content.items()}
    counts = [sum(len(row) > p for row in content["latent"]) for p in range(width)]
    shares = {}
    for reading in ("latent", "text"):
        gains = [floor - row for floor, row in zip(content["empty"], content[reading])]
        total = sum(g.sum() for g in gains)
        shares[reading] = {k: float(sum(g[:k].sum() for g in gains) / total) if total > 0 else None
                           for k in CUTS if k < width}
    tokens = sum(len(row) for row in content["latent"])
    return {"by_position": by_position, "tokens_at_position": counts,
            "share_of_gain_within_first": shares,
            "share_of_tokens_within_first": {k: sum(min(len(row), k) for row in content["latent"]) / tokens
                                             for k in CUTS if k < width},
            "mean": {r: float(np.mean(np.concatenate(rows))) for r, rows in content.items()},
            "mean_within_first": {k: {r: float(np.mean(np.concatenate([row[:k] for row in rows])))
                                      for r, rows in content.items()} for k in CUTS if k < width},
            "end_token_of_cut_responses": {r: float(np.mean([row[-1] for row, c in zip(rows, cut) if c]))
                                           for r, rows in nll.items()} if any(cut) else None}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for reading, style in zip(READINGS, ("-", "--", ":")):
        values = result["by_position"][reading]
        left.plot(range(1, len(values) + 1), values, style, label=reading)
    left.set_xlabel("response token")
    left.set_ylabel("mean NLL (nats)")
    left.set_title(f"{result['samples']} held-out responses of {result['head']}", fontsize=9)
    left.legend()
    for reading in ("latent", "text"):
        shares = {k: v for k, v in result["share_of_gain_within_first"][reading].items() if v is not None}
        right.plot([int(k) for k in shares], list(shares.values()), "o-", label=f"{reading}: gain over empty")
    tokens = result["share_of_tokens_within_first"]
    right.plot([int(k) for k in tokens], list(tokens.values()), "s:", color="gray", label="tokens")
    right.set_xlabel("first K response tokens")
    right.set_ylabel("share within the first K")
    right.set_ylim(0, 1.05)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = parser("bench positions", __doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument("--run", required=True, type=existing_dir, help="run directory with held-out responses")
    p.add_argument("--head", type=head_folder, default=None, help="saved head folder (default: the shipped head)")
    p.add_argument("--samples", type=count(1), default=128, help="held-out queries read")
    p.add_argument("--response-tokens", type=count(2), default=None,
                   help="score each response up to this many tokens (default: the head's max_response_tokens; "
                        "set it alike to compare heads trained on different cuts)")
    p.add_argument("--out", type=output_dir, default="runs/bench/positions")
    args = p.parse_args(argv)
    from latentcomm.training.responses import read_responses

    held_out = [r for r in read_responses(args.run / "responses") if r["split"] != "train"][:args.samples]
    if not held_out:
        p.error(f"{args.run} has no held-out responses")
    model = load_embedder(args.head, dtype=torch.float32)
    trained_on = model.config.max_response_tokens
    if args.response_tokens:
        model.config = replace(model.config, max_response_tokens=args.response_tokens)
    queries, responses = [r["query"] for r in held_out], [r["response"] for r in held_out]
    eos, limit = model.backbone.tokenizer.eos_token_id, model.config.max_response_tokens
    cut = [len(ids) == limit and ids[-1] == eos  # fills the cut and ends: generation stopped there, not the response
           for ids in model.response_ids(responses)]
    result = {"head": model.fingerprint, "samples": len(held_out),
              "head_max_response_tokens": trained_on, "scored_tokens": model.config.max_response_tokens,
              "ending_at_the_cut": sum(cut),
              **summarise(response_nll(model, queries, responses), cut)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "positions.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.out / "positions.png")
    print(f"{len(held_out)} held-out responses, head {model.fingerprint} (trained on {trained_on} tokens), scored up "
          f"to {limit} tokens ({sum(cut)} ending exactly there); mean NLL " +
          ", ".join(f"{r} {v:.3f}" for r, v in result["mean"].items()))
    for k, share in result["share_of_tokens_within_first"].items():
        gain = {r: "no gain over the floor" if v[k] is None else f"{v[k]:.0%}"
                for r, v in result["share_of_gain_within_first"].items()}
        print(f"first {k:>2} tokens: {share:.0%} of the tokens, {gain['latent']} of the latent's gain, "
              f"{gain['text']} of the text's")
    print(f"wrote {args.out / 'positions.json'} and {args.out / 'positions.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
