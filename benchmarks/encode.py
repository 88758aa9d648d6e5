"""``latentcomm bench encode``: encode throughput, achieved FLOP/s vs a matmul, and KV-cached vs uncached decoding.

Side by side (same texts, backbone, dtype and batch size, one after the other in rounds, A B C A B C ..., so
that a change of load hits all alike): latentcomm's encode with the prefix cache (the chat template + prompt
run computed once), without it (recomputed for every text), with ``--int8`` also with dynamically quantised
int8 linears (and its drift from the float path), and with ``--peer official`` the official ``llm2vec-gen``
package on the same backbone (``benchmarks/official.py``; reported as not measured when it is not installed,
never installed here). Ratios are of texts/s within this run; the 1-minute load average is recorded.

The roofline beside them: each float run's linear-layer FLOP/s (2 x the decoder's parameters per computed
position) as a share of a matmul in its dtype measured in the same run, and the ratio to the official that our
positions would give if every linear layer ran at that peak and nothing else took time: the most any exact
speed-up of the same computation can reach on this machine.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from latentcomm.model.backbone import DEFAULT_BACKBONE, Backbone, choose_dtype, default_dtype, load_backbone, \
    quantize_int8
from latentcomm.cli.parser import backbone_source, count, head_folder, output_dir, parser
from latentcomm.model.generation import generate
from latentcomm.model.prompt import as_items, common_head, row_width
from latentcomm.model.embedder import MIN_TEMPLATE_CACHE, PASS_COST_POSITIONS, GenerativeEmbedder, load_embedder, \
    padding_groups

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
    """(positions the backbone computes, of which cached) over ``texts`` in ``encode``'s batches (sorted by width,
    each split into padded passes by ``padding_groups``), padding included; the cached ones are the run every row
    of a pass starts with (the chat template) when taken from the prefix cache."""
    rows = sorted(model.layout.query_rows(as_items(texts), None), key=row_width, reverse=True)
    pass_cost = PASS_COST_POSITIONS if model.device.type == "cpu" else None
    computed = cached = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        for group in padding_groups([row_width(r) for r in batch], pass_cost):
            chosen = [batch[i] for i in group]
            head = len(common_head(chosen)) if model.prefix_cache else 0
            head = head if head >= MIN_TEMPLATE_CACHE else 0
            width = max(row_width(r) for r in chosen) + model.config.num_special
            computed += len(chosen) * (width - head)
            cached += len(chosen) * head
    return computed, cached


def linear_flops_per_position(backbone: Backbone) -> int:
    """FLOPs of the decoder's linear layers for one position: 2 x its non-embedding parameters."""
    return 2 * sum(p.numel() for n, p in backbone.model.base_model.named_parameters() if "embed_tokens" not in n)


def forward_flops(model: GenerativeEmbedder, texts: list[str], batch_size: int) -> float:
    """FLOPs of the compress forward passes over ``texts``: the linear layers' per computed position, plus
    attention (every computed position over all positions of its row, cached ones included)."""
    cfg = model.backbone.model.config
    computed, cached = positions_run(model, texts, batch_size)
    width = (computed + cached) / len(texts)
    return linear_flops_per_position(model.backbone) * computed + \
        4 * cfg.num_hidden_layers * computed * width * cfg.hidden_size


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
    fig, ax = plt.subplots(figsize=(max(8, 1.3 * len(side["texts_per_s"])), 4.5))
    names = list(side["texts_per_s"])
    ax.bar([n.replace(" ", "\n", 1).replace(", ", ",\n") for n in names], [side["texts_per_s"][n] for n in names],
           color=["#dd8452" if n.startswith("official") else "#4c72b0" for n in names])
    for i, name in enumerate(names):
        roof = side["linear_flops_fraction_of_matmul"].get(name)
        ax.text(i, side["texts_per_s"][name], f"{side['texts_per_s'][name]:.1f}\n{side['positions_per_text'][name]:.0f} "
                "pos/text" + ("" if roof is None else f"\n{roof:.0%} of matmul"), ha="center", va="bottom", fontsize=8)
    ax.set_ylim(top=max(side["texts_per_s"].values()) * 1.3)
    ax.set_ylabel("texts / s")
    ax.set_title(f"{side['texts']} texts, batch {side['batch_size']}, {side['threads']} threads, median of {side['rounds']} "
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


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def unit(rows: Any) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def plain_embeddings(model: GenerativeEmbedder, texts: list[str], batch_size: int) -> np.ndarray:
    """Embeddings from the plain path: one pass per batch in the given order, no prefix cache, no padding groups
    (``latent_vectors(reference=True)``); on an fp32 backbone, what every fast path is compared with."""
    with torch.no_grad():
        return torch.cat([model.head.embed(model.latent_vectors(texts[i:i + batch_size], reference=True)).float()
                          for i in range(0, len(texts), batch_size)]).cpu().numpy()


def cosines(got: Any, reference: np.ndarray) -> dict[str, float]:
    cos = (unit(got) * unit(reference)).sum(-1)
    return {"min": float(cos.min()), "mean": float(cos.mean())}


def side_by_side(model: GenerativeEmbedder, texts: list[str], args: Any) -> dict[str, Any]:
    """latentcomm with and without the prefix cache (and int8, and the official package) on the same texts, in
    each dtype of ``args.side_dtypes`` (default: ``model``'s), every run of every dtype in each round."""
    from latentcomm.benchmarks import official

    batch = args.side_batch
    names = list(dict.fromkeys(getattr(args, "side_dtypes", None) or [dtype_name(model.backbone.dtype)]))
    models = {name: model if dtype_name(model.backbone.dtype) == name else
              variant(model, backbone=load_backbone(args.backbone, device=model.device, dtype=getattr(torch, name)))
              for name in names}
    peer = official.missing() if args.peer == "official" else "not asked for (--peer official)"

    def ours(m: GenerativeEmbedder) -> Callable[[], np.ndarray]:
        return lambda: m.encode(texts, batch_size=batch, show_progress_bar=False)

    runs: dict[str, Callable[[], Any]] = {}
    run_dtype: dict[str, str] = {}  # the float runs, for the roofline
    positions: dict[str, int] = {}
    cosine, drift = {}, None
    plain = models.get("float32") or variant(model, backbone=load_backbone(args.backbone, device=model.device,
                                                                          dtype=torch.float32))
    reference = plain_embeddings(plain, texts, batch)
    for name, m in models.items():
        uncached = variant(m, prefix_cache=False)
        runs[f"latentcomm {name}"] = ours(m)
        runs[f"latentcomm {name}, no prefix cache"] = ours(uncached)
        run_dtype.update({f"latentcomm {name}": name, f"latentcomm {name}, no prefix cache": name})
        positions[f"latentcomm {name}"] = positions_run(m, texts, batch)[0]
        positions[f"latentcomm {name}, no prefix cache"] = positions_run(uncached, texts, batch)[0]
        cosine[f"latentcomm {name}"] = cosines(m.encode(texts, batch_size=batch), reference)
        if args.int8 and name == "float32":
            quantized = variant(m, backbone=quantize_int8(m.backbone))
            runs["latentcomm int8"] = ours(quantized)
            positions["latentcomm int8"] = positions[f"latentcomm {name}"]
            reference_latent, got = m.compress(texts, batch_size=batch), quantized.compress(texts, batch_size=batch)
            cos = cosines(quantized.embed_latent(got), m.embed_latent(reference_latent))
            cosine["latentcomm int8"] = cosines(quantized.embed_latent(got), reference)
            error = ((got.vectors - reference_latent.vectors).norm(dim=-1) / reference_latent.vectors.norm(dim=-1))
            drift = {"embedding_cosine_mean": cos["mean"], "embedding_cosine_min": cos["min"],
                     "latent_relative_error": float(error.mean())}
        if peer is None:
            encoder = official.OfficialEncoder(args.backbone, m.config, m.config.embed_dim, m.backbone.dtype)
            runs[f"official llm2vec-gen {name}"] = partial(encoder.encode, texts, batch)
            run_dtype[f"official llm2vec-gen {name}"] = name
            positions[f"official llm2vec-gen {name}"] = encoder.tokens(texts, batch)
    seconds: dict[str, list[float]] = {run: [] for run in runs}
    for fn in runs.values():
        fn()  # warm-up
    loads = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for run, fn in runs.items():
            start = time.perf_counter()
            fn()
            seconds[run].append(time.perf_counter() - start)
        loads.append(os.getloadavg()[0])
    speed = {run: len(texts) / statistics.median(times) for run, times in seconds.items()}
    per_text = {run: count / len(texts) for run, count in positions.items()}
    # the roofline: linear FLOP/s of each run against a matmul of its dtype measured here, and the ratio to the
    # official that our positions would give if every linear layer ran at that peak and nothing else took time
    peaks = {name: matmul_flops(getattr(torch, name), model.device) for name in models}
    per_position = linear_flops_per_position(model.backbone)
    of_peak = {run: speed[run] * per_text[run] * per_position / peaks[name] for run, name in run_dtype.items()}
    ratios = {}
    for name in models:
        ours_speed = speed[f"latentcomm {name}"]
        ratios[f"{name}: prefix cache, texts/s x without"] = ours_speed / speed[f"latentcomm {name}, no prefix cache"]
        for other in models:
            if f"official llm2vec-gen {other}" in speed:
                ratios[f"latentcomm {name}: texts/s x official {other}"] = \
                    ours_speed / speed[f"official llm2vec-gen {other}"]
        if f"official llm2vec-gen {name}" in speed:
            ceiling = peaks[name] / (per_text[f"latentcomm {name}"] * per_position)
            ratios[f"latentcomm {name} at the matmul peak: texts/s x official {name}"] = \
                ceiling / speed[f"official llm2vec-gen {name}"]
    if "latentcomm int8" in speed:
        ratios["int8: texts/s x float32"] = speed["latentcomm int8"] / speed["latentcomm float32"]
    return {"texts": len(texts), "batch_size": batch, "rounds": args.rounds, "threads": torch.get_num_threads(),
            "dtypes": names, "seconds": seconds, "texts_per_s": speed,
            "positions_per_text": per_text, "ratios": ratios, "matmul_flops": peaks,
            "linear_flops_per_position": per_position, "linear_flops_fraction_of_matmul": of_peak,
            "cosine_to_plain_float32": cosine, "int8_drift": drift, "peer": peer,
            "load_average": {"before": loads[0], "after": loads[-1], "rounds": loads[1:]}}


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
    p.add_argument("--side-dtypes", choices=["bfloat16", "float32"], nargs="+", default=None,
                   help="backbone dtypes of the side-by-side comparison, all in each round (default: float32, and "
                        "bfloat16 where the CPU computes it natively)")
    p.add_argument("--threads", type=count(1), default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--rounds", type=count(1), default=5, help="rounds of the side-by-side comparison")
    p.add_argument("--out", type=output_dir, default="runs/bench/encode")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

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
    if args.side_dtypes is None:
        args.side_dtypes = list(dict.fromkeys(["float32", dtype_name(default_dtype(device))]))
    side = side_by_side(model, texts, args)
    results = {
        "backbone": model.backbone.name, "backbone_id": model.backbone.backbone_id, "head": model.fingerprint,
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "matmul_flops": peak, "default_dtype": dtype_name(default_dtype(device)),
        "default_dtype_reason": choose_dtype(device).reason, "encode": encode_rows,
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
    print(f"\ndefault dtype {results['default_dtype']}: {results['default_dtype_reason']}")
    print(f"side by side: {side['texts']} texts, batch {side['batch_size']}, {side['threads']} threads, median of "
          f"{side['rounds']} rounds, load average {side['load_average']['before']:.2f} -> "
          f"{side['load_average']['after']:.2f}")
    for name, speed in side["texts_per_s"].items():
        roof = side["linear_flops_fraction_of_matmul"].get(name)
        print(f"  {name:<40} {speed:>7.2f} texts/s  {side['positions_per_text'][name]:>5.1f} positions/text"
              + ("" if roof is None else f"  linear layers at {roof:.0%} of the matmul peak"))
    if side["peer"]:
        print(f"  official llm2vec-gen: {side['peer']}")
    for name, value in side["ratios"].items():
        print(f"  {name}: {value:.2f}")
    for name, cos in side["cosine_to_plain_float32"].items():
        print(f"  {name}: embedding cosine to the plain float32 path min {cos['min']:.5f} mean {cos['mean']:.5f}")
    if side["int8_drift"]:
        print(f"  int8 drift: {side['int8_drift']}")
    print(f"wrote {args.out / 'encode.json'}, {args.out / 'encode.png'} and {args.out / 'encode_side_by_side.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
