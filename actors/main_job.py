"""``latentcomm run``: a chain of K agents answers questions in four modes, side by side, on the same replicas.

The first agent holds what answers the question (``actors.tasks``: a note by default, a GSM8K problem with
``--task gsm8k``); each later agent reads the message of the one before it; the last one answers in text.

* ``latent`` — every agent but the last turns its role, its inputs and the latent it received into its own latent
  with one forward pass (``compress`` on parts, the received latent read in context); the last agent ``respond``s
  on its parts. One generation per question, whatever K.
* ``latent-decode`` — as ``latent``, but each receiver first decodes the latent to text (a generation per hop) and
  reads that text.
* ``kv`` — the peers' hand-off (KVComm, LatentMAS): every agent but the last sends the key/value cache of all it
  read (one forward pass; a relay extends the cache it received), the last one answers after it. Nothing is
  compressed, so the message grows with the chain (``latentcomm.model.kv``): the high-capacity reference for ``latent``.
* ``text`` (the baseline) — every agent generates its answer and sends the text.

Quality: the task's metric, the agreement of each mode's final answer with text mode's (MiniLM cosine, and R@1 of
the same question's text answer among all of text mode's answers) and the floor (the last agent with no message).
Time: the wall time of each mode, the mean hop (sender starts producing -> receiver has read it) and the last
agent's answer. ``--sweep 2 3 4 5`` runs every K on the same replicas. Writes ``results.json``, ``trace.jsonl``
(every hop with what was said; a latent read in context is decoded after the run, off the clock, and labelled so;
a KV hop gets its sender's own answer, generated off the clock too) and ``run.png`` under ``runs/run-<timestamp>/``.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from latentcomm.actors.agent import Agent, Incoming, Said, decode_latent, keep_latent
from latentcomm.actors.tasks import TASKS, Item, Task, TaskName, get_task
from latentcomm.actors.trace import Trace, hop_stats
from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.cli.parser import (add_config_arguments, backbone_source, config_from_args, count, head_folder,
                                  output_dir, parser, teacher_source)
from latentcomm.runtime.cluster import init_ray
from latentcomm.model.embedder import DEFAULT_HEAD_DIR
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.engine.replica import ReplicaConfig
from latentcomm.stats import paired_sign_test, wilson_interval
from latentcomm.model.teachers import Teacher, load_teacher, unit_rows

log = logging.getLogger(__name__)

Mode = Literal["latent", "latent-decode", "kv", "text"]
MODES: tuple[Mode, ...] = ("latent", "latent-decode", "kv", "text")
COMPARED: tuple[Mode, ...] = ("latent", "latent-decode", "kv")
"""The modes put beside text (their ratios to it)."""
MAX_AGENTS = 6


@dataclass(frozen=True)
class JobConfig:
    """Everything one ``latentcomm run`` does; written into results.json."""

    task: TaskName = "facts"
    questions: int = 8
    offset: int = 0
    agents: int = 3
    """Agents in the chain (2..6): K - 1 hops."""
    sweep: tuple[int, ...] = ()
    """Chain lengths to run one after the other (e.g. 2 3 4 5) instead of ``agents``."""
    concurrency: int = 2
    """Questions in flight at once, in every mode."""
    wire_dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float16"
    teacher: str = "minilm"
    """Sentence-transformers teacher for the agreement metrics ('minilm', a folder, or 'none' to skip)."""
    sign: bool = False
    """Sign every message with a random HMAC key (and verify it on receipt)."""
    address: str | None = None
    out: str = "runs"
    replica: ReplicaConfig = field(default_factory=lambda: ReplicaConfig(num_threads=1))
    pool: PoolConfig = field(default_factory=lambda: PoolConfig(num_replicas=2, max_in_flight=4))

    def __post_init__(self) -> None:
        for k in (self.agents, *self.sweep):
            if not 2 <= k <= MAX_AGENTS:
                raise ValueError(f"agents must be in 2..{MAX_AGENTS}, got {k} (agents or sweep)")
        if self.questions < 1 or self.offset < 0 or self.concurrency < 1:
            raise ValueError("questions and concurrency must be >= 1 and offset >= 0")

    @property
    def chain_lengths(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(self.sweep)) if self.sweep else (self.agents,)


@dataclass
class Answer:
    """One question's journey through a chain in one mode (or the floor: the last agent with no message)."""

    question_id: str
    mode: str
    agents: int
    final: str
    correct: bool
    seconds: float
    answer_s: float
    """The last agent's own answer (respond on its parts)."""
    agreement: float | None = None
    """Teacher cosine with text mode's final answer to the same question."""


def agent_names(k: int) -> list[str]:
    return ["holder", *(f"relay{i}" for i in range(1, k - 1)), "answerer"]


def build_chain(mode: Mode, k: int, task: Task, pool: ReplicaPool, trace: Trace, config: JobConfig,
                key: bytes | None) -> list[Agent]:
    """K agents for ``mode``: latent receivers keep the latent (``latent``) or decode it (``latent-decode``)."""
    names = agent_names(k)
    roles = [task.first_role, *[task.relay_role] * (k - 2), task.last_role]
    chain = [Agent(name, pool, role=role, key=key, trace=trace, wire_dtype=config.wire_dtype,
                   max_new_tokens=config.replica.max_new_tokens, limits=config.replica.limits)
             for name, role in zip(names, roles)]
    for agent in chain[1:]:
        agent.on("latent", keep_latent if mode == "latent" else decode_latent)
    return chain


async def answer(item: Item, mode: Mode, chain: list[Agent], task: Task, held: Held) -> Answer:
    """One question through the chain in ``mode``; latents read in context are kept in ``held.latents`` (by message
    id) to be decoded for the trace after the run, and each KV hop's sender and input in ``held.kv``."""
    metadata = {"mode": mode, "question": item.id, "agents": len(chain)}
    conversation = f"{mode}:{len(chain)}:{item.id}"  # a unique stream name; nothing is parsed back out of it
    start = time.perf_counter()
    said: Any = task.first_input(item)
    for hop, (sender, receiver) in enumerate(zip(chain, chain[1:]), 1):
        if mode == "text":
            received = await sender.send(receiver, said, kind="text", generate=True, conversation_id=conversation,
                                         metadata=metadata)
        elif mode == "kv":
            received = await sender.send(receiver, said, kind="kv", conversation_id=conversation, metadata=metadata)
            held.kv[received.message.message_id] = (sender, said)
        else:
            received = await sender.send(receiver, said, conversation_id=conversation, metadata=metadata)
        if isinstance(received, Incoming) and received.kind == "latent":
            held.latents[received.message.message_id] = received.data
        said = task.later_input(item, received, last=hop == len(chain) - 1)
    answer_start = time.perf_counter()
    final = await chain[-1].respond(said)
    done = time.perf_counter()
    return Answer(item.id, mode, len(chain), final, task.correct(final, item), done - start, done - answer_start)


async def run_mode(mode: Mode, items: list[Item], chain: list[Agent], task: Task, concurrency: int,
                   held: Held) -> tuple[list[Answer], float]:
    """All questions in ``mode``, ``concurrency`` at a time; returns the answers (in item order) and wall seconds."""
    gate = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(items), desc=f"K={len(chain)} {mode}", unit="question")

    async def one(item: Item) -> Answer:
        async with gate:
            result = await answer(item, mode, chain, task, held)
            bar.update()
            return result

    start = time.perf_counter()
    answers = await asyncio.gather(*(one(item) for item in items))
    bar.close()
    return list(answers), time.perf_counter() - start


async def floor_answers(items: list[Item], task: Task, pool: ReplicaPool, config: JobConfig) -> list[Answer]:
    """The last agent asked the question without any message (not timed against the modes)."""
    last = Agent("answerer", pool, role=task.last_role, max_new_tokens=config.replica.max_new_tokens)
    finals = await asyncio.gather(*(last.respond(task.floor_input(item)) for item in items))
    return [Answer(item.id, "floor", 1, final, task.correct(final, item), 0.0, 0.0)
            for item, final in zip(items, finals)]


@dataclass
class Held:
    """What the trace is annotated from after the timed runs: latents read in context (message id -> bytes) and
    each KV hop's sender with what it read (message id -> (agent, parts))."""

    latents: dict[str, bytes] = field(default_factory=dict)
    kv: dict[str, tuple[Agent, Said]] = field(default_factory=dict)


async def decode_held(pool: ReplicaPool, latents: dict[str, bytes], trace: Trace, max_new_tokens: int) -> None:
    """What the latents read in context decode to, for the trace only (after the timed runs), labelled so."""
    ids = list(latents)
    chunks = [ids[i:i + 8] for i in range(0, len(ids), 8)]
    texts = await asyncio.gather(*(pool.call("decode", [latents[i] for i in chunk], max_new_tokens=max_new_tokens)
                                   for chunk in chunks))
    trace.annotate({i: t for chunk, out in zip(chunks, texts) for i, t in zip(chunk, out)})


async def answer_held_kv(kv: dict[str, tuple[Agent, Said]], trace: Trace) -> None:
    """Each KV hop's sender's own answer to what it read, for the trace only (after the timed run), labelled so;
    empties ``kv`` (the inputs hold the caches)."""
    ids = list(kv)
    texts = await asyncio.gather(*(kv[i][0].respond(kv[i][1]) for i in ids))
    trace.annotate(dict(zip(ids, texts)), text_from="answered off the clock")
    kv.clear()


def agreement(answers: dict[str, list[Answer]], teacher: Teacher | None) -> dict[str, dict[str, float] | None]:
    """Per mode (and floor): mean teacher cosine of each final answer with text mode's answer to the same question,
    and R@1 — the share whose nearest text-mode answer (among all questions') is the same question's. Fills
    ``Answer.agreement``."""
    if teacher is None:
        return {mode: None for mode in answers}
    reference = unit_rows(teacher.embed([a.final for a in answers["text"]]))
    out = {}
    for mode, rows in answers.items():
        vectors = unit_rows(teacher.embed([a.final for a in rows]))
        sims = vectors @ reference.T
        for a, cosine in zip(rows, np.diag(sims)):
            a.agreement = float(cosine)
        out[mode] = {"cosine": float(np.mean(np.diag(sims))),
                     "r_at_1": float(np.mean(np.argmax(sims, axis=1) == np.arange(len(rows))))}
    return out


def summarize(mode: str, k: int, answers: list[Answer], wall_s: float, trace: Trace, generations: int,
              agree: dict[str, float] | None) -> dict[str, Any]:
    """Quality, total, per-hop and answer time, bytes per message and generations of one mode at one K."""
    hops = [h for h in trace.hops if h.metadata.get("mode") == mode and h.metadata.get("agents") == k]
    names = agent_names(k)
    per_hop = {}
    for sender, receiver in zip(names, names[1:]):
        stats = hop_stats([h for h in hops if (h.sender, h.receiver) == (sender, receiver)])
        per_hop[f"{sender}->{receiver}"] = {"latency_s": stats.mean_latency_s, "produce_s": stats.mean_produce_s,
                                            "handle_s": stats.mean_handle_s, "bytes": stats.mean_bytes}
    every = hop_stats(hops)
    return {"mode": mode, "agents": k, "questions": len(answers),
            "task_score": statistics.fmean(a.correct for a in answers), "task_score_ci95": score_interval(answers),
            "agreement_cosine": agree["cosine"] if agree else None,
            "agreement_r_at_1": agree["r_at_1"] if agree else None,
            "wall_s": wall_s, "mean_question_s": statistics.fmean(a.seconds for a in answers),
            "hop_s": every.mean_latency_s, "answer_s": statistics.fmean(a.answer_s for a in answers),
            "bytes_per_message": every.mean_bytes, "generations": generations, "hops": per_hop}


def score_interval(answers: list[Answer]) -> tuple[float, float]:
    """The 95% Wilson interval of the share of correct answers."""
    return wilson_interval(sum(a.correct for a in answers), len(answers))


def against_text(answers: list[Answer], text: list[Answer]) -> dict[str, float | int]:
    """The questions only this mode answers right (``a_only``), only text does (``b_only``), and the exact
    two-sided p-value that both score alike (``stats.paired_sign_test``)."""
    return paired_sign_test([a.correct for a in answers], [a.correct for a in text])


def ratios(mode: dict[str, Any], text: dict[str, Any]) -> dict[str, float | None]:
    """``mode`` / text for time, bytes and task score (time and bytes below 1: cheaper than text)."""
    def ratio(a: float | None, b: float | None) -> float | None:
        return None if a is None or not b else a / b

    return {key: ratio(mode[key], text[key]) for key in ("wall_s", "hop_s", "answer_s", "bytes_per_message",
                                                          "task_score")}


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def interval(bounds: Sequence[float]) -> str:
    return f"{bounds[0]:.2f}-{bounds[1]:.2f}"


def paired(test: dict[str, float | int]) -> str:
    return f"{test['a_only']}/{test['b_only']} ({test['p']:.2f})"


def table(run: dict[str, Any]) -> str:
    """The side-by-side table of one chain length: the modes, the floor, and the ratios to text."""
    s, floor, q = run["summaries"], run["floor"], run["over_text"]
    rows = [("", *MODES, "floor", *(f"{m.replace('latent-', '')}/text" for m in COMPARED))]

    def row(name: str, key: str, spec: str, floor_value: Any = "", ratio: bool = True) -> None:
        cells = [fmt(s[m][key], spec) for m in MODES]
        ratio_cells = [fmt(q[m][key], ".2f") if ratio else "" for m in COMPARED]
        rows.append((name, *cells, floor_value if isinstance(floor_value, str) else fmt(floor_value, spec),
                     *ratio_cells))

    row("task score", "task_score", ".3f", floor["task_score"])
    rows.append(("task score 95% CI", *(interval(s[m]["task_score_ci95"]) for m in MODES),
                 interval(floor["task_score_ci95"]), *[""] * len(COMPARED)))
    rows.append(("right only here / only in text (p)",
                 *(paired(run["against_text"][m]) if m in COMPARED else "" for m in MODES), "", *[""] * len(COMPARED)))
    row("agreement with text: cosine", "agreement_cosine", ".3f", floor["agreement_cosine"], ratio=False)
    row("agreement with text: R@1", "agreement_r_at_1", ".3f", floor["agreement_r_at_1"], ratio=False)
    row("total wall time (s)", "wall_s", ".1f")
    row("mean hop (s)", "hop_s", ".2f")
    row("last agent's answer (s)", "answer_s", ".2f")
    row("bytes per message", "bytes_per_message", ".0f")
    row("generations", "generations", "d", ratio=False)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [r[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:])) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def sweep_table(runs: list[dict[str, Any]]) -> str:
    """Wall time and task score per K and mode, with latent/text."""
    rows = [("K", *(f"{m} s" for m in MODES), "latent/text time", "kv/text time",
             *(f"{m} score" for m in MODES), "floor")]
    for run in runs:
        s = run["summaries"]
        rows.append((str(run["agents"]), *(fmt(s[m]["wall_s"], ".1f") for m in MODES),
                     *(fmt(run["over_text"][m]["wall_s"], ".2f") for m in ("latent", "kv")),
                     *(fmt(s[m]["task_score"], ".3f") for m in MODES), fmt(run["floor"]["task_score"], ".3f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], path: Path, title: str) -> None:
    """Wall time, task score and agreement with text against K, one line per mode (the floor dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"latent": "tab:blue", "latent-decode": "tab:orange", "kv": "tab:green", "text": "tab:gray"}
    ks = [run["agents"] for run in runs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for mode in MODES:
        for ax, key in zip(axes, ("wall_s", "task_score", "agreement_cosine")):
            values = [run["summaries"][mode][key] for run in runs]
            ax.plot(ks, [np.nan if v is None else v for v in values], "o-", color=colors[mode], label=mode)
    axes[1].plot(ks, [run["floor"]["task_score"] for run in runs], "kx--", label="floor (no message)")
    axes[0].set(xlabel="agents in the chain (K)", ylabel="wall time of all questions (s)", xticks=ks)
    axes[1].set(xlabel="agents in the chain (K)", ylabel="task score", ylim=(-0.02, 1.02), xticks=ks)
    axes[2].set(xlabel="agents in the chain (K)", ylabel="MiniLM cosine with text mode's answer", xticks=ks)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


async def run_chain(k: int, items: list[Item], task: Task, pool: ReplicaPool, trace: Trace, config: JobConfig,
                    key: bytes | None, held: Held) -> dict[str, list[Answer] | float | int]:
    """Every mode at one chain length: answers, wall seconds and generations (respond + decode calls); the KV
    hops' trace text is generated after the kv run, so the caches are not kept for longer."""
    out: dict[str, Any] = {}
    for mode in MODES:
        chain = build_chain(mode, k, task, pool, trace, config, key)
        before = pool.method_calls["respond"] + pool.method_calls["decode"]
        out[mode], out[f"{mode} wall_s"] = await run_mode(mode, items, chain, task, config.concurrency, held)
        out[f"{mode} generations"] = pool.method_calls["respond"] + pool.method_calls["decode"] - before
        await answer_held_kv(held.kv, trace)
    return out


async def warm_up(pool: ReplicaPool, replicas: int) -> None:
    """Every path a mode times, once per replica, before anything is timed: compress, KV prefill, decode, and a
    short generation after a prompt and after a KV cache."""
    each = range(replicas)
    latents = await asyncio.gather(*(pool.call("compress", ["warm up"]) for _ in each))
    caches = await asyncio.gather(*(pool.call("prefill", ["warm up"]) for _ in each))
    await asyncio.gather(*(pool.call("decode", latent, max_new_tokens=2) for latent in latents))
    await asyncio.gather(*(pool.call("respond", ["warm up"], max_new_tokens=2) for _ in each))
    await asyncio.gather(*(pool.call("respond", [["warm up", *cache]], max_new_tokens=2) for cache in caches))


async def run_job(config: JobConfig) -> dict[str, Any]:
    """Start replicas, run every mode at every chain length, score them; returns the results (nothing
    written; the trace under "trace")."""
    task = get_task(config.task)
    items = task.load(config.questions, config.offset)
    pool = ReplicaPool(config.replica, config.pool, name="main")
    trace, held = Trace(), Held()
    key = os.urandom(32) if config.sign else None
    try:
        infos = await pool.ready()
        await warm_up(pool, config.pool.num_replicas)
        by_k = {k: await run_chain(k, items, task, pool, trace, config, key, held) for k in config.chain_lengths}
        floor = await floor_answers(items, task, pool, config)
        await decode_held(pool, held.latents, trace, config.replica.max_new_tokens)
        calls = pool.stats()
    finally:
        pool.shutdown()
    runs, everything = [], list(floor)
    teacher = None if config.teacher == "none" else load_teacher(config.teacher)
    for k, out in by_k.items():
        answers = {mode: out[mode] for mode in MODES} | {"floor": floor}
        agree = agreement(answers, teacher)
        summaries = {mode: summarize(mode, k, out[mode], out[f"{mode} wall_s"], trace, out[f"{mode} generations"],
                                     agree[mode]) for mode in MODES}
        floor_summary = {"task_score": task.score([a.final for a in floor], items),
                         "task_score_ci95": score_interval(floor),
                         "agreement_cosine": agree["floor"]["cosine"] if agree["floor"] else None,
                         "agreement_r_at_1": agree["floor"]["r_at_1"] if agree["floor"] else None}
        runs.append({"agents": k, "summaries": summaries, "floor": floor_summary,
                     "over_text": {m: ratios(summaries[m], summaries["text"]) for m in COMPARED},
                     "against_text": {m: against_text(out[m], out["text"]) for m in COMPARED}})
        everything += [a for mode in MODES for a in out[mode]]
    return {"config": asdict(config), "task": task.name, "metric": task.metric, "replicas": infos,
            "head": head_description(config, infos[0]), "pool": calls,
            "host": {"python": platform.python_version(), "cpus": os.cpu_count()}, "runs": runs,
            "answers": [asdict(a) for a in everything], "trace": trace}


def head_description(config: JobConfig, info: dict[str, Any]) -> str:
    if config.replica.head:
        return f"{config.replica.head} ({info['fingerprint']})"
    shipped = config.replica.backbone == DEFAULT_BACKBONE and (DEFAULT_HEAD_DIR / "config.json").is_file()
    return f"{'shipped' if shipped else 'UNTRAINED'} head {info['fingerprint']} on {info['backbone']}"


HELPS = {"task": f"what the chain answers: {', '.join(TASKS)}", "questions": "how many questions",
         "offset": "skip this many questions first", "agents": f"agents in the chain (2..{MAX_AGENTS})",
         "sweep": "run these chain lengths (e.g. 2 3 4 5) instead of --agents", "concurrency": "questions in flight",
         "wire_dtype": "dtype of the latents on the wire",
         "weights_dtype": "backbone dtype (default: the device's fast one)",
         "teacher": "'minilm', a sentence-transformers folder, or 'none' (no agreement metrics)",
         "sign": "HMAC-sign every message with a random key", "backbone": "alias, HF folder or .gguf",
         "head": "a saved head folder (default: the shipped head)", "max_new_tokens": "generation budget per message",
         "num_replicas": "replica actors (one model each)", "num_threads": "torch threads per replica",
         "address": "join an existing Ray cluster (e.g. 'auto' or ray://host:10001)",
         "out": "parent folder of run-<timestamp>/",
         "max_payload_bytes": "largest message payload agents and replicas unpack (raise it for the KV caches of big "
                              "backbones)",
         "max_elements": "most values in one message agents and replicas unpack"}


def parse_config(argv: list[str] | None) -> JobConfig:
    """The ``latentcomm run`` flags (one per field of JobConfig, its ReplicaConfig and PoolConfig) as a checked
    ``JobConfig``."""
    p = parser("run", __doc__.split("\n")[0])
    add_config_arguments(p, JobConfig, helps=HELPS, exclude=("head_config",),
                         flag_types={"questions": count(1), "offset": count(0), "agents": count(2),
                                     "sweep": count(2), "concurrency": count(1), "backbone": backbone_source,
                                     "head": head_folder, "teacher": teacher_source("minilm", "none"),
                                     "out": output_dir, "num_threads": count(1), "max_new_tokens": count(1),
                                     "num_replicas": count(1)})
    args = p.parse_args(argv)
    config = config_from_args(JobConfig, args)
    if not config.address and config.pool.num_replicas * config.pool.num_cpus > (os.cpu_count() or 1):
        p.error(f"{config.pool.num_replicas} replicas x {config.pool.num_cpus} CPUs do not fit on {os.cpu_count()} "
                "local CPUs; lower --num-replicas or --num-cpus, or join a cluster with --address")
    try:
        get_task(config.task).load(config.questions, config.offset)  # before Ray starts: e.g. an offset past the end
    except ValueError as err:
        p.error(f"argument --offset: {err}")
    return config


def write_results(results: dict[str, Any], trace: Trace, out: str) -> Path:
    """``results.json``, ``trace.jsonl`` and ``run.png`` in a new ``run-<timestamp>/`` folder under ``out``."""
    folder = Path(out) / time.strftime("run-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    trace.to_jsonl(folder / "trace.jsonl")
    plot(results["runs"], folder / "run.png",
         f"latentcomm run: {results['task']}, {results['config']['questions']} questions, {len(MODES)} modes")
    return folder


def report(results: dict[str, Any], trace: Trace, config: JobConfig, folder: Path) -> None:
    """Print one conversation in every mode (the longest chain), the table of each K and where the files are."""
    first_id, k = results["answers"][0]["question_id"], config.chain_lengths[-1]
    first = [h for h in trace.hops if h.metadata.get("question") == first_id and h.metadata.get("agents") == k]
    print(f"\n{results['head']}; task {results['task']}; {config.questions} questions; "
          f"{config.pool.num_replicas} replicas; wire {config.wire_dtype}\n")
    print(f"one question in every mode, K={k} (what each receiver read; [decoded off the clock]: the receiver read "
          "the latent in context, [answered off the clock]: what the sender of a KV cache would have said; those "
          "texts are for you):")
    print(Trace(first).table(width=90))
    final = {a["mode"]: a["final"] for a in results["answers"] if a["question_id"] == first_id
             and a["agents"] in (k, 1)}
    for mode, text in final.items():
        print(f"  final ({mode}): {' '.join(text.split())[:110]}")
    for run in results["runs"]:
        print(f"\nK = {run['agents']} agents ({run['agents'] - 1} hops):")
        print(table(run))
    if len(results["runs"]) > 1:
        print(f"\nsweep:\n{sweep_table(results['runs'])}")
    print(f"\ntask score: {results['metric']}; agreement: all-MiniLM-L6-v2 cosine with text mode's final answer, "
          "R@1 among all of text mode's answers; floor: the last agent without any message; 95% CI: Wilson interval; "
          "right only here / only in text: questions one of the two gets right, p: exact two-sided sign test "
          "(McNemar) that both score alike")
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
