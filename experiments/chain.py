"""``latentcomm experiment chain``: can compressed latents be chained across forward passes to reason?

The recipe, top to bottom:

1. tasks: made-up relation chains and short arithmetic chains (GSM8K for bigger backbones) needing 1..max_hops
   steps, each with its gold steps; train and test disjoint (``chain_tasks``);
2. the step head, trained by the training recipe under Ray Train (``chain_train``): step k's latent, made from
   the question and step k-1's latent, reconstructs gold step k, with a curriculum over k;
3. evaluation as Ray tasks, one per shard of test tasks (``chain_eval``): direct answer, text chain of thought,
   the gold steps as text (a ceiling) and latent chains of 1..max_hops steps, answered from or decoded;
4. the report: accuracy overall, per family and per number of required steps, forward passes and wall time per
   question, the text baselines in every table; ``results.json``, ``report.md`` and PNG charts.

``--resume`` continues a stopped run in ``--out``: training from its newest checkpoint, evaluation with the
shards not yet written.
"""
from __future__ import annotations

import json
import shutil
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from latentcomm.runtime.cluster import init_ray
from latentcomm.cli.parser import add_config_arguments, config_from_args
from latentcomm.training.config import TrainConfig
from latentcomm.training.train import run_training, train_with_ray
from latentcomm.experiments.chain_eval import CEILING, COT_PROMPT, EvalSettings, chain_method, evaluate_shard
from latentcomm.experiments.chain_tasks import ChainTask, make_tasks
from latentcomm.experiments.chain_train import ChainRecipe, write_chain_data
from latentcomm.experiments.chaining import ANSWER_PROMPT, STEP_PROMPT
from latentcomm.experiments.jobs import experiment_main, prepare_folder, run_tasks, settings_of
from latentcomm.experiments.report import markdown_table, pyplot, save_figure, write_report
from latentcomm.stats import format_interval, paired_sign_test, wilson_interval

TRAIN_DEFAULTS = {"out": "runs/experiments/chain", "max_steps": 300, "micro_batch": 8, "warmup_steps": 10,
                  "in_context_share": 0.5, "max_query_tokens": 256, "max_response_tokens": 32, "workers": 1,
                  "checkpoint_every": 50}
"""Training flags whose default differs here from ``latentcomm train``'s."""
TEXT_BASELINES = ("direct", "text CoT")


@dataclass(frozen=True)
class ChainConfig:
    """The chain experiment: its tasks, evaluation and report, plus the step head's ``TrainConfig`` (no closed-form
    align fit: the step head's inputs are parts, not the queries that ``align_fit`` compresses)."""

    train: TrainConfig
    families: tuple[str, ...] = ("relations", "arithmetic")
    max_hops: int = 4
    """Tasks need 1..max_hops steps; chains of 1..max_hops latent steps are evaluated."""
    train_per_hops: int = 400
    test_per_hops: int = 25
    task_seed: int = 0
    curriculum: bool = True
    shard_size: int = 25
    batch_size: int = 16
    max_new_tokens: int = 24
    cot_tokens: int = 128
    report: str = ""
    """Folder of the report (small files only); empty: OUT/report."""
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_hops", "test_per_hops", "shard_size", "batch_size", "max_new_tokens", "cot_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def out(self) -> Path:
        return Path(self.train.out)

    @property
    def report_dir(self) -> Path:
        return Path(self.report) if self.report else self.out / "report"

    @classmethod
    def add_arguments(cls, ap) -> None:
        add_config_arguments(ap, cls, helps=_HELP, exclude=("train",))
        TrainConfig.add_arguments(ap, defaults=TRAIN_DEFAULTS, exclude=("run", "align_fit"), helps={
            "out": "working folder: data/, train/ (checkpoints, head), eval/ (one JSON per shard), report/",
            "resume": "continue the experiment in --out (training from its newest checkpoint, missing shards)"})

    @classmethod
    def from_args(cls, args) -> "ChainConfig":
        return config_from_args(cls, args, train=TrainConfig.from_args(args, run="", align_fit=0))


_HELP = {
    "families": "task families: relations, arithmetic, gsm8k (gsm8k is for backbones bigger than 135M)",
    "max_hops": "tasks need 1..N steps; latent chains of 1..N steps are evaluated",
    "train_per_hops": "training tasks per family and number of steps",
    "test_per_hops": "test tasks per family and number of steps",
    "task_seed": "seed of the synthetic tasks",
    "curriculum": "train chain step k only after steps 1..k-1 (equal shares of the optimizer steps)",
    "shard_size": "test tasks per Ray evaluation task",
    "batch_size": "batch size of compress, decode and respond in evaluation",
    "max_new_tokens": "token budget of direct answers, chain answers and decodes",
    "cot_tokens": "token budget of the text chain of thought",
    "report": "report folder (JSON, markdown, PNG); default OUT/report",
    "num_cpus": "CPUs of the local Ray cluster (default: all)",
}


# ---- the recipe ------------------------------------------------------------------------------------------
def train_step_head(cfg: ChainConfig, tasks: Sequence[ChainTask]) -> Path | None:
    """The trained step head (None when training stopped early, ``--stop-after``); trains only what is missing."""
    folder = cfg.out / "train"
    if (folder / "summary.json").is_file():
        return folder / "head"
    data = write_chain_data(cfg.out / "data", tasks, cfg.train.head.teacher, max_hops=cfg.max_hops,
                            curriculum=cfg.curriculum, backbone=cfg.train.backbone)
    train_cfg = replace(cfg.train, run=str(data), out=str(folder), resume=True)
    summary = train_with_ray(train_cfg, ChainRecipe) if train_cfg.workers else run_training(train_cfg, ChainRecipe)
    return None if "stopped_at" in summary or summary.get("stopped") else folder / "head"


def evaluate(cfg: ChainConfig, head: Path, tasks: Sequence[ChainTask]) -> dict[str, dict[str, Any]]:
    """Every method on every test task, one Ray task per shard (finished shards are kept)."""
    settings = EvalSettings(cfg.max_hops, cfg.batch_size, cfg.max_new_tokens, cfg.cot_tokens)
    jobs = {f"shard-{i:04d}": (cfg.train.backbone, str(head.resolve()), list(tasks[start:start + cfg.shard_size]),
                               settings)
            for i, start in enumerate(range(0, len(tasks), cfg.shard_size))}
    return run_tasks(evaluate_shard, jobs, cfg.out / "eval", desc="chain eval")


def method_order(max_hops: int) -> list[str]:
    """Rows of the report: the text baselines, the latent chains, their oracle-length rows, the ceiling."""
    rows = list(TEXT_BASELINES)
    for reader in ("answer", "decode"):
        rows += [chain_method(k, reader) for k in range(1, max_hops + 1)] + [chain_method("hops", reader)]
    return rows + [CEILING]


def summarize(cfg: ChainConfig, shards: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per method: accuracy overall, per family and per number of steps, forward passes and seconds per question."""
    records = [r for shard in shards.values() for r in shard["records"]]
    questions = sum(shard["questions"] for shard in shards.values())
    seconds: dict[str, float] = defaultdict(float)
    for shard in shards.values():
        for method, value in shard["seconds"].items():
            seconds[method] += value
    for reader in ("answer", "decode"):  # the chain with as many latent steps as the task needs (an oracle count)
        records += [{**r, "method": chain_method("hops", reader)} for r in records
                    if r["steps"] == r["hops"] and r["method"] == chain_method(r["steps"], reader)]
    by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_method[record["method"]].append(record)
    families = sorted({r["family"] for r in records})
    hops = sorted({r["hops"] for r in records})

    def accuracy(rows: list[dict[str, Any]], key: str = "correct") -> float | None:
        return float(np.mean([r[key] for r in rows])) if rows else None

    methods = {}
    for method in method_order(cfg.max_hops):
        rows = by_method[method]
        methods[method] = {
            "n": len(rows), "accuracy": accuracy(rows),
            "interval": list(wilson_interval(sum(r["correct"] for r in rows), len(rows))) if rows else None,
            "by_family": {f: accuracy([r for r in rows if r["family"] == f]) for f in families},
            "by_hops": {str(h): accuracy([r for r in rows if r["hops"] == h]) for h in hops},
            "passes_per_question": float(np.mean([r["passes"] for r in rows])) if rows else None,
            "seconds_per_question": seconds[method] / questions if method in seconds else None,
        }
    correct = {m: {r["task"]: r["correct"] for r in rows} for m, rows in by_method.items()}
    paired = {m: {base: paired_sign_test([correct[m][t] for t in correct[base]], list(correct[base].values()))
                  for base in TEXT_BASELINES}
              for m in methods if m.startswith("latent chain") and correct.get(m)}
    step_fidelity = {str(k): {f: accuracy([r for r in by_method[chain_method(k, "decode")]
                                           if r["family"] == f and r["hops"] >= k], "step_correct")
                              for f in families} for k in range(1, cfg.max_hops + 1)}
    deepest = {f: next(r["task"] for r in records if r["family"] == f and r["hops"] == max(hops)) for f in families}
    shown = {*TEXT_BASELINES, chain_method("hops", "answer"), chain_method("hops", "decode")}
    examples = [{"method": r["method"], "task": r["task"], "hops": r["hops"], "output": r["output"],
                 "correct": r["correct"]} for r in records if r["task"] in deepest.values() and r["method"] in shown]
    return {"questions": questions, "families": families, "hops": hops, "methods": methods, "paired": paired,
            "step_fidelity": step_fidelity, "examples": examples}


def train_summary(cfg: ChainConfig) -> dict[str, Any]:
    """Steps, final losses and time of the step head's training (from its metrics)."""
    folder = cfg.out / "train"
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    tail = records[-max(1, len(records) // 10):]
    return {"steps": len(records), "final_recon": float(np.mean([r["recon"] for r in tail])),
            "first_recon": records[0]["recon"], "final_align": float(np.mean([r["align"] for r in tail])),
            "seconds": float(sum(cfg.train.global_batch / r["samples_per_s"] for r in records)),
            "head": str(folder / "head")}


def run(cfg: ChainConfig, command: str) -> Path | None:
    """The whole experiment; returns the report (None when training stopped early)."""
    prepare_folder(cfg.out, settings_of(cfg), resume=cfg.train.resume)
    train_tasks, test_tasks = make_tasks(cfg.families, cfg.max_hops, cfg.train_per_hops, cfg.test_per_hops,
                                         cfg.task_seed)
    init_ray(cfg.train.address, num_cpus=cfg.num_cpus)
    head = train_step_head(cfg, train_tasks)
    if head is None:
        return None
    results = summarize(cfg, evaluate(cfg, head, test_tasks))
    results |= {"command": command, "backbone": cfg.train.backbone, "train_tasks": len(train_tasks),
                "training": train_summary(cfg), "config": settings_of(cfg),
                "prompts": {"step": STEP_PROMPT, "answer": ANSWER_PROMPT, "cot": COT_PROMPT}}
    folder = cfg.report_dir
    folder.mkdir(parents=True, exist_ok=True)
    plot_accuracy_by_hops(results, folder / "accuracy_by_hops.png")
    plot_cost(results, folder / "cost_accuracy.png")
    shutil.copyfile(cfg.out / "train" / "loss.png", folder / "step_head_loss.png")
    return write_report(folder, results, markdown(results))


# ---- the report ------------------------------------------------------------------------------------------
def markdown(results: dict[str, Any]) -> str:
    methods, families, hops = results["methods"], results["families"], results["hops"]
    training = results["training"]
    lines = [
        "# Latent chaining", "",
        f"`{results['command']}`", "",
        f"Backbone `{results['backbone']}` (frozen). Step head: {training['steps']} optimizer steps on "
        f"{results['train_tasks']} training tasks, {training['seconds'] / 60:.0f} min; reconstruction loss "
        f"{training['first_recon']:.2f} → {training['final_recon']:.2f} (mean of the last tenth of the steps). "
        f"{results['questions']} test questions, every method on the same ones.", "",
        "Forward passes: one per generated token (prefill included) plus one per latent chain step. "
        "`×hops` rows use, per question, a chain of exactly as many steps as it needs (an oracle count). "
        "The ceiling row is given the gold steps as text.", "",
        "## Accuracy, forward passes and wall time", "",
        markdown_table(["method", "accuracy", "95% interval", *families, "forward passes / question",
                        "seconds / question"],
                       [[m, v["accuracy"], _interval(v["interval"]), *[v["by_family"].get(f) for f in families],
                         v["passes_per_question"], v["seconds_per_question"]] for m, v in methods.items()]), "",
        "The interval is the Wilson 95% score interval of the accuracy on these questions.", "",
        "## Accuracy by the number of steps a task needs", "",
        markdown_table(["method", *[f"{h} step{'s' if h > 1 else ''}" for h in hops]],
                       [[m, *[v["by_hops"].get(str(h)) for h in hops]] for m, v in methods.items()]), "",
        "## Does the k-th latent hold step k's result? (`decode(z_k)` names what gold step k arrives at)", "",
        markdown_table(["k", *families], [[k, *[v.get(f) for f in families]]
                                          for k, v in results["step_fidelity"].items()]), "",
        "## Reading the numbers", "", *findings(results), "",
        "## Examples", "",
        markdown_table(["task", "method", "correct", "output"],
                       [[e["task"], e["method"], e["correct"], e["output"][:160]] for e in results["examples"]]),
        "", "Prompts: " + ", ".join(f"{k} `{v!r}`" for k, v in results["prompts"].items()), ""]
    return "\n".join(lines)


def _interval(bounds: list[float] | None) -> str | None:
    return None if bounds is None else format_interval(bounds)


def findings(results: dict[str, Any], alpha: float = 0.05) -> list[str]:
    """Plain statements computed from the table: the best latent row against the text baselines, paired on the same
    questions (exact McNemar test), and which latent rows differ from a baseline at ``alpha`` at all."""
    methods, paired = results["methods"], results["paired"]
    latent = {m: v for m, v in methods.items() if m in paired and v["accuracy"] is not None}
    best = max(latent, key=lambda m: latent[m]["accuracy"])
    lines = [f"- best latent row: {best}, accuracy {latent[best]['accuracy']:.3f} "
             f"({_interval(latent[best]['interval'])}) with {latent[best]['passes_per_question']:.1f} forward passes "
             "per question (picked as the best of the latent rows after the fact)."]
    for name in TEXT_BASELINES:
        v, test = methods[name], paired[best][name]
        diff = latent[best]["accuracy"] - v["accuracy"]
        lines.append(f"- {name}: accuracy {v['accuracy']:.3f} ({_interval(v['interval'])}) with "
                     f"{v['passes_per_question']:.1f} forward passes; the best latent row is "
                     f"{'above' if diff > 0 else 'below' if diff < 0 else 'level with'} it ({diff:+.3f}; "
                     f"{test['a_only']} questions right "
                     f"only in the latent row, {test['b_only']} only in {name}; McNemar p = {test['p']:.2f}).")
    for name in TEXT_BASELINES:
        apart = [f"{m} ({methods[m]['accuracy'] - methods[name]['accuracy']:+.3f}, p = {t[name]['p']:.3f})"
                 for m, t in paired.items() if t[name]["p"] < alpha]
        lines.append(f"- latent rows that differ from {name} at p < {alpha}: " + (", ".join(apart) if apart else
                     f"none — on {results['questions']} questions the latent chains cannot be told apart from it."))
    return lines


def plot_accuracy_by_hops(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    hops = results["hops"]
    shown = [*TEXT_BASELINES, chain_method("hops", "answer"), chain_method("hops", "decode"),
             chain_method(max(hops), "answer"), CEILING]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name in dict.fromkeys(shown):
        values = [results["methods"][name]["by_hops"].get(str(h)) for h in hops]
        style = "--" if name in TEXT_BASELINES or name == CEILING else "-"
        ax.plot(hops, [np.nan if v is None else v for v in values], style, marker="o", label=name)
    ax.set(xlabel="steps the task needs", ylabel="accuracy", ylim=(0, 1.05), xticks=hops,
           title=f"accuracy by task depth ({results['questions']} test questions)")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_cost(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, v in results["methods"].items():
        if v["accuracy"] is None:
            continue
        color = "tab:gray" if name in TEXT_BASELINES or name == CEILING else (
            "tab:blue" if name.endswith("answer") else "tab:orange")
        ax.scatter(v["passes_per_question"], v["accuracy"], color=color)
        ax.annotate(name.replace("latent chain ", ""), (v["passes_per_question"], v["accuracy"]), fontsize=6,
                    xytext=(3, 3), textcoords="offset points")
    ax.set(xscale="log", xlabel="forward passes per question (log)", ylabel="accuracy", ylim=(-0.02, 1.05),
           title="accuracy against compute (gray: text, blue: latent → answer, orange: latent → decode)")
    ax.title.set_fontsize(8)
    save_figure(fig, path)


DESCRIPTION = ("Latent chaining: step latents fed back across forward passes, against direct "
               "answers and text chain of thought; a Ray job ending in a report.")


def main(argv: list[str] | None = None) -> int:
    return experiment_main("chain", DESCRIPTION, ChainConfig, run, argv)
