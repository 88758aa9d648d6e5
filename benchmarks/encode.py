"""``latentcomm bench encode``: encode throughput, achieved FLOP/s vs a matmul, and KV-cached vs uncached decoding."""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from latentcomm.backbone import DEFAULT_BACKBONE, default_dtype
from latentcomm.cliparser import backbone_source, count, head_folder, output_dir, parser
from latentcomm.generation import generate
from latentcomm.model import GenerativeEmbedder, load_embedder

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


def forward_flops(model: GenerativeEmbedder, texts: list[str], batch_size: int) -> float:
    """FLOPs of the compress forward passes over ``texts``: 2 x non-embedding params x tokens + attention."""
    cfg = model.backbone.model.config
    params = sum(p.numel() for n, p in model.backbone.model.base_model.named_parameters() if "embed_tokens" not in n)
    order = sorted(texts, key=len, reverse=True)
    total = 0.0
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = max(len(ids) for ids in model.query_token_ids(batch)) + model.config.num_special
        tokens = len(batch) * width
        total += 2 * params * tokens + 4 * cfg.num_hidden_layers * len(batch) * width**2 * cfg.hidden_size
    return total


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


def main(argv: list[str] | None = None) -> int:
    p = parser("bench encode", __doc__.split("\n")[0].split(": ", 1)[-1])
    p.add_argument("--backbone", type=backbone_source, default=DEFAULT_BACKBONE)
    p.add_argument("--head", type=head_folder, default=None, help="saved head folder (default: the shipped head)")
    p.add_argument("--texts", type=count(1), default=64, help="texts per encode measurement")
    p.add_argument("--batch-sizes", type=count(1), nargs="+", default=[1, 32])
    p.add_argument("--decode-batch", type=count(1), default=8)
    p.add_argument("--new-tokens", type=count(1), default=32)
    p.add_argument("--repeat", type=count(1), default=3)
    p.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto")
    p.add_argument("--out", type=output_dir, default="runs/bench/encode")
    args = p.parse_args(argv)

    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    model = load_embedder(args.head, backbone=args.backbone, dtype=dtype)
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
    results = {
        "backbone": model.backbone.name, "backbone_id": model.backbone.backbone_id, "head": model.fingerprint,
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "matmul_flops": peak, "default_dtype": str(default_dtype(device)), "encode": encode_rows,
        "decode": {"batch": len(decode_texts), "new_tokens": args.new_tokens, "cached_tokens_per_s": cached,
                   "uncached_tokens_per_s": uncached, "speedup": cached / uncached},
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
    print(f"wrote {args.out / 'encode.json'} and {args.out / 'encode.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
