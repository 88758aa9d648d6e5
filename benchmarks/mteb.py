"""``latentcomm bench mteb``: the real MTEB (needs the Hugging Face hub) or the offline mini-MTEB, for one model.

With hub access: ``latentcomm bench mteb --benchmark "MTEB(eng, v2)"`` (mteb's own list of the paper's 41 tasks)
or ``--tasks Banking77Classification SciFact``. Offline: ``--mini`` runs the packaged mini-MTEB tasks. The same
model object works from Python: ``mteb.evaluate(LatentcommMTEBModel(EncoderSpec(...).build()), tasks)``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.cli.parser import backbone_source, count, head_folder, output_dir, parser

PAPER_BENCHMARK = "MTEB(eng, v2)"


def main(argv: list[str] | None = None) -> int:
    p = parser("bench mteb", "evaluate one model with mteb v2 (real tasks from the hub, or --mini offline)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--tasks", nargs="+", help="mteb task names (downloaded from the hub by mteb)")
    what.add_argument("--benchmark", help=f"an mteb benchmark name, e.g. {PAPER_BENCHMARK!r} (41 tasks)")
    what.add_argument("--mini", action="store_true", help="the offline mini-MTEB (after `latentcomm data fetch`)")
    p.add_argument("--model", choices=["head", "untrained", "minilm", "meanpool"], default="head",
                   help="head: --head or the shipped default head")
    p.add_argument("--head", type=head_folder, default=None, help="saved head folder for --model head")
    p.add_argument("--backbone", type=backbone_source, default=DEFAULT_BACKBONE)
    p.add_argument("--size", type=count(1), default=120, help="items per mini-MTEB task (with --mini)")
    p.add_argument("--batch-size", type=count(1), default=16)
    p.add_argument("--out", type=output_dir, default=None,
                   help="output folder; runs/bench/mteb-<timestamp> when omitted")
    args = p.parse_args(argv)

    import mteb

    from latentcomm.benchmarks.encoders import EncoderSpec, default_head_shipped, head_name
    from latentcomm.benchmarks.mteb_model import LatentcommMTEBModel

    if args.model == "head" and args.head is None and not default_head_shipped():
        p.error("no trained head is shipped yet: pass --head PATH, or --model untrained")
    label = {"head": f"head:{head_name(args.head) if args.head else 'default'}", "untrained": "untrained-head",
             "minilm": "minilm-teacher", "meanpool": "meanpool-backbone"}[args.model]
    spec = EncoderSpec(args.model, label, args.head, args.backbone, args.batch_size)
    if args.mini:
        from latentcomm.benchmarks.tasks import mini_mteb

        tasks = [t.build() for t in mini_mteb(args.size)]
    elif args.benchmark:
        tasks = list(mteb.get_benchmark(args.benchmark).tasks)
    else:
        tasks = list(mteb.get_tasks(tasks=args.tasks))
    out = args.out or Path("runs/bench") / f"mteb-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    model = LatentcommMTEBModel(spec.build(), spec)
    results = mteb.evaluate(model, tasks, cache=None)
    scores = {r.task_name: r.get_score() for r in results.task_results}
    (out / "mteb.json").write_text(json.dumps({"model": model.mteb_model_meta.name, "scores": scores,
                                               "results": [r.to_dict() for r in results.task_results]},
                                              indent=2, default=str) + "\n")
    for name, score in scores.items():
        print(f"{name:<45} {100 * score:6.2f}")
    print(f"wrote {out / 'mteb.json'}")
    return 0
