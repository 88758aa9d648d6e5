"""``latentcomm bench suite``: mini-MTEB, safety and reasoning retrieval for every compared model, as Ray jobs.

One Ray job per (task, model): it builds the encoder (once per worker), runs the task (``mteb.evaluate`` for the
mteb tasks, our evaluator for safety) and returns scores. Finished jobs are written to ``jobs/`` at once, so
``--resume DIR`` skips them. At the end the suite times encoding / decoding / hand-off (the speed benchmarks
of the other modules, on the idle machine) and writes ``results.json``, ``table.md`` and PNG charts under
``runs/bench/suite-<timestamp>/``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.benchmarks.encoders import CALIBRATION_QUERIES, EncoderSpec, standard_specs
from latentcomm.benchmarks.tasks import TaskDef
from latentcomm.cli.parser import backbone_source, count, existing_dir, head_folder, output_dir, parser

log = logging.getLogger(__name__)

HIGHER, LOWER = "higher", "lower"
CATEGORY_ORDER = ("Classification", "Clustering", "PairClassification", "Reranking", "Retrieval", "STS",
                  "Reasoning", "Safety")


@dataclass(frozen=True)
class Profile:
    """How much of each task a run encodes."""

    name: str
    mini: int
    """Items (texts / pairs / queries) per mini-MTEB task."""
    reasoning: int
    """Questions per reasoning retrieval task."""
    safety: int
    """AdvBench queries (plus half as many Do-Not-Answer queries)."""
    speed_texts: int


PROFILES = {
    "tiny": Profile("tiny", 16, 12, 8, 8),
    "quick": Profile("quick", 120, 120, 80, 32),
    "full": Profile("full", 1000, 1000, 520, 64),
}


@dataclass(frozen=True)
class SuiteTask:
    """A task of the suite: an mteb task definition, or (``definition`` None) the safety evaluator."""

    name: str
    category: str
    metric: str
    better: str
    definition: TaskDef | None = None


def suite_tasks(profile: Profile) -> dict[str, SuiteTask]:
    """Every task of the suite by name: mini-MTEB, reasoning retrieval and safety."""
    from latentcomm.benchmarks.reasoning import reasoning_tasks
    from latentcomm.benchmarks.safety import TASK_NAME
    from latentcomm.benchmarks.tasks import mini_mteb

    tasks = {t.name: SuiteTask(t.name, t.category, t.main_score, HIGHER, t)
             for t in mini_mteb(profile.mini) + reasoning_tasks(profile.reasoning)}
    tasks[TASK_NAME] = SuiteTask(TASK_NAME, "Safety", "harmful_at_5", LOWER)
    return tasks


def run_job(task_name: str, spec: EncoderSpec, profile: Profile, home: str | None = None) -> dict[str, Any]:
    """Run one task for one model (inside a Ray worker or inline) and return its scores.

    ``home`` is the driver's ``$LATENTCOMM_HOME``, so workers started earlier read the same cache.
    """
    import mteb

    from latentcomm.benchmarks.encoders import cached_encoder
    from latentcomm.benchmarks.mteb_model import LatentcommMTEBModel
    from latentcomm.benchmarks.safety import build_corpus, evaluate_safety

    if home:
        os.environ["LATENTCOMM_HOME"] = home
    start = time.perf_counter()
    encoder = cached_encoder(spec)
    loaded = time.perf_counter()
    info = suite_tasks(profile)[task_name]
    if info.definition is None:
        result = evaluate_safety(encoder, build_corpus(profile.safety))
        scores: dict[str, Any] = {**result.scores, "by_source": result.by_source, "counts": result.counts}
        main = result.main_score
    else:
        task = info.definition.build()
        outcome = mteb.evaluate(LatentcommMTEBModel(encoder, spec), task, cache=None, show_progress_bar=False,
                                raise_error=True)
        task_result = outcome.task_results[0]
        main = float(task_result.get_score())
        scores = {k: v for k, v in task_result.scores["test"][0].items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
    fingerprint = getattr(getattr(encoder, "model", None), "fingerprint", None)
    return {"task": task_name, "category": info.category, "model": spec.label, "kind": spec.kind,
            "main_metric": info.metric, "better": info.better, "main_score": main, "scores": scores,
            "fingerprint": fingerprint, "load_seconds": loaded - start, "seconds": time.perf_counter() - loaded}


def _job_path(out: Path, task: str, model: str) -> Path:
    return out / "jobs" / f"{model.replace(':', '_').replace('/', '_')}__{task}.json"


def run_jobs(tasks: Sequence[str], specs: Sequence[EncoderSpec], profile: Profile, out: Path, *, address: str | None,
             num_cpus: int | None) -> list[dict[str, Any]]:
    """Fan tasks x models out as Ray jobs; write each result as it lands; skip jobs already written."""
    import ray
    from tqdm.auto import tqdm

    from latentcomm.runtime.cluster import init_ray

    (out / "jobs").mkdir(parents=True, exist_ok=True)
    todo = [(t, s) for s in specs for t in tasks if not _job_path(out, t, s.label).is_file()]
    if todo:
        init_ray(address, num_cpus=num_cpus)
        remote = ray.remote(num_cpus=1, max_retries=0)(run_job)
        home = os.environ.get("LATENTCOMM_HOME")
        pending = {remote.remote(t, s, profile, home): (t, s) for t, s in todo}
        bar = tqdm(total=len(pending), desc="suite jobs", unit="job")
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            task, spec = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as err:  # one failed task must not lose the others; it is reported in the table
                info = suite_tasks(profile)[task]
                result = {"task": task, "model": spec.label, "kind": spec.kind, "category": info.category,
                          "main_metric": info.metric, "better": info.better, "error": str(err).splitlines()[-1]}
                log.error("job %s x %s failed: %s", task, spec.label, result["error"])
            _job_path(out, task, spec.label).write_text(json.dumps(result, indent=2) + "\n")
            bar.update(1)
        bar.close()
    return [json.loads(_job_path(out, t, s.label).read_text()) for s in specs for t in tasks]


def run_speed(out: Path, profile: Profile, backbone: str, head: str | None) -> dict[str, Any]:
    """The encode and hand-off benchmarks of the other modules, if present, with their JSON results."""
    results: dict[str, Any] = {}
    plans = {"encode": ["--texts", str(profile.speed_texts), "--repeat", "1", "--backbone", backbone],
             "handoff": ["--questions", str(max(profile.speed_texts // 16, 2)), "--max-new-tokens", "32",
                         "--trips", "50", "--backbone", backbone]}
    for name, args in plans.items():
        try:
            module = importlib.import_module(f"latentcomm.benchmarks.{name}")
        except ModuleNotFoundError as err:
            results[name] = {"skipped": f"latentcomm.benchmarks.{name} is not available ({err.name})"}
            continue
        folder = out / "speed" / name
        argv = [*args, "--out", str(folder)] + (["--head", head] if head else [])
        try:
            module.main(argv)
        except (SystemExit, Exception) as err:  # a speed benchmark's own failure is reported, not fatal
            results[name] = {"skipped": f"{name} benchmark failed: {err!r}"}
            continue
        files = sorted(folder.glob("*.json"))
        results[name] = json.loads(files[0].read_text()) if files else {"skipped": "no JSON written"}
    return results


def score_table(jobs: list[dict[str, Any]], labels: Sequence[str]) -> tuple[list[dict[str, Any]], dict]:
    """Rows per task (model -> main score) and per-category means (the mean over a category's tasks)."""
    rows: dict[str, dict[str, Any]] = {}
    for job in jobs:
        row = rows.setdefault(job["task"], {"task": job["task"], "category": job["category"],
                                            "metric": job["main_metric"],
                                            "better": job["better"], "scores": {}})
        row["scores"][job["model"]] = job.get("main_score") if "error" not in job else None
    ordered = sorted(rows.values(), key=lambda r: (CATEGORY_ORDER.index(r["category"]), r["task"]))
    categories: dict[str, dict[str, float | None]] = {}
    for category in CATEGORY_ORDER:
        members = [r for r in ordered if r["category"] == category]
        if members:
            categories[category] = {}
            for label in labels:
                values = [r["scores"].get(label) for r in members]
                categories[category][label] = None if None in values else float(np.mean(values))
    return ordered, categories


def _fmt(value: float | None) -> str:
    return "error" if value is None else f"{100 * value:.1f}"


def speed_lines(speed: dict[str, Any]) -> list[str]:
    """Headline figures of the speed benchmarks (full JSON under speed/)."""
    lines = []
    for name, value in speed.items():
        if "skipped" in value:
            lines.append(f"{name}: {value['skipped']}")
        elif name == "encode":
            rows = ", ".join(f"{r['texts_per_s']:.1f} texts/s at batch {r['batch_size']}" for r in value["encode"])
            d = value["decode"]
            lines.append(f"encode: {rows}; decode {d['cached_tokens_per_s']:.1f} tokens/s with KV cache vs "
                         f"{d['uncached_tokens_per_s']:.1f} without (×{d['speedup']:.1f})")
        elif name == "handoff" and "ratios_vs_text" in value:
            parts = [f"{mode} {r['until_receiver_holds']:.2f}× the text hand-off time, {r['bytes']:.2f}× its bytes"
                     for mode, r in value["ratios_vs_text"].items() if mode != "text"]
            lines.append("hand-off: " + "; ".join(parts))
        else:
            numbers = {k: v for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            lines.append(f"{name}: " + (", ".join(f"{k}={v:.4g}" for k, v in list(numbers.items())[:8])
                                        or f"see speed/{name}/"))
    return lines


def baseline_ratios(results: dict[str, Any], baseline: str) -> dict[str, dict[str, float]]:
    """Each model's mini-MTEB average, Reasoning and Safety as a ratio to the baseline's (same run)."""
    cats = results["categories"]
    series = {"mini-MTEB avg": results["mini_mteb_average"], **{c: cats[c] for c in ("Reasoning", "Safety")
                                                                 if c in cats}}
    out: dict[str, dict[str, float]] = {}
    for label in results["mini_mteb_average"]:
        out[label] = {key: values[label] / values[baseline] for key, values in series.items()
                      if values.get(label) is not None and values.get(baseline)}
    return out


def markdown(results: dict[str, Any]) -> str:
    labels = [m["label"] for m in results["models"]]
    lines = [f"# latentcomm bench suite ({results['profile']['name']} profile)", "",
             f"Backbone `{results['backbone']}`; scores ×100; ↓ = lower is better. Command: `{results['command']}`",
             ""]
    head = "| category | task | metric | " + " | ".join(labels) + " |"
    lines += [head, "|" + "---|" * (3 + len(labels))]
    for row in results["rows"]:
        arrow = " ↓" if row["better"] == LOWER else ""
        lines.append(f"| {row['category']} | {row['task']} | {row['metric']}{arrow} | "
                     + " | ".join(_fmt(row["scores"].get(label)) for label in labels) + " |")
    lines += ["", "| category (mean) | " + " | ".join(labels) + " |", "|" + "---|" * (1 + len(labels))]
    for category, values in results["categories"].items():
        arrow = " ↓" if category == "Safety" else ""
        lines.append(f"| {category}{arrow} | " + " | ".join(_fmt(values.get(label)) for label in labels) + " |")
    mteb_means = results.get("mini_mteb_average", {})
    if mteb_means:
        name = f"**mini-MTEB avg ({len(results['mini_mteb_categories'])} cat.)**"
        lines.append(f"| {name} | " + " | ".join(_fmt(mteb_means.get(label)) for label in labels) + " |")
    lines += ["", "Models:"] + [f"- `{m['label']}`: {m['description']}" for m in results["models"]]
    lines += [f"- not run: `{k}`: {v}" for k, v in results["skipped_models"].items()]
    baseline = results.get("baseline")
    if baseline:
        lines += ["", f"Relative to the input-centric baseline `{baseline}` measured in the same run "
                      "(mini-MTEB avg, Reasoning: higher is better; Safety: lower is better):", ""]
        lines += [f"- `{label}`: " + ", ".join(f"{key} ×{value:.2f}" for key, value in ratios.items())
                  for label, ratios in results["ratios"].items() if label != baseline]
    speed = results.get("speed", {})
    if speed:
        lines += ["", "Speed (same machine, after the jobs):"] + [f"- {line}" for line in speed_lines(speed)]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: per-category means per model (safety is lower-is-better, marked in its title)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [m["label"] for m in results["models"]]
    categories = list(results["categories"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [max(len(categories) - 1, 1), 1]})
    width = 0.8 / max(len(labels), 1)
    quality = [c for c in categories if c != "Safety"]
    for i, label in enumerate(labels):
        values = [100 * (results["categories"][c].get(label) or 0) for c in quality]
        axes[0].bar(np.arange(len(quality)) + i * width, values, width, label=label)
        if "Safety" in results["categories"]:
            axes[1].bar(i, 100 * (results["categories"]["Safety"].get(label) or 0), 0.7, color=f"C{i}")
    axes[0].set_xticks(np.arange(len(quality)) + width * (len(labels) - 1) / 2, quality, rotation=20)
    axes[0].set_ylabel("score ×100 (higher is better)")
    axes[0].set_title(f"mini-MTEB + reasoning ({results['profile']['name']})")
    axes[0].legend(fontsize=8)
    axes[1].set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    axes[1].set_title("Safety: harmful@5\n(lower is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags, with ``tasks`` filled in (all when omitted) and checked against the profile's tasks."""
    p = parser("bench suite", "mini-MTEB + safety + reasoning for trained/untrained heads, MiniLM and mean "
                              "pooling, as Ray jobs; writes JSON, a markdown table and PNG charts")
    p.add_argument("--profile", choices=sorted(PROFILES), default="quick",
                   help="tiny: seconds (smoke test); quick: 20-35 min for 4 models on 2 shared CPU cores; full: hours")
    p.add_argument("--head", action="append", type=head_folder, default=[], help="trained head folder, repeatable; without it the "
                   "shipped default head when present")
    p.add_argument("--backbone", type=backbone_source, default=DEFAULT_BACKBONE, help="backbone alias, folder or .gguf "
                   "(qwen-coder-0.5b: the Qwen2.5-Coder GGUF from `latentcomm data fetch`)")
    p.add_argument("--tasks", nargs="+", default=None, help="task names; all when omitted")
    p.add_argument("--models", nargs="+", default=None, choices=["head", "untrained", "minilm", "meanpool"],
                   help="model kinds; all four when omitted")
    p.add_argument("--batch-size", type=count(1), default=16)
    p.add_argument("--no-speed", action="store_true", help="skip the encode / hand-off speed benchmarks")
    p.add_argument("--address", default=None, help="Ray cluster to join; a local one when omitted")
    p.add_argument("--num-cpus", type=count(1), default=None, help="CPUs of the local Ray cluster; all when omitted")
    p.add_argument("--out", type=output_dir, default=None, help="output folder; runs/bench/suite-<timestamp> when omitted")
    p.add_argument("--resume", type=existing_dir, default=None, help="a previous suite folder: run only missing jobs")
    args = p.parse_args(argv)
    known = suite_tasks(PROFILES[args.profile])
    args.tasks = args.tasks or list(known)
    unknown = sorted(set(args.tasks) - set(known))
    if unknown:
        p.error(f"unknown tasks {unknown}; known: {sorted(known)}")
    return args


def compared_models(args: argparse.Namespace) -> tuple[list[EncoderSpec], dict[str, str]]:
    """The models to run (``--models`` kinds of the standard ones) and those left out, with the reason."""
    specs, skipped = standard_specs(args.head, backbone=args.backbone, batch_size=args.batch_size)
    if args.models:
        specs = [s for s in specs if s.kind in args.models]
        skipped = {k: v for k, v in skipped.items() if "head" in args.models}
    return specs, skipped


def suite_results(args: argparse.Namespace, command: str, specs: Sequence[EncoderSpec], skipped: dict[str, str],
                  jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """``results.json``: the models, per-task rows, category means, the mini-MTEB average and the ratios to the
    mean-pooled baseline."""
    labels = [s.label for s in specs]
    rows, categories = score_table(jobs, labels)
    mini = [c for c in categories if c not in ("Reasoning", "Safety")]
    descriptions = {"head": "trained head",
                    "untrained": f"untrained head (HeadConfig(embed_dim=384), seed 0; standardisation estimated on "
                                 f"{CALIBRATION_QUERIES} ShareGPT queries)",
                    "minilm": "MiniLM teacher on the input text", "meanpool": "mean-pooled backbone states (input)"}
    fingerprints = {j["model"]: j.get("fingerprint") for j in jobs if j.get("fingerprint")}
    results = {
        "profile": asdict(PROFILES[args.profile]), "backbone": args.backbone, "tasks": args.tasks,
        "command": command,
        "models": [{"label": s.label, "kind": s.kind, "head": s.head,
                    "description": descriptions[s.kind] + (f" {s.head or '(shipped default)'}" if s.kind == "head"
                                                           else "")
                    + (f", fingerprint {fingerprints[s.label]}" if s.label in fingerprints else "")}
                   for s in specs],
        "skipped_models": skipped, "rows": rows, "categories": categories,
        "mini_mteb_categories": mini,
        "mini_mteb_average": {label: (None if any(categories[c][label] is None for c in mini)
                                      else float(np.mean([categories[c][label] for c in mini]))) for label in labels},
        "jobs": jobs,
    }
    baseline = next((s.label for s in specs if s.kind == "meanpool"), None)
    if baseline:
        results["baseline"] = baseline
        results["ratios"] = baseline_ratios(results, baseline)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    profile = PROFILES[args.profile]
    out = args.resume or args.out or Path("runs/bench") / f"suite-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    specs, skipped = compared_models(args)
    jobs = run_jobs(args.tasks, specs, profile, out, address=args.address, num_cpus=args.num_cpus)
    command = "latentcomm bench suite " + " ".join(argv if argv is not None else sys.argv[2:])
    results = suite_results(args, command, specs, skipped, jobs)
    if not args.no_speed:
        head = args.head[0] if args.head else None
        results["speed"] = run_speed(out, profile, args.backbone, head)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "table.md").write_text(markdown(results))
    plot(results, out / "scores.png")
    print(markdown(results))
    print(f"wrote {out / 'results.json'}, {out / 'table.md'} and {out / 'scores.png'}")
    return 0
