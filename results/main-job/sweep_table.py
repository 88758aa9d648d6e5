"""Markdown tables of a main-job sweep (``results.json``): per K, each mode's task score with its 95% interval,
the paired sign test against text and against the floor (the last agent asked without a message), and its wall
time, sender time per message and bytes. Usage: ``python results/main-job/sweep_table.py RESULTS_JSON``."""
from __future__ import annotations

import json
import sys
from collections import defaultdict

from latentcomm.stats import format_interval, paired_sign_test


def tables(results: dict) -> str:
    correct: dict[tuple[str, int], dict[str, bool]] = defaultdict(dict)
    for a in results["answers"]:
        correct[(a["mode"], a["agents"])][a["question_id"]] = a["correct"]
    out = []
    for run in results["runs"]:
        k, s = run["agents"], run["summaries"]
        floor = correct[("floor", 1)]  # one floor per job: the last agent alone
        text = s["text"]
        out += [f"K = {k}:", "", "| mode | score (95% CI) | vs text: only here / only text, p | vs floor: p | "
                "wall / text | sender s per message | bytes per message |", "|---|---|---|---|---:|---:|---:|"]
        for mode, m in s.items():
            ids = sorted(correct[(mode, k)])
            versus_text = paired_sign_test([correct[(mode, k)][i] for i in ids], [correct[("text", k)][i] for i in ids])
            versus_floor = paired_sign_test([correct[(mode, k)][i] for i in ids], [floor[i] for i in ids])
            sender = m.get("sender_s")
            out.append(f"| {mode} | {m['task_score']:.3f} ({format_interval(m['task_score_ci95'], '-')}) | "
                       + ("" if mode == "text" else
                          f"{versus_text['a_only']}/{versus_text['b_only']}, {versus_text['p']:.3g}") + " | "
                       f"{versus_floor['p']:.3g} | {m['wall_s'] / text['wall_s']:.2f} | "
                       f"{'' if sender is None else f'{sender:.2f}'} | {m['bytes_per_message']:,.0f} |")
        f = run["floor"]
        out += [f"| floor | {f['task_score']:.3f} ({format_interval(f['task_score_ci95'], '-')}) | | | | | |", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(tables(json.loads(open(sys.argv[1]).read())))
