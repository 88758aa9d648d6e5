"""``latentcomm experiment jepa``: full JEPA — the frozen LLM as world model and as target encoder, no outside teacher.

The recipe, top to bottom:

1. train one head per variant (``VARIANTS``) on the same run, with the same ``TrainConfig`` budget (steps, batch,
   learning rate, seed), each under Ray Train and resumable from its checkpoints;
2. the benchmark suite (``latentcomm.benchmarks.suite``: mini-MTEB, reasoning, safety retrieval) on every head
   and the suite's baselines, as Ray jobs;
3. per head, as Ray tasks (``jepa_eval``): retrieval in its own teacher's space, held-out reconstruction and its
   rows of the fidelity table, all judged by MiniLM; plus the table's text rows (no message, query, response);
4. the report: ``results.json``, ``report.md`` (which variant wins where, whether latents stay decodable) and
   PNG charts.

The encoder-side LoRA variant adapts the backbone's attention query/value projections during compress only
(``latentcomm.model.lora``); decode and respond run the plain backbone, so its latents are read by the same frozen
LLM as every other head's.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from latentcomm.benchmarks.encoders import EncoderSpec, standard_specs
from latentcomm.benchmarks.suite import PROFILES, markdown as suite_markdown, plot as plot_suite, run_jobs, \
    suite_results, suite_tasks
from latentcomm.runtime.cluster import init_ray
from latentcomm.cli.parser import add_config_arguments, config_from_args
from latentcomm.training.config import TrainConfig
from latentcomm.training.fidelity import FidelityRow, table_markdown
from latentcomm.training.metrics import MetricsLog
from latentcomm.training.train import run_training, train_with_ray
from latentcomm.experiments.jepa_eval import JUDGE, heldout_job
from latentcomm.experiments.jobs import experiment_main, prepare_folder, run_tasks, settings_of
from latentcomm.experiments.report import markdown_table, pyplot, save_figure, write_report
from latentcomm.stats import format_interval, wilson_interval


@dataclass(frozen=True)
class Variant:
    """One head of the comparison: its teacher and losses (everything else is the shared ``TrainConfig``)."""

    name: str
    description: str
    teacher: str
    recon_weight: float = 1.0
    align_loss: str = "mse"
    lora: bool = False

    def train_config(self, base: TrainConfig, out: Path, lora_rank: int) -> TrainConfig:
        head = replace(base.head, teacher=self.teacher, encoder_lora_rank=lora_rank if self.lora else 0)
        return replace(base, out=str(out), head=head, recon_weight=self.recon_weight, align_loss=self.align_loss,
                       resume=True)


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("minilm+recon", "MiniLM teacher + reconstruction (the paper's recipe, today's default)", "minilm"),
    Variant("self+recon", "self teacher (the frozen LLM's mean-pooled states of the response) + reconstruction",
            "self"),
    Variant("self-only", "self teacher, no reconstruction", "self", recon_weight=0.0),
    Variant("self-cosine+recon", "LLM-JEPA form: reconstruction + (1 - cosine) between the predicted embedding and "
            "the LLM's own embedding of the response", "self", align_loss="cosine"),
    Variant("self+recon+lora", "self + reconstruction, with encoder-side LoRA adapters on only while compressing",
            "self", lora=True),
)}
TRAIN_DEFAULTS = {"out": "runs/experiments/jepa", "max_steps": 200, "micro_batch": 8, "warmup_steps": 10,
                  "max_response_tokens": 64, "workers": 1, "checkpoint_every": 50}
"""Training flags whose default differs here from ``latentcomm train``'s."""


@dataclass(frozen=True)
class JepaConfig:
    """The JEPA comparison: which variants, how they are evaluated, plus the shared ``TrainConfig``."""

    train: TrainConfig
    variants: tuple[str, ...] = tuple(VARIANTS)
    lora_rank: int = 8
    suite_profile: str = "quick"
    suite_tasks: tuple[str, ...] = ()
    """Suite tasks to run; empty: all of the profile."""
    suite_baselines: tuple[str, ...] = ("untrained", "minilm", "meanpool")
    heldout: int = 200
    fidelity_queries: int = 48
    max_new_tokens: int = 48
    batch_size: int = 16
    report: str = ""
    """Folder of the report (small files only); empty: OUT/report."""
    num_cpus: int | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown or not self.variants:
            raise ValueError(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
        if self.suite_profile not in PROFILES:
            raise ValueError(f"suite_profile must be one of {sorted(PROFILES)}, got {self.suite_profile!r}")
        if set(self.suite_baselines) - {"untrained", "minilm", "meanpool"}:
            raise ValueError(f"suite_baselines are untrained, minilm and meanpool, got {self.suite_baselines}")
        if self.lora_rank < 1 or not 2 <= self.fidelity_queries <= self.heldout:
            raise ValueError("need lora_rank >= 1 and 2 <= fidelity_queries <= heldout")

    @property
    def out(self) -> Path:
        return Path(self.train.out)

    @property
    def report_dir(self) -> Path:
        return Path(self.report) if self.report else self.out / "report"

    @classmethod
    def add_arguments(cls, ap: argparse.ArgumentParser) -> None:
        add_config_arguments(ap, cls, helps=_HELP, exclude=("train",))
        TrainConfig.add_arguments(ap, defaults=TRAIN_DEFAULTS, exclude=("teacher", "recon_weight", "align_loss",
                                                                        "encoder_lora_rank"), helps={
            "out": "working folder: heads/<variant>/ (checkpoints, head), suite/, heldout/, report/",
            "resume": "continue the experiment in --out (training from checkpoints, only the missing jobs)"})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "JepaConfig":
        return config_from_args(cls, args, train=TrainConfig.from_args(args))


_HELP = {
    "variants": f"heads to train and compare: {', '.join(VARIANTS)}",
    "lora_rank": "rank of the encoder-side LoRA adapters of the lora variant",
    "suite_profile": "benchmark suite profile: tiny, quick or full",
    "suite_tasks": "suite tasks to run (default: all of the profile)",
    "suite_baselines": "suite baselines beside the heads: untrained, minilm, meanpool",
    "heldout": "held-out queries for retrieval and reconstruction",
    "fidelity_queries": "held-out queries of the fidelity table",
    "max_new_tokens": "token budget of the fidelity table's decodes and answers",
    "batch_size": "batch size of evaluation",
    "report": "report folder (JSON, markdown, PNG); default OUT/report",
    "num_cpus": "CPUs of the local Ray cluster (default: all)",
}


# ---- the recipe ------------------------------------------------------------------------------------------
def train_variant(cfg: JepaConfig, variant: Variant) -> Path | None:
    """The variant's trained head (None when training stopped early); trains only what is missing."""
    folder = cfg.out / "heads" / variant.name
    if not (folder / "summary.json").is_file():
        train_cfg = variant.train_config(cfg.train, folder, cfg.lora_rank)
        summary = train_with_ray(train_cfg) if train_cfg.workers else run_training(train_cfg)
        if "stopped_at" in summary or summary.get("stopped"):
            return None
    return folder / "head"


def run_suite(cfg: JepaConfig, heads: dict[str, Path]) -> dict[str, Any]:
    """The benchmark suite on every head and the chosen baselines (the suite's own resumable Ray jobs)."""
    backbone, batch = cfg.train.backbone, cfg.batch_size
    specs = [EncoderSpec("head", name, str(path.resolve()), backbone, batch) for name, path in heads.items()]
    specs += [s for s in standard_specs(backbone=backbone, batch_size=batch)[0] if s.kind in cfg.suite_baselines]
    profile = PROFILES[cfg.suite_profile]
    tasks = list(cfg.suite_tasks or suite_tasks(profile))
    jobs = run_jobs(tasks, specs, profile, cfg.out / "suite", address=cfg.train.address, num_cpus=cfg.num_cpus)
    args = argparse.Namespace(profile=cfg.suite_profile, backbone=backbone, tasks=tasks)
    return suite_results(args, f"(inside latentcomm experiment jepa, profile {cfg.suite_profile})", specs, {}, jobs)


def run_heldout(cfg: JepaConfig, heads: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Retrieval, reconstruction and fidelity rows per head, and the text rows: one Ray task each."""
    common = (cfg.heldout, cfg.fidelity_queries, cfg.max_new_tokens, cfg.batch_size)
    run, backbone = str(Path(cfg.train.run).resolve()), cfg.train.backbone
    jobs = {name: (run, backbone, name, str(path.resolve()), *common) for name, path in heads.items()}
    jobs["text"] = (run, backbone, "text", str(next(iter(heads.values())).resolve()), *common, True)
    return run_tasks(heldout_job, jobs, cfg.out / "heldout", desc="held-out jobs")


def training_summary(folder: Path, global_batch: int) -> dict[str, Any]:
    """Final losses (mean of the last tenth of the steps) and the time of one training run."""
    records = MetricsLog(folder / "metrics.jsonl").read()
    tail = records[-max(1, len(records) // 10):]
    return {"steps": len(records), "final_recon": float(np.mean([r["recon"] for r in tail])),
            "final_align": float(np.mean([r["align"] for r in tail])),
            "seconds_per_step": float(np.mean([global_batch / r["samples_per_s"] for r in records]))}


def run(cfg: JepaConfig, command: str) -> Path | None:
    """The whole experiment; returns the report (None when a training run stopped early)."""
    prepare_folder(cfg.out, settings_of(cfg), resume=cfg.train.resume)
    init_ray(cfg.train.address, num_cpus=cfg.num_cpus)
    heads: dict[str, Path] = {}
    for name in cfg.variants:
        head = train_variant(cfg, VARIANTS[name])
        if head is None:
            return None
        heads[name] = head
    suite = run_suite(cfg, heads)
    heldout = run_heldout(cfg, heads)
    results = {
        "command": command, "backbone": cfg.train.backbone, "run": cfg.train.run, "judge": JUDGE,
        "config": settings_of(cfg),
        "variants": {name: {"description": VARIANTS[name].description, "teacher": VARIANTS[name].teacher,
                            "recon_weight": VARIANTS[name].recon_weight, "align_loss": VARIANTS[name].align_loss,
                            "encoder_lora_rank": cfg.lora_rank if VARIANTS[name].lora else 0,
                            "training": training_summary(cfg.out / "heads" / name, cfg.train.global_batch)}
                     for name in heads},
        "heldout": {name: {k: v for k, v in job.items() if k != "fidelity"} for name, job in heldout.items()
                    if name != "text"},
        "fidelity": [row for job in heldout.values() for row in job["fidelity"]],
        "suite": suite,
    }
    folder = cfg.report_dir
    folder.mkdir(parents=True, exist_ok=True)
    plot_suite(suite, folder / "suite.png")
    plot_fidelity(results, folder / "fidelity.png")
    plot_training(cfg, list(heads), folder / "training.png")
    return write_report(folder, results, markdown(results))


# ---- the report ------------------------------------------------------------------------------------------
def r_at_1_interval(row: dict[str, Any]) -> tuple[float, float]:
    """The Wilson 95% interval of a fidelity row's R@1 (a share of its ``n`` queries)."""
    return wilson_interval(round(row["r_at_1"] * row["n"]), row["n"])


def decodability(results: dict[str, Any], name: str) -> dict[str, Any]:
    """The decode row's R@1 against chance, and how much better the own latent reconstructs than another's.
    Decodable: the Wilson 95% interval of R@1 lies above chance and the own latent reconstructs better."""
    row = next(r for r in results["fidelity"] if r["source"] == name and r["row"] == "decode")
    recon = results["heldout"][name]["reconstruction"]
    gap = recon["recon_other_query"] - recon["recon"]
    chance = 1 / row["n"]
    low, _ = r_at_1_interval(row)
    return {"decode_cosine": row["cosine"], "decode_r_at_1": row["r_at_1"], "r_at_1_low": low, "chance": chance,
            "recon_gap": gap, "decodable": low > chance and gap > 0}


def findings(results: dict[str, Any]) -> list[str]:
    """Which variant wins each suite category and each fidelity row, and whether each one's latents decode."""
    names = list(results["variants"])
    lines = []
    categories = results["suite"]["categories"]
    for category, scores in categories.items():
        heads = {n: scores.get(n) for n in names if scores.get(n) is not None}
        if not heads:
            continue
        pick = min if category == "Safety" else max
        best = pick(heads, key=heads.get)
        baselines = {k: v for k, v in scores.items() if k not in names and v is not None}
        versus = ", ".join(f"{k} {100 * v:.1f}" for k, v in baselines.items())
        lines.append(f"- suite {category}{' (lower is better)' if category == 'Safety' else ''}: best head "
                     f"**{best}** {100 * heads[best]:.1f}" + (f" (baselines: {versus})" if versus else ""))
    for row in ("decode", "in context"):
        scored = {r["source"]: r for r in results["fidelity"] if r["row"] == row and r["source"] in names}
        best, *rest = sorted(scored, key=lambda name: -scored[name]["cosine"])
        top = scored[best]
        line = (f"- fidelity {row}: best **{best}** (MiniLM cosine {top['cosine']:.3f}, R@1 {top['r_at_1']:.3f}, "
                f"95% interval {format_interval(r_at_1_interval(top))} on {top['n']} queries)")
        if rest:
            line += f"; next {rest[0]} (cosine {scored[rest[0]]['cosine']:.3f}, R@1 {scored[rest[0]]['r_at_1']:.3f})"
        lines.append(line)
    ceiling = next(r for r in results["fidelity"] if r["row"] == "ceiling: response text")
    lines.append(f"- text ceiling (the receiver reads the response itself): cosine {ceiling['cosine']:.3f}, "
                 f"R@1 {ceiling['r_at_1']:.3f}")
    for name in names:
        d = decodability(results, name)
        verdict = "decodable" if d["decodable"] else "not shown decodable"
        lines.append(f"- {name}: {verdict} — decode R@1 {d['decode_r_at_1']:.3f} (95% lower bound "
                     f"{d['r_at_1_low']:.3f}, chance {d['chance']:.3f}), "
                     f"own latent reconstructs its response {d['recon_gap']:+.3f} nats/token better than another "
                     "query's latent")
    return lines


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]["train"]
    variants = results["variants"]
    suite_md = suite_markdown(results["suite"]).split("\n", 2)[2]  # without its title
    rows = [FidelityRow(**r) for r in results["fidelity"]]
    heldout = results["heldout"]
    lines = [
        "# Full JEPA: the frozen LLM as its own target encoder", "",
        f"`{results['command']}`", "",
        f"Backbone `{results['backbone']}`, run `{results['run']}`. Same data and budget for every head: "
        f"{cfg['max_steps']} optimizer steps of {cfg['micro_batch'] * cfg['grad_accum']} queries "
        f"(lr {cfg['lr']}, seed {cfg['seed']}, in-context share {cfg['in_context_share']}).", "",
        "## Variants", "",
        markdown_table(["variant", "what trains", "teacher", "recon weight", "align loss", "LoRA rank",
                        "final recon", "final align", "s / step"],
                       [[n, v["description"], v["teacher"], v["recon_weight"], v["align_loss"],
                         v["encoder_lora_rank"], v["training"]["final_recon"], v["training"]["final_align"],
                         v["training"]["seconds_per_step"]] for n, v in variants.items()]), "",
        "Final losses are means over the last tenth of the steps; align losses of different teachers and forms are "
        "not comparable with each other.", "",
        "## Which wins where, and do latents stay decodable?", "", *findings(results), "",
        f"## Fidelity table (judged by {results['judge']}; text rows beside the latent rows)", "",
        table_markdown(rows), "",
        "## Held-out retrieval and reconstruction", "",
        markdown_table(["variant", "retrieval R@1 (own teacher's space)", "MRR", "recon (own latent)",
                        "recon in context", "recon (another query's latent)", "align (own teacher)"],
                       [[n, h["retrieval"]["r@1"], h["retrieval"]["mrr"], h["reconstruction"]["recon"],
                         h["reconstruction"]["recon_in_context"], h["reconstruction"]["recon_other_query"],
                         h["reconstruction"]["align_mse"]] for n, h in heldout.items()]), "",
        "Retrieval is scored in each head's own teacher space (MiniLM or the LLM's own), so it compares heads of the "
        "same teacher only; the suite and the fidelity table compare all of them.", "",
        "## Benchmark suite", "", suite_md]
    return "\n".join(lines)


def plot_fidelity(results: dict[str, Any], path: Path) -> None:
    """Per head: decode, in-context and other-latent cosine; the text rows as horizontal lines."""
    plt = pyplot()
    names = list(results["variants"])
    fig, ax = plt.subplots(figsize=(9, 4.2))
    width = 0.27
    for i, row in enumerate(("decode", "in context", "floor: other latent")):
        values = [next(r["cosine"] for r in results["fidelity"] if r["source"] == n and r["row"] == row) for n in names]
        ax.bar(np.arange(len(names)) + (i - 1) * width, values, width, label=row)
    for r, style in zip([r for r in results["fidelity"] if r["source"] == "-"], (":", "--", "-")):
        ax.axhline(r["cosine"], color="gray", ls=style, lw=1, label=f"{r['row']} (text)")
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set(ylabel=f"{results['judge']} cosine to the own response", title="fidelity: does the latent carry the response?")
    ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def plot_training(cfg: JepaConfig, names: list[str], path: Path) -> None:
    """Reconstruction and alignment loss per step of every variant."""
    plt = pyplot()
    fig, (ax_recon, ax_align) = plt.subplots(1, 2, figsize=(11, 3.8))
    for name in names:
        records = MetricsLog(cfg.out / "heads" / name / "metrics.jsonl").read()
        steps = [r["step"] for r in records]
        if VARIANTS[name].recon_weight:
            ax_recon.plot(steps, [r["recon"] for r in records], lw=1, label=name)
        ax_align.plot(steps, [r["align"] for r in records], lw=1, label=name)
    ax_recon.set(xlabel="step", ylabel="reconstruction (nats/token)", title="reconstruction loss")
    ax_align.set(xlabel="step", ylabel="alignment loss", yscale="log", title="alignment loss (own teacher and form)")
    ax_recon.legend(fontsize=7)
    ax_align.legend(fontsize=7)
    save_figure(fig, path)


DESCRIPTION = ("Full JEPA heads (self teacher, no reconstruction, LLM-JEPA cosine, encoder "
               "LoRA) against the MiniLM recipe; Ray jobs ending in a report.")


def main(argv: list[str] | None = None) -> int:
    return experiment_main("jepa", DESCRIPTION, JepaConfig, run, argv)
