"""Reporting the main job: the table of each chain length, the sweep table, the plot, and the run folder
(``results.json``, ``trace.jsonl``, ``run.png``)."""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latentcomm.actors.job.modes import mode_named
from latentcomm.actors.job.results import ChainResult, RunResult
from latentcomm.actors.trace import Trace
from latentcomm.stats import format_interval

LEGEND = ("agreement: all-MiniLM-L6-v2 cosine with text mode's final answer, R@1 among all of text mode's answers; "
          "floor: the last agent without any message; 95% CI: Wilson interval; right only here / only in text: "
          "questions one of the two gets right, p: exact two-sided sign test (McNemar) that both score alike")


def fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def interval(bounds: Sequence[float]) -> str:
    return format_interval(bounds, sep="-")


def paired(test: dict[str, float | int]) -> str:
    return f"{test['a_only']}/{test['b_only']} ({test['p']:.2f})"


def aligned(rows: list[tuple[str, ...]], *, label_left: bool) -> str:
    """``rows`` as columns, right-aligned (the first column left-aligned with ``label_left``), a rule under the
    header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    if label_left:
        lines = [r[0].ljust(widths[0]) + "  " + "  ".join(c.rjust(w) for c, w in zip(r[1:], widths[1:]))
                 for r in rows]
    else:
        lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def table(run: ChainResult) -> str:
    """The side-by-side table of one chain length: the modes, the floor, and the ratios to text."""
    s, floor, q = run.summaries, run.floor, run.over_text
    modes, compared = list(s), list(q)
    blank = [""] * len(compared)
    rows = [("", *modes, "floor", *(f"{mode_named(m).short}/text" for m in compared))]

    def row(name: str, key: str, spec: str, floor_value: Any = "", ratio: bool = True) -> None:
        cells = [fmt(getattr(s[m], key), spec) for m in modes]
        ratio_cells = [fmt(getattr(q[m], key), ".2f") for m in compared] if ratio else blank
        rows.append((name, *cells, floor_value if isinstance(floor_value, str) else fmt(floor_value, spec),
                     *ratio_cells))

    row("task score", "task_score", ".3f", floor.task_score)
    rows.append(("task score 95% CI", *(interval(s[m].task_score_ci95) for m in modes),
                 interval(floor.task_score_ci95), *blank))
    rows.append(("right only here / only in text (p)",
                 *(paired(run.against_text[m]) if m in compared else "" for m in modes), "", *blank))
    row("agreement with text: cosine", "agreement_cosine", ".3f", floor.agreement_cosine, ratio=False)
    row("agreement with text: R@1", "agreement_r_at_1", ".3f", floor.agreement_r_at_1, ratio=False)
    row("total wall time (s)", "wall_s", ".1f")
    row("mean hop (s)", "hop_s", ".2f")
    row("sender time per message (s)", "sender_s", ".2f", ratio=False)
    row("last agent's answer (s)", "answer_s", ".2f")
    row("bytes per message", "bytes_per_message", ".0f")
    row("messages per question", "messages_per_question", ".1f", ratio=False)
    row("generations", "generations", "d", ratio=False)
    return aligned(rows, label_left=True)


def sweep_table(runs: Sequence[ChainResult]) -> str:
    """Wall time and task score per K and mode, with each compared mode's time over text's."""
    modes, compared = list(runs[0].summaries), list(runs[0].over_text)
    rows = [("K", *(f"{m} s" for m in modes), *(f"{mode_named(m).short}/text time" for m in compared),
             *(f"{m} score" for m in modes), "floor")]
    for run in runs:
        s = run.summaries
        rows.append((str(run.agents), *(fmt(s[m].wall_s, ".1f") for m in modes),
                     *(fmt(run.over_text[m].wall_s, ".2f") for m in compared),
                     *(fmt(s[m].task_score, ".3f") for m in modes), fmt(run.floor.task_score, ".3f")))
    return aligned(rows, label_left=False)


def plot(runs: Sequence[ChainResult], path: Path, title: str) -> None:
    """Wall time, task score and agreement with text against K, one line per mode (the floor dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = [run.agents for run in runs]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for mode in runs[0].summaries:
        for ax, key in zip(axes, ("wall_s", "task_score", "agreement_cosine")):
            values = [getattr(run.summaries[mode], key) for run in runs]
            ax.plot(ks, [np.nan if v is None else v for v in values], "o-", color=mode_named(mode).color, label=mode)
    axes[1].plot(ks, [run.floor.task_score for run in runs], "kx--", label="floor (no message)")
    axes[0].set(xlabel="agents in the chain (K)", ylabel="wall time of all questions (s)", xticks=ks)
    axes[1].set(xlabel="agents in the chain (K)", ylabel="task score", ylim=(-0.02, 1.02), xticks=ks)
    axes[2].set(xlabel="agents in the chain (K)", ylabel="MiniLM cosine with text mode's answer", xticks=ks)
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(result: RunResult, trace: Trace, out: str) -> Path:
    """``results.json``, ``trace.jsonl`` and ``run.png`` in a new ``run-<timestamp>/`` folder under ``out``."""
    folder = Path(out) / time.strftime("run-%Y%m%d-%H%M%S")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) + "\n")
    trace.to_jsonl(folder / "trace.jsonl")
    plot(result.runs, folder / "run.png", f"latentcomm run: {result.task}, {result.config.questions} questions, "
                                          f"{len(result.runs[0].summaries)} modes")
    return folder


def print_report(result: RunResult, trace: Trace, folder: Path) -> None:
    """Print one conversation in every mode (the longest chain), the table of each K and where the files are."""
    config = result.config
    first_id, k = result.answers[0].question_id, config.chain_lengths[-1]
    first = [h for h in trace.hops if h.metadata.get("question") == first_id and h.metadata.get("agents") == k]
    print(f"\n{result.head}; task {result.task}; {config.questions} questions; "
          f"{config.pool.num_replicas} replicas; wire {config.wire_dtype}\n")
    print(f"one question in every mode, K={k} (what each receiver read; [decoded off the clock]: the receiver read "
          "the latent in context, [answered off the clock]: what the sender of a KV cache would have said; those "
          "texts are for you):")
    print(Trace(first).table(width=90))
    for a in result.answers:
        if a.question_id == first_id and a.agents in (k, 1):
            print(f"  final ({a.mode}): {' '.join(a.final.split())[:110]}")
    for run in result.runs:
        print(f"\nK = {run.agents} agents ({run.agents - 1} hops):")
        print(table(run))
    if len(result.runs) > 1:
        print(f"\nsweep:\n{sweep_table(result.runs)}")
    print(f"\ntask score: {result.metric}; {LEGEND}")
    print(f"wrote {folder}/results.json, trace.jsonl, run.png")
