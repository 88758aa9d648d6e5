"""Response generation job: the frozen backbone answers every query, sharded over Ray actors, resumable.

Queries are cut into fixed shards of ``shard_size`` (in query-file order). Each shard is answered by one
replica of the ``ReplicaPool`` (one backbone per actor; a replica that dies is restarted and its shard sent
again) with batched, KV-cached generation and written atomically (tmp + rename) as ``shard-NNNNN.jsonl`` only
once complete, so a killed job loses at most the shards in flight and a re-run skips finished shards. Every
record carries its query id; ``read_responses`` merges shards and checks that no id is missing or duplicated.
"""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from latentcomm.model.backbone import DEFAULT_BACKBONE
from latentcomm.engine.batching import BatchConfig
from latentcomm.cli.parser import backbone_source, count, existing_file, number, output_dir, output_file, parser
from latentcomm.runtime.cluster import init_ray
from latentcomm.model.config import HeadConfig
from latentcomm.model.generation import NO_REPEAT_NGRAM_SIZE, REPETITION_PENALTY, Sampling
from latentcomm.runtime.pool import PoolConfig, ReplicaPool
from latentcomm.engine.replica import ReplicaConfig
from latentcomm.training.queries import QUERIES_FILE, SPLITS, Query, read_queries, write_queries

RESPONSES_DIR = "responses"
MANIFEST = "manifest.json"
ARCHIVE_FORMAT = "latentcomm-responses"
PACKAGED_RESPONSES = Path(__file__).parent / "data" / "sharegpt-smollm2-135m-instruct.jsonl.gz"
"""The query/response set the shipped head was trained on (``generate --import`` it to retrain from the repo)."""


@dataclass(frozen=True)
class GenerationConfig:
    """How responses are generated; stored in the manifest so that a re-run cannot mix settings."""

    backbone: str = DEFAULT_BACKBONE
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    repetition_penalty: float = REPETITION_PENALTY
    no_repeat_ngram_size: int = NO_REPEAT_NGRAM_SIZE
    batch_size: int = 32
    shard_size: int = 128

    def __post_init__(self) -> None:
        Sampling(self.temperature, self.top_p, self.repetition_penalty, self.no_repeat_ngram_size)  # its checks
        for name in ("max_new_tokens", "batch_size", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")

    def identity(self) -> dict:
        """The fields that change the output (batching does not)."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}

    def respond_options(self) -> dict[str, Any]:
        """These settings as keyword arguments of ``Replica.respond`` (``batch_size`` goes to the replica's
        ``BatchConfig``: the most rows in its running generation)."""
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "repetition_penalty": self.repetition_penalty,
                "no_repeat_ngram_size": self.no_repeat_ngram_size}


def shard_path(out_dir: Path, index: int) -> Path:
    return out_dir / f"shard-{index:05d}.jsonl"


def make_shards(queries: list[Query], shard_size: int) -> list[list[Query]]:
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    return [queries[i:i + shard_size] for i in range(0, len(queries), shard_size)]


def _queries_digest(queries: list[Query]) -> str:
    return hashlib.sha256("\n".join(q.id for q in queries).encode()).hexdigest()[:16]


def _check_manifest(out_dir: Path, config: GenerationConfig, queries: list[Query]) -> None:
    """Write the manifest on the first run; on a re-run, refuse different settings or queries."""
    manifest = {"generation": config.identity(), "queries": _queries_digest(queries), "count": len(queries)}
    path = out_dir / MANIFEST
    if path.is_file():
        old = json.loads(path.read_text())
        if old != manifest:
            raise ValueError(f"{out_dir} holds responses made with other settings or queries ({old}); "
                             "use another --out or delete it")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=2) + "\n")


def write_shard(path: Path, records: list[dict]) -> None:
    """Write a finished shard atomically: readers see the whole shard or none of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def generate_responses(queries: list[Query], out_dir: str | os.PathLike, config: GenerationConfig = GenerationConfig(),
                       *, replicas: int = 1, cpus_per_replica: float = 1, gpus_per_replica: float = 0,
                       address: str | None = None) -> Path:
    """Answer every query not yet in a finished shard of ``out_dir``, with ``replicas`` Ray actors."""
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    out_dir = Path(out_dir)
    _check_manifest(out_dir, config, queries)
    shards = make_shards(queries, config.shard_size)
    todo = {shard_path(out_dir, i): shard for i, shard in enumerate(shards) if not shard_path(out_dir, i).is_file()}
    print(f"{len(shards)} shards of <= {config.shard_size} queries; {len(shards) - len(todo)} done, {len(todo)} to go")
    if not todo:
        return out_dir
    init_ray(address, num_cpus=None if address else max(1, int(replicas * cpus_per_replica)))
    threads = max(1, int(cpus_per_replica)) if not gpus_per_replica else None
    actors = min(replicas, len(todo))
    pool = ReplicaPool(ReplicaConfig(config.backbone, head_config=HeadConfig(), num_threads=threads,
                                     batching=BatchConfig(max_batch_size=config.batch_size)),
                       PoolConfig(num_replicas=actors, num_cpus=cpus_per_replica, num_gpus=gpus_per_replica,
                                  max_in_flight=actors), name="generate")
    try:
        asyncio.run(_answer_shards(pool, todo, config))
    finally:
        pool.shutdown()
    return out_dir


async def _answer_shards(pool: ReplicaPool, todo: dict[Path, list[Query]], config: GenerationConfig) -> None:
    """Each shard to a free replica; a shard is written as soon as its answers are back."""
    await pool.ready()  # a backbone that does not load fails here, at once
    with tqdm(total=sum(len(shard) for shard in todo.values()), desc="generate", unit="query") as bar:
        async def answer(path: Path, queries: list[Query]) -> None:
            answers = await pool.call("respond", [q.text for q in queries], **config.respond_options())
            write_shard(path, [{"id": q.id, "split": q.split, "query": q.text, "response": a}
                               for q, a in zip(queries, answers)])
            bar.update(len(queries))

        await asyncio.gather(*(answer(path, queries) for path, queries in todo.items()))


def read_responses(out_dir: str | os.PathLike, *, complete: bool = True) -> list[dict]:
    """All records of the finished shards, in query-file order; with ``complete`` every query must be there."""
    out_dir = Path(out_dir)
    manifest_path = out_dir / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"no responses at {out_dir} (run 'latentcomm generate' first)")
    records: dict[str, dict] = {}
    for path in sorted(out_dir.glob("shard-*.jsonl")):
        for line in path.read_text().split("\n")[:-1]:
            record = json.loads(line)
            records.setdefault(record["id"], record)
    expected = json.loads(manifest_path.read_text())["count"]
    if complete and len(records) != expected:
        raise ValueError(f"{out_dir} has {len(records)} of {expected} responses: finish 'latentcomm generate'")
    return list(records.values())


def export_responses(run: str | os.PathLike, path: str | os.PathLike) -> Path:
    """One gzipped JSONL file with a run's generation settings and every (id, split, query, response)."""
    run, path = Path(run), Path(path)
    manifest = json.loads((run / RESPONSES_DIR / MANIFEST).read_text())
    records = read_responses(run / RESPONSES_DIR)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=9) as f:
        f.write(json.dumps({"format": ARCHIVE_FORMAT, "version": 1, **manifest}) + "\n")
        for r in records:
            f.write(json.dumps({k: r[k] for k in ("id", "split", "query", "response")}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def import_responses(path: str | os.PathLike, run: str | os.PathLike, shard_size: int = 256) -> Path:
    """Write ``run``'s queries.jsonl (or check the one there) and responses/ from an ``export_responses`` file."""
    path, run = Path(path), Path(run)
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
            if not isinstance(header, dict) or header.get("format") != ARCHIVE_FORMAT:
                raise ValueError("no archive header")
            records = [json.loads(line) for line in f if line.strip()]
        queries = [Query(r["id"], r["query"], r["split"]) for r in records]
        fields_ok = all(isinstance(r["response"], str) and isinstance(q.text, str) and isinstance(q.id, str)
                        and q.split in SPLITS for q, r in zip(queries, records))
        expected, generation = header["count"], header["generation"]
    except (OSError, EOFError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{path} is not a latentcomm response archive ({type(err).__name__}: {err})") from None
    if not fields_ok or not isinstance(generation, dict):
        raise ValueError(f"{path} is not a latentcomm response archive (bad record fields)")
    if len(records) != expected:
        raise ValueError(f"{path} holds {len(records)} responses, its header says {expected}")
    queries_file = run / QUERIES_FILE
    if queries_file.is_file():
        if [q.id for q in read_queries(queries_file)] != [q.id for q in queries]:
            raise ValueError(f"{queries_file} holds other queries than {path}; use another --run")
    else:
        write_queries(queries, queries_file)
    out = run / RESPONSES_DIR
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"generation": generation, "queries": _queries_digest(queries), "count": len(queries)}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    for index in range(0, len(records), shard_size):
        write_shard(shard_path(out, index // shard_size), records[index:index + shard_size])
    return out


def _archive(text: str) -> Path:
    """``--import``: 'packaged' or an archive file that exists."""
    return PACKAGED_RESPONSES if text == "packaged" else existing_file(text)


def main(argv: list[str] | None = None) -> int:
    ap = parser("generate", "Generate the backbone's own response to every query of a run (resumable).")
    ap.add_argument("--run", required=True, type=output_dir,
                    help="run directory with queries.jsonl; writes RUN/responses/")
    ap.add_argument("--backbone", type=backbone_source, default=DEFAULT_BACKBONE)
    ap.add_argument("--max-new-tokens", type=count(1), default=GenerationConfig.max_new_tokens)
    ap.add_argument("--temperature", type=number(0), default=0.0, help="0 = greedy")
    ap.add_argument("--top-p", type=number(0, 1, above=True), default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repetition-penalty", type=number(0, above=True), default=GenerationConfig.repetition_penalty,
                    help="1 = off; > 1 discourages tokens already generated")
    ap.add_argument("--no-repeat-ngram-size", type=count(0), default=GenerationConfig.no_repeat_ngram_size,
                    help="0 = off; n forbids repeating any generated n-gram")
    ap.add_argument("--batch-size", type=count(1), default=GenerationConfig.batch_size)
    ap.add_argument("--shard-size", type=count(1), default=GenerationConfig.shard_size)
    ap.add_argument("--replicas", type=count(1), default=1, help="Ray actors, one backbone replica each")
    ap.add_argument("--cpus-per-replica", type=number(0), default=1)
    ap.add_argument("--gpus-per-replica", type=number(0), default=0)
    ap.add_argument("--address", default=None, help="join an existing Ray cluster (e.g. 'auto')")
    ap.add_argument("--import", dest="import_from", type=_archive, default=None, metavar="FILE",
                    help="take queries and responses from an archive instead of generating ('packaged': the set "
                         "the shipped head was trained on)")
    ap.add_argument("--export", type=output_file, default=None, metavar="FILE",
                    help="afterwards, write the run's responses to FILE (gzipped JSONL)")
    args = ap.parse_args(argv)
    run = args.run
    if args.import_from:
        out = import_responses(args.import_from, run)
        print(f"{len(read_responses(out))} responses from {args.import_from} in {out}")
        return 0
    config = GenerationConfig(args.backbone, args.max_new_tokens, args.temperature, args.top_p, args.seed,
                              args.repetition_penalty, args.no_repeat_ngram_size, args.batch_size, args.shard_size)
    queries = read_queries(run / QUERIES_FILE)
    generate_responses(queries, run / RESPONSES_DIR, config, replicas=args.replicas,
                       cpus_per_replica=args.cpus_per_replica, gpus_per_replica=args.gpus_per_replica,
                       address=args.address)
    print(f"{len(read_responses(run / RESPONSES_DIR))} responses in {run / RESPONSES_DIR}")
    if args.export:
        print(f"wrote {export_responses(run, args.export)}")
    return 0
