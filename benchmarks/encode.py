"""``latentcomm bench encode``: encode throughput, achieved FLOP/s vs a matmul, and KV-cached vs uncached decoding.

Side by side (same texts, backbone, dtype and batch size, one after the other in rounds, A B C A B C ..., so
that a change of load hits all alike): latentcomm's encode with the prefix cache (the chat template + prompt
run computed once), without it (recomputed for every text), with ``--int8`` also with dynamically quantised
int8 linears (and its drift from the float path), and with ``--peer official`` the official ``llm2vec-gen``
package on the same backbone (``benchmarks/official.py``; reported as not measured when it is not installed,
never installed here). Ratios are of texts/s within this run; the 1-minute load average is recorded.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from latentcomm.model.backbone import DEFAULT_BACKBONE, Backbone, default_dtype, quantize_int8
from latentcomm.cli.parser import backbone_source, count, head_folder, output_dir, parser
from latentcomm.model.generation import generate
from latentcomm.model.embedder import MIN_TEMPLATE_CACHE, GenerativeEmbedder, load_embedder

TOPICS = ["the French revolution", "photosynthesis", "binary search", "sourdough bread", "black holes",
          "the stock market", "climate change", "the immune system", "jazz music", "electric cars",
          "the Roman empire", "machine learning", "volcanoes", "chess openings", "coffee brewing", "tides"]
FORMS = ["What is {}?", "Explain {} to a ten-year-old.", "Give me three surprising facts about {}.",
         "Write a short paragraph on the history of {} and why it matters today."]


def benchmark_texts(count: int) -> list[str]:
    """Deterministic questions of mixed length (the project makes its own; nothing is fetched)."""
    texts = [form.format(topic) for form in FORMS for topic in TOPICS]
    return (texts * (count // len(texts) + 1))[:count]


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` over ``repeat`` runs after one warm-up run."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_flops(dtype: torch.dtype, device: torch.device, sizes: tuple[int, ...] = (1024, 2048, 3072),
                 repeat: int = 5) -> float:
    """Best FLOP/s of square matmuls in ``dtype`` (fastest of several runs): the practical peak here."""
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        torch.matmul(a, b)
        for _ in range(repeat):
            start = time.perf_counter()
            torch.matmul(a, b)
            best = max(best, 2 * size**3 / (time.perf_counter() - start))
    return best


def positions_run(model: GenerativeEmbedder, texts: list[str], batch_size: int) -> tuple[int, int]:
    """(positions the backbone computes, of which cached) over ``texts`` in ``encode``'s length-sorted batches,
    padding included; the cached ones are the chat-template run taken from the prefix cache."""
    order = sorted(texts, key=len, reverse=True)
    computed = cached = 0
    for start in range(0, len(order), batch_size):
        rows = model.query_token_ids(order[start:start + batch_size])
        head = len(os.path.commonprefix(rows)) if model.prefix_cache else 0
        head = head if head >= MIN_TEMPLATE_CACHE else 0
        width = max(len(r) for r in rows) + model.config.num_special
        computed += len(rows) * (width - head)
        cached += len(rows) * head
    return computed, cached


def forward_flops(model: GenerativeEmbedder, texts: list[str], batch_size: int) -> float:
    """FLOPs of the compress forward passes over ``texts``: 2 x non-embedding params x computed positions, plus
    attention (every computed position over all positions of its row, cached ones included)."""
    cfg = model.backbone.model.config
    params = sum(p.numel() for n, p in model.backbone.model.base_model.named_parameters() if "embed_tokens" not in n)
    computed, cached = positions_run(model, texts, batch_size)
    width = (computed + cached) / len(texts)
    return 2 * params * computed + 4 * cfg.num_hidden_layers * computed * width * cfg.hidden_size


def decode_speed(model: GenerativeEmbedder, texts: list[str], new_tokens: int, use_cache: bool, repeat: int) -> float:
    """Tokens/s generating exactly ``new_tokens`` per latent (EOS ignored so both modes do the same work)."""
    latent = model.compress(texts)
    embeds = latent.vectors.to(model.device, model.backbone.dtype)
    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=model.device)
    pad = model.backbone.tokenizer.pad_token_id
    seconds = timed(lambda: generate(model.backbone.model, embeds, mask, max_new_tokens=new_tokens,
                                     eos_token_ids={-1}, pad_token_id=pad, use_cache=use_cache), repeat)
    return len(texts) * new_tokens / seconds


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    enc = results["encode"]
    labels = [f"batch {r['batch_size']}" for r in enc]
    left.bar(labels, [r["texts_per_s"] for r in enc], color="#4c72b0")
    for i, r in enumerate(enc):
        left.text(i, r["texts_per_s"], f"{r['flops_fraction_of_matmul']:.0%} of matmul", ha="center", va="bottom")
    left.set_ylim(top=max(r["texts_per_s"] for r in enc) * 1.15)
    left.set_ylabel("texts / s")
    left.set_title("encode throughput")
    dec = results["decode"]
    right.bar(["KV cache", "no cache"], [dec["cached_tokens_per_s"], dec["uncached_tokens_per_s"]],
              color=["#55a868", "#c44e52"])
    right.set_ylabel("tokens / s")
    right.set_title(f"decode, {dec['new_tokens']} new tokens: cache x{dec['speedup']:.1f}")
    fig.suptitle(f"{results['backbone']} on {results['device']} ({results['dtype']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    side = results["side_by_side"]
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(side["texts_per_s"])
    ax.bar(names, [side["texts_per_s"][n] for n in names], color="#4c72b0")
    for i, name in enumerate(names):
        ax.text(i, side["texts_per_s"][name], f"{side['texts_per_s'][name]:.1f}\n{side['positions_per_text'][name]:.0f} "
                "pos/text", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(top=max(side["texts_per_s"].values()) * 1.3)
    ax.set_ylabel("texts / s")
    ax.set_title(f"{side['texts']} texts, batch {side['batch_size']}, {results['dtype']}, median of {side['rounds']} "
                 f"rounds; load {side['load_average']['before']:.1f} -> {side['load_average']['after']:.1f}"
                 + ("" if side["peer"] is None else f"\nofficial: {side['peer']}"), fontsize=9)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path.with_name("encode_side_by_side.png"), dpi=120)
    plt.close(fig)


def variant(model: GenerativeEmbedder, *, backbone: Backbone | None = None, prefix_cache: bool = True
            ) -> GenerativeEmbedder:
    """The same head on ``backbone`` (default: the same one) with ``prefix_cache`` on or off."""
    other = GenerativeEmbedder(backbone or model.backbone, model.config, prefix_cache=prefix_cache)
    other.head.load_state_dict(model.head.state_dict())
    return other


def unit(rows: Any) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def side_by_side(model: GenerativeEmbedder, texts: list[str], args: Any) -> dict[str, Any]:
    """latentcomm with and without the prefix cache (and int8, and the official package) on the same texts."""
    from latentcomm.benchmarks import official

    load_before = os.getloadavg()[0]
    batch = args.side_batch
    uncached = variant(model, prefix_cache=False)

    def ours(m: GenerativeEmbedder) -> Callable[[], np.ndarray]:
        return lambda: m.encode(texts, batch_size=batch, show_progress_bar=False)

    runs: dict[str, Callable[[], Any]] = {"latentcomm": ours(model), "latentcomm, no prefix cache": ours(uncached)}
    positions = {"latentcomm": positions_run(model, texts, batch)[0],
                 "latentcomm, no prefix cache": positions_run(uncached, texts, batch)[0]}
    drift = None
    if args.int8:
        quantized = variant(model, backbone=quantize_int8(model.backbone))
        runs["latentcomm int8"] = ours(quantized)
        positions["latentcomm int8"] = positions["latentcomm"]
        reference, got = model.compress(texts, batch_size=batch), quantized.compress(texts, batch_size=batch)
        cos = (unit(model.embed_latent(reference)) * unit(model.embed_latent(got))).sum(-1)
        error = ((got.vectors - reference.vectors).norm(dim=-1) / reference.vectors.norm(dim=-1)).mean()
        drift = {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min()),
                 "latent_relative_error": float(error)}
    peer = official.missing() if args.peer == "official" else "not asked for (--peer official)"
    if peer is None:
        encoder = official.OfficialEncoder(args.backbone, model.config, model.config.embed_dim, model.backbone.dtype)
        runs["official llm2vec-gen"] = lambda: encoder.encode(texts, batch)
        positions["official llm2vec-gen"] = encoder.tokens(texts, batch)
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    speed = {name: len(texts) / statistics.median(times) for name, times in seconds.items()}
    ratios = {"prefix cache: texts/s x without": speed["latentcomm"] / speed["latentcomm, no prefix cache"]}
    if "latentcomm int8" in speed:
        ratios["int8: texts/s x float"] = speed["latentcomm int8"] / speed["latentcomm"]
    if "official llm2vec-gen" in speed:
        for name in [n for n in speed if n.startswith("latentcomm")]:
            ratios[f"{name}: texts/s x official"] = speed[name] / speed["official llm2vec-gen"]
    return {"texts": len(texts), "batch_size": batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
            "seconds": seconds, "texts_per_s": speed, "positions_per_text": {k: v / len(texts) for k, v in
                                                                              positions.items()},
            "ratios": ratios, "int8_drift": drift,
            "peer": None if peer is None else peer,
            "load_average": {"before": load_before, "after": os.getloadavg()[0]}}


def main(argv: list[str] | None = None) -> int:
    p = parser("bench encode", __doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument("--backbone", type=backbone_source, default=DEFAULT_BACKBONE)
    p.add_argument("--head", type=head_folder, default=None, help="saved head folder (default: the shipped head)")
    p.add_argument("--texts", type=count(1), default=64, help="texts per encode measurement")
    p.add_argument("--batch-sizes", type=count(1), nargs="+", default=[1, 32])
    p.add_argument("--decode-batch", type=count(1), default=8)
    p.add_argument("--new-tokens", type=count(1), default=32)
    p.add_argument("--repeat", type=count(1), default=3)
    p.add_argument("--weights-dtype", "--dtype", choices=["bfloat16", "float32"], default=None,
                   help="backbone weights dtype (default: the device's fast one)")
    p.add_argument("--peer", choices=["none", "official"], default="none",
                   help="also time the official llm2vec-gen package (if installed) side by side")
    p.add_argument("--int8", action="store_true", help="also time dynamically quantised int8 linears, with drift")
    p.add_argument("--side-batch", type=count(1), default=32, help="batch size of the side-by-side comparison")
    p.add_argument("--rounds", type=count(1), default=5, help="rounds of the side-by-side comparison")
    p.add_argument("--out", type=output_dir, default="runs/bench/encode")
    args = p.parse_args(argv)

    model = load_embedder(args.head, backbone=args.backbone,
                          dtype=getattr(torch, args.weights_dtype) if args.weights_dtype else None)
    device, dtype = model.device, model.backbone.dtype
    peak = matmul_flops(dtype, device)
    texts = benchmark_texts(args.texts)
    encode_rows = []
    for batch_size in args.batch_sizes:
        sample = texts if batch_size > 1 else texts[: max(8, args.texts // 8)]
        seconds = timed(lambda: model.encode(sample, batch_size=batch_size, show_progress_bar=False), args.repeat)
        achieved = forward_flops(model, sample, batch_size) / seconds
        encode_rows.append({"batch_size": batch_size, "texts": len(sample), "seconds": seconds,
                            "texts_per_s": len(sample) / seconds, "achieved_flops": achieved,
                            "flops_fraction_of_matmul": achieved / peak})
    decode_texts = texts[: args.decode_batch]
    cached = decode_speed(model, decode_texts, args.new_tokens, True, args.repeat)
    uncached = decode_speed(model, decode_texts, args.new_tokens, False, max(1, args.repeat - 1))
    side = side_by_side(model, texts, args)
    results = {
        "backbone": model.backbone.name, "backbone_id": model.backbone.backbone_id, "head": model.fingerprint,
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "matmul_flops": peak, "default_dtype": str(default_dtype(device)), "encode": encode_rows,
        "decode": {"batch": len(decode_texts), "new_tokens": args.new_tokens, "cached_tokens_per_s": cached,
                   "uncached_tokens_per_s": uncached, "speedup": cached / uncached},
        "side_by_side": side,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encode.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, args.out / "encode.png")
    print(f"{results['backbone']} on {device} / {results['dtype']}, {results['threads']} threads; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'batch':>6} {'texts/s':>9} {'GFLOP/s':>9} {'of matmul':>10}")
    for r in encode_rows:
        print(f"{r['batch_size']:>6} {r['texts_per_s']:>9.1f} {r['achieved_flops'] / 1e9:>9.1f} "
              f"{r['flops_fraction_of_matmul']:>10.1%}")
    d = results["decode"]
    print(f"decode batch {d['batch']} x {d['new_tokens']} tokens: KV cache {d['cached_tokens_per_s']:.1f} tok/s, "
          f"no cache {d['uncached_tokens_per_s']:.1f} tok/s, speed-up x{d['speedup']:.2f}")
    print(f"\nside by side: {side['texts']} texts, batch {side['batch_size']}, median of {side['rounds']} rounds, "
          f"load average {side['load_average']['before']:.2f} -> {side['load_average']['after']:.2f}")
    for name, speed in side["texts_per_s"].items():
        print(f"  {name:<30} {speed:>7.2f} texts/s  {side['positions_per_text'][name]:>5.1f} positions/text")
    if side["peer"]:
        print(f"  official llm2vec-gen: {side['peer']}")
    for name, value in side["ratios"].items():
        print(f"  {name}: {value:.2f}")
    if side["int8_drift"]:
        print(f"  int8 drift: {side['int8_drift']}")
    print(f"wrote {args.out / 'encode.json'}, {args.out / 'encode.png'} and {args.out / 'encode_side_by_side.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
