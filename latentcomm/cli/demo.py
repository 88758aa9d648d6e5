"""``latentcomm demo``: compress a few queries, embed them, decode the latents and show the backbone's own answers."""
from __future__ import annotations

import logging
import time

import numpy as np

from latentcomm.model.backbone import DEFAULT_BACKBONE, choose_dtype, find_default_gguf, resolve_backbone
from latentcomm.cli.parser import backbone_source, count, head_folder, parser
from latentcomm.model.embedder import load_embedder

DEMO_QUERIES = [
    "What is the capital of France?",
    "How do I make a cup of green tea?",
    "Give me three tips for a good night's sleep.",
    "Why is the sky blue?",
]


def main(argv: list[str] | None = None) -> int:
    p = parser("demo", __doc__.split("\n")[0])
    p.add_argument("queries", nargs="*", help="queries (default: four built-in ones)")
    p.add_argument("--backbone", type=backbone_source, default=None,
                   help=f"HF folder/id or .gguf (default: {DEFAULT_BACKBONE})")
    p.add_argument("--head", type=head_folder, default=None, help="a saved head folder (default: the shipped head)")
    p.add_argument("--max-new-tokens", type=count(1), default=48)
    p.add_argument("--convert-only", action="store_true", help="only convert the backbone into the cache")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.convert_only:
        print(resolve_backbone(args.backbone or find_default_gguf()))
        return 0
    queries = args.queries or DEMO_QUERIES
    start = time.perf_counter()
    model = load_embedder(args.head, backbone=args.backbone)
    print(f"loaded {model.backbone.name} ({model.backbone.backbone_id}), head {model.fingerprint} "
          f"in {time.perf_counter() - start:.1f} s on {model.device} / {model.backbone.dtype}"
          f" (chosen: {choose_dtype(model.device).reason})")
    start = time.perf_counter()
    latent = model.compress(queries)
    t_compress = time.perf_counter() - start
    emb = model.embed_latent(latent, normalize_embeddings=True)
    start = time.perf_counter()
    decoded = model.decode(latent, max_new_tokens=args.max_new_tokens)
    t_decode = time.perf_counter() - start
    start = time.perf_counter()
    answers = model.respond(queries, max_new_tokens=args.max_new_tokens)
    t_respond = time.perf_counter() - start
    print(f"\nlatent {tuple(latent.shape)} in {t_compress:.2f} s; embeddings {emb.shape}; "
          f"decode {t_decode:.2f} s; respond {t_respond:.2f} s\n")
    for query, text, answer in zip(queries, decoded, answers):
        print(f"query   : {query}\ndecoded : {text}\nanswer  : {answer}\n")
    sims = emb @ emb.T
    print("cosine similarity of the embeddings:")
    print(np.array2string(sims, precision=2, suppress_small=True))
    return 0
