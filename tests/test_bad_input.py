"""Bad input gets a clear error and nothing silently wrong: the CLI's error boundary on hostile invocations, and
one test per silent wrong result the core, the wire format and the agents used to give."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from latentcomm import GenerativeEmbedder, Latent, LatentError
from latentcomm.cli.main import main as cli_main
from latentcomm.errors import ConflictingMessageError, UsageError
from latentcomm.model.prompt import MIN_QUERY_TOKENS
from latentcomm.protocols import LatentMessage, pack, read_messages, unpack, write_message
from conftest import TINY_HEAD

HEAD = TINY_HEAD


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Hostile and harmless files and folders, by the placeholder the invocations below use."""
    root = tmp_path_factory.mktemp("hostile")
    contents: dict[str, bytes] = {
        "empty": b"",
        "blank": b"  \n\n \t\n",
        "list": b"[1, 2]\n",
        "deep": b"[" * 100_000 + b"\n",
        "notjson": b"{not json\n",
        "nokey": b'{"foo": "bar"}\n',
        "numtext": b'{"text": 5}\n',
        "listid": b'{"text": "hello", "id": [1]}\n',
        "badutf8": b'{"text": "caf\xe9"}\n',
        "null": b"null\n",
    }
    out = {}
    for name, data in contents.items():
        (root / f"{name}.jsonl").write_bytes(data)
        out[name] = str(root / f"{name}.jsonl")
    (root / "bad.txt").write_bytes(b"\xff\xfe not utf-8\n")
    (root / "good.txt").write_text("one query\nanother query\na third query\n")
    (root / "afile").write_text("just a file\n")
    (root / "notgzip.jsonl.gz").write_text("not gzip\n")
    with gzip.open(root / "junk.jsonl.gz", "wt") as f:
        f.write('{"format": "latentcomm-responses", "count": 1, "generation": {}}\n[1, 2]\n')
    for name in ("emptydir", "run_badqueries", "head_badjson", "head_null", "head_notensors", "out"):
        (root / name).mkdir()
    (root / "run_badqueries" / "queries.jsonl").write_text("[1]\n")
    (root / "head_badjson" / "config.json").write_text('{"format": ')
    (root / "head_null" / "config.json").write_text("null")
    (root / "head_notensors" / "config.json").write_text(json.dumps({
        "format": "latentcomm-head", "format_version": 2, "backbone": "b", "backbone_id": "b", "fingerprint": "f",
        "head": {"num_thought": 10**9}}))
    out |= {name: str(root / name) for name in ("emptydir", "run_badqueries", "head_badjson", "head_null",
                                                "head_notensors", "out", "afile")}
    out |= {"bad_txt": str(root / "bad.txt"), "good_txt": str(root / "good.txt"), "missing": str(root / "missing"),
            "notgzip": str(root / "notgzip.jsonl.gz"), "junk_gz": str(root / "junk.jsonl.gz")}
    return out


RUN_ARGS = ["--run", "{emptydir}", "--out", "{out}"]
HOSTILE: list[tuple[str, ...]] = [
    # the entry point
    ("no-such-command",), ("bench", "encoders"), ("bench", "nope"), ("bench", "--bogus"),
    # queries: broken --source files and bad counts
    ("queries",),
    ("queries", "--source", "{empty}", "--out", "{out}"),
    ("queries", "--source", "{blank}", "--out", "{out}"),
    ("queries", "--source", "{list}", "--out", "{out}"),
    ("queries", "--source", "{deep}", "--out", "{out}"),
    ("queries", "--source", "{notjson}", "--out", "{out}"),
    ("queries", "--source", "{nokey}", "--out", "{out}"),
    ("queries", "--source", "{numtext}", "--out", "{out}"),
    ("queries", "--source", "{listid}", "--out", "{out}"),
    ("queries", "--source", "{badutf8}", "--out", "{out}"),
    ("queries", "--source", "{null}", "--out", "{out}"),
    ("queries", "--source", "{bad_txt}", "--out", "{out}"),
    ("queries", "--source", "{missing}", "--out", "{out}"),
    ("queries", "--source", "{emptydir}", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--extra", "{list}", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--extra", "{missing}", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--heldout", "3", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--heldout", "-1", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--heldout", "x", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--train", "0", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--train", "-5", "--out", "{out}"),
    ("queries", "--source", "{good_txt}", "--out", "{afile}"),
    ("queries", "--source", "{good_txt}", "--out", "{afile}/below"),
    ("queries", "--source", "{good_txt}", "--seed", "abc", "--out", "{out}"),
    ("queries", "--no-such-flag", "--out", "{out}"),
    # generate: every setting checked before the manifest is written
    ("generate",),
    ("generate", "--run", "{afile}"),
    ("generate", "--run", "{emptydir}"),
    ("generate", "--run", "{run_badqueries}"),
    ("generate", "--run", "{emptydir}", "--shard-size", "0"),
    ("generate", "--run", "{emptydir}", "--max-new-tokens", "-5"),
    ("generate", "--run", "{emptydir}", "--max-new-tokens", "0"),
    ("generate", "--run", "{emptydir}", "--temperature", "nan"),
    ("generate", "--run", "{emptydir}", "--temperature", "-1"),
    ("generate", "--run", "{emptydir}", "--top-p", "0"),
    ("generate", "--run", "{emptydir}", "--top-p", "-1"),
    ("generate", "--run", "{emptydir}", "--top-p", "1.5"),
    ("generate", "--run", "{emptydir}", "--repetition-penalty", "0"),
    ("generate", "--run", "{emptydir}", "--repetition-penalty", "inf"),
    ("generate", "--run", "{emptydir}", "--no-repeat-ngram-size", "-1"),
    ("generate", "--run", "{emptydir}", "--batch-size", "0"),
    ("generate", "--run", "{emptydir}", "--replicas", "0"),
    ("generate", "--run", "{emptydir}", "--cpus-per-replica", "-1"),
    ("generate", "--run", "{emptydir}", "--gpus-per-replica", "-1"),
    ("generate", "--run", "{emptydir}", "--import", "{missing}"),
    ("generate", "--run", "{emptydir}", "--import", "{notgzip}"),
    ("generate", "--run", "{emptydir}", "--import", "{junk_gz}"),
    ("generate", "--run", "{emptydir}", "--export", "{emptydir}"),
    ("generate", "--run", "{emptydir}", "--backbone", "{missing}/model.gguf"),
    # targets
    ("targets",),
    ("targets", "--run", "{missing}"),
    ("targets", "--run", "{emptydir}"),
    ("targets", "--run", "{emptydir}", "--batch-size", "0"),
    ("targets", "--run", "{emptydir}", "--threads", "0"),
    ("targets", "--run", "{emptydir}", "--teacher", "{missing}"),
    # train: finite, positive settings and a run that exists
    ("train",),
    ("train", *RUN_ARGS, "--lr", "inf"),
    ("train", *RUN_ARGS, "--lr", "nan"),
    ("train", *RUN_ARGS, "--lr", "0"),
    ("train", *RUN_ARGS, "--lr", "-1"),
    ("train", *RUN_ARGS, "--recon-weight", "nan"),
    ("train", *RUN_ARGS, "--align-weight", "inf"),
    ("train", *RUN_ARGS, "--recon-weight", "0", "--align-weight", "0"),
    ("train", *RUN_ARGS, "--weight-decay", "-1"),
    ("train", *RUN_ARGS, "--train-limit", "-5"),
    ("train", *RUN_ARGS, "--train-limit", "0"),
    ("train", *RUN_ARGS, "--threads", "-1"),
    ("train", *RUN_ARGS, "--threads", "0"),
    ("train", *RUN_ARGS, "--micro-batch", "0"),
    ("train", *RUN_ARGS, "--grad-accum", "0"),
    ("train", *RUN_ARGS, "--epochs", "0"),
    ("train", *RUN_ARGS, "--zero-stage", "4"),
    ("train", *RUN_ARGS, "--head-dtype", "float16"),
    ("train", *RUN_ARGS, "--weights-dtype", "int8"),
    ("train", *RUN_ARGS, "--in-context-share", "2"),
    ("train", *RUN_ARGS, "--min-lr-ratio", "2"),
    ("train", *RUN_ARGS, "--warmup-steps", "-1"),
    ("train", *RUN_ARGS, "--workers", "-1"),
    ("train", *RUN_ARGS, "--max-steps", "0"),
    ("train", *RUN_ARGS, "--stop-after", "0"),
    ("train", *RUN_ARGS, "--cpus-per-worker", "-1"),
    ("train", *RUN_ARGS, "--checkpoint-every", "0"),
    ("train", *RUN_ARGS, "--num-compression", "0"),
    ("train", *RUN_ARGS, "--max-query-tokens", "0"),
    ("train", *RUN_ARGS, "--state-layer", "0"),
    ("train", *RUN_ARGS, "--lr", "fast"),
    ("train", *RUN_ARGS),
    ("train", "--run", "{missing}", "--out", "{out}"),
    ("train", "--run", "{emptydir}", "--out", "{afile}"),
    # evaluate
    ("evaluate",),
    ("evaluate", "--run", "{emptydir}", "--decode-limit", "-1"),
    ("evaluate", "--run", "{emptydir}", "--decode-limit", "0"),
    ("evaluate", "--run", "{emptydir}", "--limit", "1"),
    ("evaluate", "--run", "{emptydir}", "--limit", "-5"),
    ("evaluate", "--run", "{emptydir}", "--max-new-tokens", "0"),
    ("evaluate", "--run", "{emptydir}", "--batch-size", "0"),
    ("evaluate", "--run", "{emptydir}", "--threads", "-1"),
    ("evaluate", "--run", "{emptydir}", "--head", "{missing}"),
    ("evaluate", "--run", "{emptydir}", "--head", "{head_badjson}"),
    ("evaluate", "--run", "{emptydir}", "--head", "{head_null}"),
    ("evaluate", "--run", "{emptydir}", "--head", "{head_notensors}"),
    ("evaluate", "--run", "{emptydir}", "--head", "{afile}"),
    ("evaluate", "--run", "{emptydir}", "--compare", "no-equals-sign"),
    ("evaluate", "--run", "{emptydir}", "--compare", "old={missing}"),
    ("evaluate", "--run", "{emptydir}", "--out", "{afile}"),
    ("evaluate", "--run", "{emptydir}", "--backbone", "./no/such/model"),
    ("evaluate", "--run", "{missing}"),
    ("evaluate", "--run", "{emptydir}"),
    # run: teacher, head, out and offset checked before Ray starts
    ("run", "--teacher", "{missing}"),
    ("run", "--out", "{afile}"),
    ("run", "--task", "gsm8k", "--offset", "100000"),
    ("run", "--offset", "-5"),
    ("run", "--questions", "0"),
    ("run", "--questions", "many"),
    ("run", "--max-new-tokens", "0"),
    ("run", "--task", "squad"),
    ("run", "--agents", "1"),
    ("run", "--agents", "7"),
    ("run", "--sweep", "2", "9"),
    ("run", "--num-replicas", "0"),
    ("run", "--num-replicas", "100000"),
    ("run", "--num-cpus", "-0.5"),
    ("run", "--num-cpus", "nan"),
    ("run", "--num-threads", "0"),
    ("run", "--head", "{missing}"),
    ("run", "--head", "{head_badjson}"),
    ("run", "--backbone", "{missing}"),
    ("run", "--backbone", "missing.gguf"),
    ("run", "--wire-dtype", "float64"),
    ("run", "--weights-dtype", "int8"),
    # serve
    ("serve", "--port", "0"),
    ("serve", "--min-replicas", "3", "--max-replicas", "2"),
    ("serve", "--key-file", "{missing}"),
    ("serve", "--key-file", "{afile}"),
    ("serve", "--max-wait-s", "-1"),
    ("serve", "--target-ongoing-requests", "0"),
    ("serve", "--head", "{missing}"),
    ("serve", "--max-batch-size", "0"),
    ("serve", "--weights-dtype", "int9"),
    # demo, convert, release, data
    ("demo", "--max-new-tokens", "0"),
    ("demo", "--head", "{missing}"),
    ("demo", "--backbone", "./no/such/model"),
    ("convert", "--backbone", "missing.gguf"),
    ("release",),
    ("release", "--train", "{missing}", "--eval", "{emptydir}", "--commands", "{afile}"),
    ("release", "--train", "{emptydir}", "--eval", "{emptydir}", "--commands", "{afile}"),
    ("release", "--train", "{emptydir}", "--eval", "{emptydir}", "--commands", "{missing}"),
    ("release", "--train", "{emptydir}", "--eval", "{emptydir}", "--commands", "{afile}", "--until-step", "-1"),
    ("release", "--train", "{emptydir}", "--eval", "{emptydir}", "--commands", "{afile}", "--head", "{head_null}"),
    ("data",),
    ("data", "fetch", "--sources", "nope"),
    ("data", "nope"),
    # benchmarks
    ("bench", "protocol", "--repeat", "0"),
    ("bench", "protocol", "--number", "0"),
    ("bench", "protocol", "--rows", "0"),
    ("bench", "protocol", "--dim", "-1"),
    ("bench", "protocol", "--rows", "100000", "--dim", "100000"),
    ("bench", "protocol", "--seed", "-1"),
    ("bench", "protocol", "--out", "{afile}"),
    ("bench", "handoff", "--trips", "0"),
    ("bench", "handoff", "--questions", "0"),
    ("bench", "handoff", "--max-new-tokens", "0"),
    ("bench", "handoff", "--head", "{missing}"),
    ("bench", "encode", "--texts", "0"),
    ("bench", "encode", "--batch-sizes", "1", "0"),
    ("bench", "encode", "--repeat", "0"),
    ("bench", "encode", "--new-tokens", "0"),
    ("bench", "encode", "--decode-batch", "0"),
    ("bench", "encode", "--dtype", "float16"),
    ("bench", "encode", "--peer", "someone"),
    ("bench", "encode", "--side-batch", "0"),
    ("bench", "encode", "--rounds", "0"),
    ("bench", "serve", "--agents", "0"),
    ("bench", "serve", "--level-seconds", "nan"),
    ("bench", "serve", "--max-new-tokens", "0"),
    ("bench", "serve", "--out", "{afile}"),
    ("bench", "mteb"),
    ("bench", "mteb", "--mini", "--size", "0"),
    ("bench", "mteb", "--mini", "--batch-size", "0"),
    ("bench", "mteb", "--mini", "--head", "{missing}"),
    ("bench", "mteb", "--mini", "--tasks", "A"),
    ("bench", "suite", "--batch-size", "0"),
    ("bench", "suite", "--num-cpus", "0"),
    ("bench", "suite", "--head", "{missing}"),
    ("bench", "suite", "--resume", "{missing}"),
    ("bench", "suite", "--profile", "huge"),
    ("bench", "train", "--run", "{missing}"),
    ("bench", "train", "--run", "{emptydir}", "--batches", "0"),
    ("bench", "train", "--run", "{emptydir}", "--micro-batch", "0"),
    ("bench", "train", "--run", "{emptydir}", "--in-context-share", "2"),
    ("bench", "train", "--run", "{emptydir}", "--threads", "0"),
    ("bench", "train", "--run", "{emptydir}"),
    ("bench", "positions", "--run", "{missing}"),
    ("bench", "positions", "--run", "{emptydir}", "--samples", "0"),
    ("bench", "positions", "--run", "{emptydir}"),
    ("bench", "positions", "--run", "{emptydir}", "--response-tokens", "1"),
    ("bench", "train", "--run", "{emptydir}", "--rounds", "0"),
    ("bench", "train", "--run", "{emptydir}", "--cut-responses", "-1"),
]


def _argv(template: tuple[str, ...], files: dict[str, str]) -> list[str]:
    return [arg.format(**files) for arg in template]


def test_at_least_a_hundred_hostile_invocations() -> None:
    assert len(HOSTILE) >= 100 and len(set(HOSTILE)) == len(HOSTILE)


@pytest.mark.parametrize("template", HOSTILE, ids=lambda t: " ".join(t)[:80])
def test_hostile_invocation_gets_one_line_and_status_2(template, files, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    status = cli_main(_argv(template, files))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and lines[0].startswith("latentcomm") and "error:" in lines[0], err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == [] and list(Path(files["out"]).iterdir()) == []  # nothing written


@pytest.mark.parametrize("template", [
    ("bench", "protocol", "--repeat", "0"),
    ("queries", "--source", "{deep}", "--out", "{out}"),
    ("run", "--task", "gsm8k", "--offset", "100000"),
    ("train", *RUN_ARGS, "--lr", "inf"),
], ids=lambda t: " ".join(t[:2]))
def test_no_traceback_reaches_the_terminal(template, files, tmp_path) -> None:
    done = subprocess.run([sys.executable, "-m", "latentcomm.cli", *_argv(template, files)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr


def test_debug_shows_the_traceback_and_bugs_keep_theirs(files, monkeypatch, capsys) -> None:
    assert cli_main(["--debug", "bench", "protocol", "--repeat", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("latentcomm bench protocol: error:")
    import latentcomm.training.queries as queries

    def bug(argv):
        raise KeyError("a bug")

    monkeypatch.setattr(queries, "main", bug)
    with pytest.raises(KeyError):
        cli_main(["queries"])


def test_bench_help_lists_the_benchmarks(capsys) -> None:
    assert cli_main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("encode", "protocol", "handoff", "mteb", "suite", "train"))


def test_generate_writes_no_manifest_before_its_settings_validate(files, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "queries.jsonl").write_text(json.dumps({"id": "a", "text": "hi", "split": "train"}) + "\n")
    for bad in (["--shard-size", "0"], ["--max-new-tokens", "-5"], ["--top-p", "0"]):
        assert cli_main(["generate", "--run", str(run), *bad]) == 2
        assert not (run / "responses").exists()
    from latentcomm.training.responses import GenerationConfig

    with pytest.raises(ValueError, match="shard_size"):
        GenerationConfig(shard_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=-5)


# ---- silent wrong results -----------------------------------------------------------------------------------
def test_a_prompt_that_leaves_no_query_room_is_refused_and_a_small_room_warned(tiny_model) -> None:
    budget = tiny_model.config.max_query_tokens
    with pytest.raises(ValueError, match="no room is left for the query"):
        tiny_model.compress(["bake sourdough", "quantum entanglement"], prompt="word " * budget)
    def room(prompt: str) -> int:
        return budget - sum(map(len, tiny_model.layout.template(prompt)))

    short = next(p for p in ("word " * k for k in range(1, budget)) if 0 < room(p) < MIN_QUERY_TOKENS)
    with pytest.warns(UserWarning, match="leave only"):
        tiny_model.compress(["bake sourdough"], prompt=short)


def test_non_finite_or_negative_training_settings_are_refused() -> None:
    from latentcomm.training.config import TrainConfig

    for bad in ({"lr": float("inf")}, {"lr": float("nan")}, {"recon_weight": float("nan")},
                {"align_weight": float("inf")}, {"train_limit": -5}, {"train_limit": 0}, {"threads": -1},
                {"cpus_per_worker": -1.0}, {"stop_after": 0}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_evaluate_refuses_a_negative_decode_limit() -> None:
    from latentcomm.training.evaluate import evaluate

    with pytest.raises(ValueError, match="decode_limit"):
        evaluate("no-run", decode_limit=-1)


def test_run_offsets_past_or_before_the_questions_are_refused() -> None:
    from latentcomm.tasks.gsm8k import load_gsm8k

    with pytest.raises(ValueError, match="past the last"):
        load_gsm8k(1, offset=100_000)
    with pytest.raises(ValueError, match="offset"):
        load_gsm8k(1, offset=-5)


def test_a_huge_finite_latent_and_a_wrong_n_are_refused(tiny_model) -> None:
    latent = tiny_model.compress(["hello"])
    huge = Latent(torch.full_like(latent.vectors, 3e38), latent.fingerprint, latent.backbone_id)
    with pytest.raises(LatentError, match="not finite"):
        tiny_model.embed_latent(huge)
    n = HEAD.num_compression
    wrong_n = Latent(latent.vectors.repeat(1, 50 // n + 1, 1)[:, :50], latent.fingerprint, latent.backbone_id)
    with pytest.raises(LatentError, match="50 vectors"):
        tiny_model.embed_latent(wrong_n)


def test_compress_refuses_non_finite_outputs_and_no_non_finite_head_is_saved(tiny, tmp_path) -> None:
    model = GenerativeEmbedder(tiny, HEAD, seed=0)
    with torch.no_grad():
        for p in model.head.recon.parameters():
            p.fill_(3e38)
    with pytest.raises(LatentError, match="NaN or Inf"):
        model.compress(["hello"])
    with torch.no_grad():
        next(model.head.parameters()).fill_(float("nan"))
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.save_pretrained(tmp_path / "head")
    assert not (tmp_path / "head").exists()


@pytest.mark.parametrize("options", [{"temperature": float("nan")}, {"top_p": 0}, {"top_p": -1},
                                     {"max_new_tokens": 10**12}, {"max_new_tokens": 10**8}])
def test_decode_bounds_sampling_and_length(tiny_model, options) -> None:
    latent = tiny_model.compress(["hello"])
    with pytest.raises(ValueError):
        tiny_model.decode(latent, **options)


async def test_a_reused_message_id_with_other_content_is_an_error_the_sender_hears() -> None:
    from latentcomm.actors.agent import Agent
    from latentcomm.engine.messaging import address

    key = os.urandom(32)  # correctly signed messages: the signature says nothing about a reused id
    alice, bob = Agent("alice", pool=None, key=key), Agent("bob", pool=None, key=key)  # text needs no model
    first = address(LatentMessage.from_text("bake sourdough"), message_id="m-1")
    assert await alice.send_message(bob, first) == "bake sourdough"
    forged = address(LatentMessage.from_text("quantum entanglement"), message_id="m-1")
    with pytest.raises(ConflictingMessageError, match="m-1"):
        await alice.send_message(bob, forged)
    data = pack(address(LatentMessage.from_text("bake bread"), message_id="m-2", sender="alice", recipient="bob"),
                key=key)
    assert await bob.receive(data) == await bob.receive(data) == "bake bread"  # a true re-send: handled once
    assert len(bob.trace) == 2 and bob.duplicates == 1 and bob.rejected == 1


def _frames(count: int) -> tuple[list[LatentMessage], bytes]:
    import io

    messages = [LatentMessage.from_array(np.full((3, 4), i, np.float32)) for i in range(count)]
    buffer = io.BytesIO()
    for m in messages:
        write_message(buffer, m)
    return messages, buffer.getvalue()


def test_a_non_blocking_stream_loses_no_frame() -> None:
    messages, data = _frames(5)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)

    def trickle() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as w:
            for start in range(0, len(data), 37):
                w.write(data[start:start + 37])
                time.sleep(0.002)

    writer = threading.Thread(target=trickle)
    writer.start()
    with os.fdopen(read_fd, "rb", buffering=0) as r:
        got = list(read_messages(r))
    writer.join()
    assert [m.message_id for m in got] == [m.message_id for m in messages]


def test_a_non_blocking_writer_writes_whole_frames() -> None:
    messages = [LatentMessage.from_array(np.full((200, 100), i, np.float32)) for i in range(3)]  # 80 KB each
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    got: list[LatentMessage] = []

    def drain() -> None:
        with os.fdopen(read_fd, "rb") as r:
            for m in read_messages(r):
                got.append(m)
                time.sleep(0.01)

    reader = threading.Thread(target=drain)
    reader.start()
    with os.fdopen(write_fd, "wb", buffering=0) as w:  # a raw stream: write() returns None when the pipe is full
        for m in messages:
            write_message(w, m)
    reader.join()
    assert [m.message_id for m in got] == [m.message_id for m in messages]


def test_a_stream_without_a_file_descriptor_that_returns_none_is_polled() -> None:
    messages, data = _frames(3)

    class Flaky:
        def __init__(self) -> None:
            self.pos, self.calls = 0, 0

        def read(self, n: int) -> bytes | None:
            self.calls += 1
            if self.calls % 2:
                return None  # nothing yet, as a non-blocking stream says
            chunk = data[self.pos:self.pos + min(n, 11)]
            self.pos += len(chunk)
            return chunk

    assert [m.message_id for m in read_messages(Flaky())] == [m.message_id for m in messages]


@pytest.mark.parametrize("wrap", [bytearray, lambda b: memoryview(bytearray(b)),
                                  lambda b: memoryview(bytearray(b)).toreadonly()])
def test_unpacking_a_mutable_buffer_does_not_alias_it(wrap) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    buffer = wrap(pack(LatentMessage.from_array(x)))
    message = unpack(buffer)
    before = message.array().copy()
    target = buffer.obj if isinstance(buffer, memoryview) else buffer
    target[-8:] = b"\xff" * 8
    np.testing.assert_array_equal(message.array(), before)


def test_the_new_errors_share_the_root() -> None:
    from latentcomm import LatentcommError

    assert issubclass(UsageError, LatentcommError) and issubclass(ConflictingMessageError, LatentcommError)


@pytest.mark.parametrize("source", [None, "", "  ", 3, "./no-such-model", "/no/such/model", "runs/x/model"])
def test_a_backbone_that_is_no_model_is_refused_in_one_line_without_a_hub_lookup(source) -> None:
    from latentcomm.model.backbone import load_backbone

    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_backbone(source)
    assert "\n" not in str(err.value) and ("backbone" in str(err.value))
