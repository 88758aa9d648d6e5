"""``latentcomm run``: three agents (solver -> critic -> answerer) answer GSM8K questions, in latents and in text.

The same pipeline runs twice in one invocation on the same replicas:

* latent mode — the solver compresses the question into a latent (one forward pass) and sends it; the
  critic decodes it (soft prompt to its frozen LLM) to read the draft, then compresses its review
  prompt (question + draft) into a latent for the answerer, who decodes it: that is the final answer.
* text mode (the baseline) — each sender generates its full answer as text and sends the text.

Quality is measured two ways on the answerer's final text: exact match of the last number with GSM8K's
answer, and the teacher (all-MiniLM-L6-v2) cosine between the final text and the reference solution.
Writes ``results.json``, ``trace.jsonl`` (every hop, with what was said) and ``run.png`` under
``runs/run-<timestamp>/``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from latentcomm.actors.agent import Agent
from latentcomm.actors.trace import Trace, hop_stats
from latentcomm.backbone import DEFAULT_BACKBONE
from latentcomm.cliparser import backbone_source, count, head_folder, number, output_dir, parser, teacher_source
from latentcomm.cluster import init_ray
from latentcomm.gsm8k import Question, last_number, load_gsm8k
from latentcomm.model import DEFAULT_HEAD_DIR
from latentcomm.pool import PoolConfig, ReplicaPool
from latentcomm.replica import ReplicaConfig
from latentcomm.teachers import load_teacher, paired_cosines

log = logging.getLogger(__name__)

MODES = ("latent", "text")
HOPS = (("solver", "critic"), ("critic", "answerer"))
SOLVER_ROLE = "Solve this maths problem step by step and end with the final number."
CRITIC_ROLE = "Check the proposed solution to the problem and give the correct final number."


@dataclass(frozen=True)
class JobConfig:
    """Everything one ``latentcomm run`` does; written into results.json."""

    questions: int = 8
    offset: int = 0
    max_new_tokens: int = 64
    replicas: int = 2
    cpus_per_replica: float = 1.0
    threads_per_replica: int = 1
    """torch threads per replica: 1 avoids oversubscription, which on a busy CPU is many times slower."""
    backbone: str = DEFAULT_BACKBONE
    head: str | None = None
    dtype: str | None = None
    wire_dtype: str = "float16"
    teacher: str = "minilm"
    """Sentence-transformers teacher for the cosine metric ('minilm', a folder, or 'none' to skip)."""
    sign: bool = False
    """Sign every message with a random HMAC key (and verify it on receipt)."""
    address: str | None = None
    out: str = "runs"


@dataclass
class Answer:
    """One question's journey in one mode."""

    question_id: str
    mode: str
    draft: str
    final: str
    predicted: str | None
    correct: bool
    seconds: float
    teacher_cosine: float | None = None


def critic_input(question: str, draft: str) -> str:
    return f"Problem: {question}\n\nProposed solution: {draft}"


def conversation_id(mode: str, question_id: str) -> str:
    """The conversation of one question in one mode (its hops in the trace)."""
    return f"{mode}-{question_id}"


async def answer(question: Question, mode: str, agents: dict[str, Agent]) -> Answer:
    """Run one question through solver -> critic -> answerer in ``mode``."""
    solver, critic, answerer = agents["solver"], agents["critic"], agents["answerer"]
    conversation = conversation_id(mode, question.id)
    start = time.perf_counter()
    if mode == "latent":
        draft = await solver.send_latent(critic, question.text, conversation_id=conversation)
        final = await critic.send_latent(answerer, critic_input(question.text, draft), conversation_id=conversation)
    else:
        draft = await solver.send_text(critic, question.text, conversation_id=conversation, generate=True)
        final = await critic.send_text(answerer, critic_input(question.text, draft), conversation_id=conversation,
                                       generate=True)
    predicted = last_number(final)
    return Answer(question.id, mode, draft, final, predicted, predicted == question.answer,
                  time.perf_counter() - start)


async def run_mode(mode: str, questions: list[Question], agents: dict[str, Agent], concurrency: int
                   ) -> tuple[list[Answer], float]:
    """All questions in ``mode``, ``concurrency`` conversations at a time; returns answers and wall seconds."""
    for agent in agents.values():
        agent.label = mode
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(questions), desc=f"{mode} mode", unit="question")

    async def one(question: Question) -> Answer:
        async with gate:
            result = await answer(question, mode, agents)
            bar.update()
            return result

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(q) for q in questions))
    bar.close()
    return list(answers), time.perf_counter() - start


def summarize(mode: str, answers: list[Answer], wall_s: float, trace: Trace) -> dict[str, Any]:
    """Quality, total and per-hop time, and bytes per message of one mode."""
    hops = [h for h in trace.hops if h.label == mode]
    per_hop = {}
    for sender, receiver in HOPS:
        stats = hop_stats([h for h in hops if (h.sender, h.receiver) == (sender, receiver)])
        per_hop[f"{sender}->{receiver}"] = {"latency_s": stats.mean_latency_s, "produce_s": stats.mean_produce_s,
                                            "handle_s": stats.mean_handle_s, "bytes": stats.mean_bytes}
    cosines = [a.teacher_cosine for a in answers if a.teacher_cosine is not None]
    return {"mode": mode, "questions": len(answers), "exact_match": statistics.fmean(a.correct for a in answers),
            "teacher_cosine": statistics.fmean(cosines) if cosines else None, "wall_s": wall_s,
            "mean_question_s": statistics.fmean(a.seconds for a in answers),
            "bytes_per_message": hop_stats(hops).mean_bytes, "hops": per_hop}


def ratios(latent: dict[str, Any], text: dict[str, Any]) -> dict[str, float | None]:
    """latent / text for time and bytes (below 1: latent is cheaper)."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    out = {"wall_s": ratio(latent["wall_s"], text["wall_s"]),
           "bytes_per_message": ratio(latent["bytes_per_message"], text["bytes_per_message"])}
    for hop in latent["hops"]:
        out[f"{hop} latency_s"] = ratio(latent["hops"][hop]["latency_s"], text["hops"][hop]["latency_s"])
    return out


def table(latent: dict[str, Any], text: dict[str, Any], quotient: dict[str, float | None]) -> str:
    """The side-by-side table printed at the end of a run."""
    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    rows = [("", "latent", "text", "latent/text"),
            ("exact match (last number)", fmt(latent["exact_match"], ".3f"), fmt(text["exact_match"], ".3f"), ""),
            ("teacher cosine to reference", fmt(latent["teacher_cosine"], ".3f"), fmt(text["teacher_cosine"], ".3f"),
             ""),
            ("total wall time (s)", fmt(latent["wall_s"], ".1f"), fmt(text["wall_s"], ".1f"),
             fmt(quotient["wall_s"], ".2f"))]
    for hop in latent["hops"]:
        rows.append((f"{hop} hop (s)", fmt(latent["hops"][hop]["latency_s"], ".2f"),
                     fmt(text["hops"][hop]["latency_s"], ".2f"), fmt(quotient[f"{hop} latency_s"], ".2f")))
        rows.append(("  of which sender produces (s)", fmt(latent["hops"][hop]["produce_s"], ".2f"),
                     fmt(text["hops"][hop]["produce_s"], ".2f"), ""))
    rows.append(("bytes per message", fmt(latent["bytes_per_message"], ".0f"), fmt(text["bytes_per_message"], ".0f"),
                 fmt(quotient["bytes_per_message"], ".2f")))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [r[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:])) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot(latent: dict[str, Any], text: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = ["tab:blue", "tab:gray"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    metrics = ["exact_match", "teacher_cosine"]
    x = np.arange(len(metrics))
    for k, summary in enumerate((latent, text)):
        axes[0].bar(x + 0.38 * k, [summary[m] or 0 for m in metrics], 0.38, color=colors[k], label=summary["mode"])
    axes[0].set_xticks(x + 0.19, ["exact match", "teacher cosine"])
    axes[0].set_title("quality of the final answer")
    axes[0].legend()
    hops = list(latent["hops"])
    x = np.arange(len(hops))
    for k, summary in enumerate((latent, text)):
        produce = [summary["hops"][h]["produce_s"] for h in hops]
        rest = [summary["hops"][h]["latency_s"] - p for h, p in zip(hops, produce)]
        axes[1].bar(x + 0.38 * k, produce, 0.38, color=colors[k], label=f"{summary['mode']}: sender produces")
        axes[1].bar(x + 0.38 * k, rest, 0.38, bottom=produce, color=colors[k], alpha=0.45,
                    label=f"{summary['mode']}: wire + receiver")
    axes[1].set_xticks(x + 0.19, hops)
    axes[1].set_ylabel("seconds per hop (mean)")
    axes[1].legend(fontsize=7)
    axes[2].bar(["latent", "text"], [latent["bytes_per_message"], text["bytes_per_message"]], color=colors)
    axes[2].set_ylabel("bytes per message (mean)")
    fig.suptitle(f"latentcomm run: solver -> critic -> answerer, {latent['questions']} GSM8K questions")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_with_teacher(answers: list[Answer], questions: list[Question], teacher_name: str) -> None:
    """Fill ``teacher_cosine``: cosine of each final answer with its reference solution in the teacher's space."""
    if teacher_name == "none":
        return
    reference = {q.id: q.solution for q in questions}
    cosines = paired_cosines(load_teacher(teacher_name), [a.final for a in answers],
                             [reference[a.question_id] for a in answers])
    for a, cosine in zip(answers, cosines):
        a.teacher_cosine = float(cosine)


async def run_job(config: JobConfig) -> dict[str, Any]:
    """Start replicas and agents, run both modes, score them; returns the results (nothing written)."""
    questions = load_gsm8k(config.questions, offset=config.offset)
    pool = ReplicaPool(ReplicaConfig(backbone=config.backbone, head=config.head, dtype=config.dtype,
                                     num_threads=config.threads_per_replica, max_new_tokens=config.max_new_tokens),
                       PoolConfig(num_replicas=config.replicas, num_cpus=config.cpus_per_replica,
                                  max_in_flight=2 * config.replicas), name="main")
    try:
        infos = await pool.ready()
        trace = Trace()
        key = os.urandom(32) if config.sign else None
        roles = {"solver": SOLVER_ROLE, "critic": CRITIC_ROLE, "answerer": ""}
        agents = {name: Agent(name, pool, role=role, key=key, trace=trace, dtype=config.wire_dtype,
                              max_new_tokens=config.max_new_tokens) for name, role in roles.items()}
        answers, walls = {}, {}
        for mode in MODES:
            answers[mode], walls[mode] = await run_mode(mode, questions, agents, concurrency=config.replicas)
    finally:
        pool.shutdown()
    everything = answers["latent"] + answers["text"]
    score_with_teacher(everything, questions, config.teacher)
    summaries = {mode: summarize(mode, answers[mode], walls[mode], trace) for mode in MODES}
    return {"config": asdict(config), "replicas": infos, "head": head_description(config, infos[0]),
            "host": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "summaries": summaries, "latent_over_text": ratios(summaries["latent"], summaries["text"]),
            "answers": [asdict(a) for a in everything], "trace": trace,
            "metric": "exact match: last number in the answerer's final text == GSM8K answer; teacher cosine: "
                      "all-MiniLM-L6-v2 cosine between that final text and GSM8K's reference solution"}


def head_description(config: JobConfig, info: dict[str, Any]) -> str:
    if config.head:
        return f"{config.head} ({info['fingerprint']})"
    shipped = config.backbone == DEFAULT_BACKBONE and (DEFAULT_HEAD_DIR / "config.json").is_file()
    return f"{'shipped' if shipped else 'UNTRAINED'} head {info['fingerprint']} on {info['backbone']}"


def parse_config(argv: list[str] | None) -> JobConfig:
    """The ``latentcomm run`` flags as a checked ``JobConfig``."""
    p = parser("run", __doc__.split("\n")[0])
    d = JobConfig()
    p.add_argument("--questions", type=count(1), default=d.questions, help="how many GSM8K test questions")
    p.add_argument("--offset", type=count(0), default=d.offset, help="skip this many questions first")
    p.add_argument("--max-new-tokens", type=count(1), default=d.max_new_tokens, help="generation budget per message")
    p.add_argument("--replicas", type=count(1), default=d.replicas, help="replica actors (one model each)")
    p.add_argument("--cpus-per-replica", type=number(0), default=d.cpus_per_replica)
    p.add_argument("--threads-per-replica", type=count(1), default=d.threads_per_replica)
    p.add_argument("--backbone", type=backbone_source, default=d.backbone, help="alias, HF folder or .gguf")
    p.add_argument("--head", type=head_folder, default=None, help="a saved head folder (default: the shipped head)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="backbone dtype (default: the device's fast one)")
    p.add_argument("--wire-dtype", default=d.wire_dtype, choices=["float32", "float16", "bfloat16", "int8"])
    p.add_argument("--teacher", type=teacher_source("minilm", "none"), default=d.teacher,
                   help="'minilm', a sentence-transformers folder, or 'none'")
    p.add_argument("--sign", action="store_true", help="HMAC-sign every message with a random key")
    p.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. 'auto' or ray://host:10001)")
    p.add_argument("--out", type=output_dir, default=d.out, help="parent folder of run-<timestamp>/")
    args = p.parse_args(argv)
    if not args.address and args.replicas * args.cpus_per_replica > (os.cpu_count() or 1):
        p.error(f"{args.replicas} replicas x {args.cpus_per_replica} CPUs do not fit on {os.cpu_count()} local CPUs; "
                "lower --replicas or --cpus-per-replica, or join a cluster with --address")
    try:
        load_gsm8k(args.questions, offset=args.offset)  # before Ray starts: an offset past the last question
    except ValueError as err:
        p.error(f"argument --offset: {err}")
    args.out = str(args.out)
    return JobConfig(**vars(args))


def write_results(results: dict[str, Any], trace: Trace, out: str) -> Path:
    """``results.json``, ``trace.jsonl`` and ``run.png`` in a new ``run-<timestamp>/`` folder under ``out``."""
    folder = Path(out) / time.strftime("run-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    trace.to_jsonl(folder / "trace.jsonl")
    plot(results["summaries"]["latent"], results["summaries"]["text"], folder / "run.png")
    return folder


def report(results: dict[str, Any], trace: Trace, config: JobConfig, folder: Path) -> None:
    """Print one conversation in both modes, the side-by-side table and where the files are."""
    first_id = results["answers"][0]["question_id"]
    first = [hop for mode in MODES for hop in trace.conversation(conversation_id(mode, first_id))]
    print(f"\n{results['head']}; {config.questions} questions; {config.replicas} replicas\n")
    print("one conversation in both modes (what each receiver read):")
    print(Trace(first).table(width=90))
    print(f"\n{table(results['summaries']['latent'], results['summaries']['text'], results['latent_over_text'])}")
    print(f"\nquality: {results['metric']}")
    print(f"wrote {folder}/results.json, trace.jsonl, run.png")


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    init_ray(config.address, num_cpus=None if config.address else os.cpu_count())
    results = asyncio.run(run_job(config))
    trace: Trace = results.pop("trace")
    folder = write_results(results, trace, config.out)
    report(results, trace, config, folder)
    return 0
