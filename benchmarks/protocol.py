"""Benchmark the latent message format: size and pack+unpack time per dtype vs pickle, and fidelity.

The baseline is ``pickle.dumps``/``pickle.loads`` of the same float32 torch tensor, measured in
the same run. Our unpack time includes ``.array()``, so both sides end with a float32 array.
Writes ``protocol.json`` and ``protocol.png`` into ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import pickle
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

from latentcomm.cli.parser import count, output_dir, parser
from latentcomm.protocols import DEFAULT_LIMITS, LatentMessage, pack, roundtrip_cosine, unpack

DTYPES = ("float32", "float16", "bfloat16", "int8")
KEY = bytes(range(32))


def _median_us(fn: Callable[[], object], repeat: int, number: int) -> float:
    """Median over ``repeat`` runs of the mean time of ``number`` calls, in microseconds."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times) * 1e6


def _measure(name: str, dumps: Callable[[], bytes], loads: Callable[[bytes], object], repeat: int, number: int) -> dict:
    data = dumps()
    pack_us = _median_us(dumps, repeat, number)
    unpack_us = _median_us(lambda: loads(data), repeat, number)
    total_us = pack_us + unpack_us
    return {"format": name, "bytes": len(data), "pack_us": pack_us, "unpack_us": unpack_us, "total_us": total_us}


def _plot(results: list[dict], fidelity: dict, shape: tuple[int, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["format"] for r in results]
    colors = ["tab:gray" if n == "pickle(torch)" else "tab:blue" for n in names]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].bar(names, [r["bytes"] / 1024 for r in results], color=colors)
    axes[0].set_ylabel("KiB per message")
    axes[1].bar(names, [r["pack_us"] for r in results], color=colors, label="pack / dumps")
    axes[1].bar(
        names,
        [r["unpack_us"] for r in results],
        bottom=[r["pack_us"] for r in results],
        color=colors,
        alpha=0.5,
        label="unpack+array / loads",
    )
    axes[1].set_ylabel("µs per round trip (median)")
    axes[1].legend()
    lossy = [d for d in fidelity if d != "float32"]
    axes[2].bar(lossy, [max(1 - fidelity[d]["min_cosine"], 1e-12) for d in lossy], color="tab:orange")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("1 - min per-vector cosine (float32 is exact)")
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"latent message, {shape[0]}x{shape[1]} latent, vs pickle of a float32 torch tensor")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("bench protocol", __doc__.splitlines()[0])
    p.add_argument("--out", type=output_dir, default="runs/bench/protocol", help="output directory")
    p.add_argument("--repeat", type=count(1), default=30, help="timed repeats (median is reported)")
    p.add_argument("--number", type=count(1), default=200, help="calls per timed repeat")
    p.add_argument("--rows", type=count(1), default=10, help="compression tokens n")
    p.add_argument("--dim", type=count(1), default=576, help="hidden size H")
    p.add_argument("--seed", type=count(0), default=0)
    args = p.parse_args(argv)
    if args.rows * args.dim > DEFAULT_LIMITS.max_elements:
        p.error(f"--rows x --dim = {args.rows * args.dim} values, more than a message carries "
                f"({DEFAULT_LIMITS.max_elements})")
    return args


def measure_formats(x: np.ndarray, repeat: int, number: int) -> list[dict]:
    """Bytes and pack/unpack times of ``x``: pickle of the torch tensor first, then each wire dtype (and signed
    float16), each with its size and time relative to pickle."""
    import torch

    tensor = torch.from_numpy(x.copy())
    results = [_measure("pickle(torch)", lambda: pickle.dumps(tensor), pickle.loads, repeat, number)]
    for dtype in DTYPES:
        msg = LatentMessage.from_array(
            x,
            dtype=dtype,
            sender="agent-a",
            recipient="agent-b",
            conversation_id="bench",
            fingerprint="head",
            backbone_id="backbone",
        )
        results.append(_measure(dtype, lambda m=msg: pack(m), lambda d: unpack(d).array(), repeat, number))
        if dtype == "float16":
            results.append(
                _measure(
                    "float16+hmac",
                    lambda m=msg: pack(m, key=KEY),
                    lambda d: unpack(d, key=KEY).array(),
                    repeat,
                    number,
                )
            )
    base = results[0]
    for r in results:
        r["size_vs_pickle"] = r["bytes"] / base["bytes"]
        r["time_vs_pickle"] = r["total_us"] / base["total_us"]
    return results


def measure_fidelity(x: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean and minimum per-vector cosine of ``x`` after a round trip through each wire dtype."""
    fidelity = {}
    for dtype in DTYPES:
        cos = roundtrip_cosine(x, dtype)
        fidelity[dtype] = {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    return fidelity


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark as the report written to ``protocol.json``."""
    import torch

    x = np.random.default_rng(args.seed).standard_normal((args.rows, args.dim)).astype(np.float32)
    return {
        "config": {
            "shape": [args.rows, args.dim],
            "repeat": args.repeat,
            "number": args.number,
            "seed": args.seed,
            "data": "standard normal float32",
            "pickle_protocol": pickle.DEFAULT_PROTOCOL,
        },
        "env": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "torch": torch.__version__,
            "msgpack": ".".join(map(str, msgpack.version)),
            "machine": platform.machine(),
        },
        "results": measure_formats(x, args.repeat, args.number),
        "fidelity": measure_fidelity(x),
    }


def print_report(report: dict) -> None:
    print(f"{'format':<14}{'bytes':>8}{'pack µs':>10}{'unpack µs':>11}{'total µs':>10}{'size/pkl':>10}{'time/pkl':>10}")
    for r in report["results"]:
        print(
            f"{r['format']:<14}{r['bytes']:>8}{r['pack_us']:>10.1f}{r['unpack_us']:>11.1f}"
            f"{r['total_us']:>10.1f}{r['size_vs_pickle']:>10.3f}{r['time_vs_pickle']:>10.3f}"
        )
    print(f"{'dtype':<14}{'mean cos':>14}{'min cos':>14}{'1 - min cos':>14}")
    for dtype, f in report["fidelity"].items():
        print(f"{dtype:<14}{f['mean_cosine']:>14.9f}{f['min_cosine']:>14.9f}{1 - f['min_cosine']:>14.2e}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    args = parse_args(argv)
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "protocol.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report["results"], report["fidelity"], (args.rows, args.dim), args.out / "protocol.png")
    print_report(report)
    print(f"wrote {args.out / 'protocol.json'} and {args.out / 'protocol.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
