"""``latentcomm bench train``: samples/s of the training step before and after the KV-cached split and length
bucketing, measured in one run on the same batches, with the losses compared.

Three configurations, each a forward + backward (gradients of the head only, no optimizer step, so every
configuration sees the same head), timed in rounds (every configuration once per round, the median reported):

* ``one pass, random batches`` — the step as it was: the whole input under autograd, batches in random order;
* ``split, random batches`` — the same batches: the query runs without autograd and hands its KV cache to
  the special tokens (and an in-context latent's instruction prefix to the response pass); losses must agree;
* ``split, bucketed batches`` — the same number of samples, batched by length (what ``train`` now does).

Also reports padding: the share of computed positions that are padding, random against bucketed batches; and the
work each configuration does, counted as it runs (``Work``): positions computed forward only, forward under
autograd (their backward through the frozen weights costs as much again: input gradients only) and response tokens
scored through the vocabulary projection. From it the linear layers' FLOPs, the ratio of work against the one-pass
step (the speed-up the same kernels would give) and the achieved share of a matmul measured in the same run: a
configuration near its work ratio and near the matmul peak is as fast as its computation allows.
With ``--short-answers K`` two more, on the same bucketed batches with every latent read inside a reading
instruction and each response cut to its first K words (objectives that answer from a latent in a few tokens):
``one pass, short answers`` and ``split, short answers``, losses compared. With ``--cut-responses K`` one more:
``split, responses cut to K tokens`` on the bucketed batches (``--max-response-tokens K`` for that configuration;
``latentcomm bench positions`` measures how much of the latent's signal such a cut keeps).
Writes ``train.json`` and ``train.png``.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Iterator, get_args

import numpy as np
import torch

from latentcomm.benchmarks.encode import linear_flops_per_position, matmul_flops
from latentcomm.model.backbone import WeightsDtype, load_backbone
from latentcomm.cli.parser import backbone_source, count, existing_dir, number, output_dir, parser
from latentcomm.model.embedder import GenerativeEmbedder
from latentcomm.model.reading import draw_instruction
from latentcomm.training.config import TRAIN_HEAD, TrainConfig
from latentcomm.training.train import TrainingData

Batch = tuple[list[str], list[str], torch.Tensor, list]


def batches(data: TrainingData, cfg: TrainConfig, count: int) -> list[Batch]:
    """The first ``count`` micro-batches of epoch 0 under ``cfg`` (one process)."""
    return [data.micro_batch(cfg, step, 0, 0) for step in range(count)]


def short_answers(chosen: list[Batch], words: int) -> list[Batch]:
    """``chosen`` with every latent read inside a reading instruction and each response cut to ``words`` words."""
    return [(queries, [" ".join(r.split()[:words]) for r in responses], targets,
             [draw_instruction(f"short:{step}:{i}", 1.0) for i in range(len(queries))])
            for step, (queries, responses, targets, _) in enumerate(chosen)]


def padding_share(model: GenerativeEmbedder, chosen: list[Batch]) -> float:
    """Share of the positions of the query pass and the response pass that are padding."""
    tok = model.backbone.tokenizer
    padded = real = 0
    for queries, responses, _, _ in chosen:
        for texts, limit in ((queries, model.config.max_query_tokens), (responses, model.config.max_response_tokens)):
            lengths = [min(len(ids), limit) for ids in tok(texts, add_special_tokens=False).input_ids]
            padded += max(lengths) * len(lengths)
            real += sum(lengths)
    return 1 - real / padded


@dataclass
class Work:
    """What the backbone computed: positions forward only, positions forward under autograd (backpropagated),
    and response tokens scored through the vocabulary projection (forward and backward)."""

    forward: int = 0
    autograd: int = 0
    scored: int = 0

    def linear_flops(self, model: GenerativeEmbedder) -> float:
        """FLOPs of the linear layers: 2 x parameters per position forward, as much again backward (input
        gradients only: the weights are frozen), and the vocabulary projection forward and backward."""
        vocab = model.backbone.model.get_output_embeddings().weight.numel()
        return linear_flops_per_position(model.backbone) * (self.forward + self.autograd) + \
            4 * vocab * self.scored


@contextmanager
def counting(model: GenerativeEmbedder) -> Iterator[Work]:
    """Count the ``Work`` of ``model``'s backbone passes and vocabulary projections meanwhile."""
    work, backbone = Work(), model.backbone
    hidden_states = backbone.hidden_states

    def counted(embeds: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        positions = embeds.shape[0] * embeds.shape[1]
        work.forward += positions
        if torch.is_grad_enabled() and embeds.requires_grad:
            work.autograd += positions
        return hidden_states(embeds, *args, **kwargs)

    def scored(module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        work.scored += output.shape[:-1].numel()

    hook = backbone.model.get_output_embeddings().register_forward_hook(scored)
    backbone.hidden_states = counted
    try:
        yield work
    finally:
        del backbone.hidden_states
        hook.remove()


def time_steps(model: GenerativeEmbedder, chosen: list[Batch], *, reference: bool
               ) -> tuple[float, list[float], Work]:
    """Seconds for forward + backward over ``chosen`` (after one warm-up batch), each batch's loss and the work
    done; the split step, or with ``reference`` the one-pass step."""
    def step(batch: Batch) -> float:
        queries, responses, targets, instructions = batch
        out = model(queries, responses, targets, instructions=instructions, reference=reference)
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    step(chosen[0])
    with counting(model) as work:
        start = time.perf_counter()
        losses = [step(batch) for batch in chosen]
        seconds = time.perf_counter() - start
    return seconds, losses, work


def run(cfg: TrainConfig, count: int, short: int = 0, cut: int = 0, rounds: int = 3) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    data = TrainingData.load(cfg)
    device = torch.device("cpu")
    backbone = load_backbone(cfg.backbone, device=device, dtype=cfg.torch_weights_dtype)
    model = GenerativeEmbedder(backbone, cfg.head_config(data.targets.shape[1]), seed=cfg.seed)
    model.train()
    peak = matmul_flops(backbone.dtype, device)
    random_batches = batches(data, replace(cfg, bucket_by_length=False), count)
    bucketed = batches(data, replace(cfg, bucket_by_length=True), count)
    samples = count * cfg.micro_batch
    results: dict[str, dict[str, float]] = {}
    losses = {}
    full = model.config
    runs = [("one pass, random batches", random_batches, True, full),
            ("split, random batches", random_batches, False, full), ("split, bucketed batches", bucketed, False, full)]
    if short:
        runs += [("one pass, short answers", short_answers(bucketed, short), True, full),
                 ("split, short answers", short_answers(bucketed, short), False, full)]
    if cut:
        runs.append((f"split, responses cut to {cut} tokens", bucketed, False, replace(full, max_response_tokens=cut)))
    seconds: dict[str, list[float]] = {name: [] for name, *_ in runs}
    works: dict[str, Work] = {}
    for _ in range(rounds):  # every configuration in each round, so that a change of load hits all alike
        for name, chosen, reference, head in runs:
            model.config = head
            took, losses[name], works[name] = time_steps(model, chosen, reference=reference)
            seconds[name].append(took)
    for name, chosen, _, head in runs:
        model.config = head
        took, flops = float(np.median(seconds[name])), works[name].linear_flops(model)
        results[name] = {"seconds": took, "seconds_per_round": seconds[name], "samples_per_s": samples / took,
                         "padding_share": padding_share(model, chosen), "work": asdict(works[name]),
                         "linear_gflop_per_sample": flops / samples / 1e9,
                         "linear_flops_fraction_of_matmul": flops / took / peak}
    model.config = full
    for name, entry in results.items():
        baseline = results["one pass, short answers" if "short" in name else "one pass, random batches"]
        entry["speedup"] = entry["samples_per_s"] / baseline["samples_per_s"]
        entry["work_ratio"] = baseline["linear_gflop_per_sample"] / entry["linear_gflop_per_sample"]
    diff = np.abs(np.array(losses["one pass, random batches"]) - np.array(losses["split, random batches"]))
    out = {"backbone": backbone.backbone_id, "dtype": str(backbone.dtype).removeprefix("torch."),
           "threads": torch.get_num_threads(), "matmul_flops": peak, "micro_batch": cfg.micro_batch, "batches": count,
           "rounds": rounds,
           "in_context_share": cfg.in_context_share, "results": results,
           "same_batches_max_loss_difference": float(diff.max()),
           "same_batches_mean_loss": float(np.mean(losses["one pass, random batches"])),
           "load_average": {"before": load_before, "after": os.getloadavg()[0]}}
    if short:
        diff = np.abs(np.array(losses["one pass, short answers"]) - np.array(losses["split, short answers"]))
        out |= {"short_answer_words": short, "short_answers_max_loss_difference": float(diff.max()),
                "short_answers_mean_loss": float(np.mean(losses["one pass, short answers"]))}
    return out


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["results"])
    values = [result["results"][n]["samples_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(max(8, 2 * len(names)), 4))
    bars = ax.bar([n.replace(", ", ",\n") for n in names], values,
                  color=["tab:gray" if n.startswith("one pass") else "tab:blue" for n in names])
    for bar, name in zip(bars, names):
        entry = result["results"][name]
        ax.annotate(f"{entry['speedup']:.2f}x (work {entry['work_ratio']:.2f}x)\npadding {entry['padding_share']:.0%}\n"
                    f"{entry['linear_flops_fraction_of_matmul']:.0%} of matmul",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("training samples / s (forward + backward)")
    ax.set_ylim(0, max(values) * 1.45)
    ax.set_title(f"training step, micro-batch {result['micro_batch']}, {result['batches']} batches, median of "
                 f"{result['rounds']} rounds, "
                 f"{result['dtype']} backbone, {result['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench train", __doc__.split("\n")[0])
    ap.add_argument("--run", required=True, type=existing_dir,
                    help="run directory with responses and targets (as for 'train')")
    ap.add_argument("--backbone", type=backbone_source, default=TrainConfig.backbone)
    ap.add_argument("--weights-dtype", default=None, choices=get_args(WeightsDtype),
                    help="backbone weights dtype (default: the device's fast one)")
    ap.add_argument("--teacher", default=TRAIN_HEAD.teacher)
    ap.add_argument("--micro-batch", type=count(1), default=TrainConfig.micro_batch)
    ap.add_argument("--batches", type=count(1), default=8, help="timed batches per configuration")
    ap.add_argument("--in-context-share", type=number(0, 1), default=0.5)
    ap.add_argument("--max-response-tokens", type=count(1), default=TRAIN_HEAD.max_response_tokens)
    ap.add_argument("--threads", type=count(1), default=None, help="torch CPU threads")
    ap.add_argument("--short-answers", type=count(0), default=0, metavar="K",
                    help="also time in-context reading with responses cut to K words (0: not)")
    ap.add_argument("--rounds", type=count(1), default=3,
                    help="rounds of all configurations, one after the other in each (the median is reported)")
    ap.add_argument("--cut-responses", type=count(0), default=0, metavar="K",
                    help="also time the split step with responses cut to K tokens (0: not)")
    ap.add_argument("--train-limit", type=count(1), default=None,
                    help="read only the first N training samples of --run (the batches are drawn from those)")
    ap.add_argument("--out", type=output_dir, default=f"runs/bench/train-{time.strftime('%Y%m%d-%H%M%S')}")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    head = replace(TRAIN_HEAD, teacher=args.teacher, max_response_tokens=args.max_response_tokens)
    cfg = TrainConfig(run=str(args.run), out=str(args.out), backbone=args.backbone, weights_dtype=args.weights_dtype,
                      head=head, micro_batch=args.micro_batch, in_context_share=args.in_context_share,
                      train_limit=args.train_limit)
    cfg.check_inputs()
    result = run(cfg, args.batches, args.short_answers, args.cut_responses, args.rounds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out / "train.png")
    for name, entry in result["results"].items():
        print(f"{name:<26} {entry['samples_per_s']:7.2f} samples/s  x{entry['speedup']:.2f}  "
              f"padding {entry['padding_share']:.0%}  {entry['linear_gflop_per_sample']:6.1f} GFLOP/sample "
              f"(work x{entry['work_ratio']:.2f})  {entry['linear_flops_fraction_of_matmul']:.0%} of the matmul peak")
    print(f"same batches: max |loss difference| {result['same_batches_max_loss_difference']:.2e} "
          f"(mean loss {result['same_batches_mean_loss']:.3f})")
    if args.short_answers:
        print(f"short answers, same batches: max |loss difference| {result['short_answers_max_loss_difference']:.2e} "
              f"(mean loss {result['short_answers_mean_loss']:.3f})")
    print(f"load average {result['load_average']['before']:.2f} -> {result['load_average']['after']:.2f}")
    print(f"wrote {out / 'train.json'} and {out / 'train.png'}")
    return 0
