"""Training pipeline on the tiny random model: queries, resumable generation, targets, DeepSpeed loop, evaluation."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from latentcomm.errors import UsageError
from latentcomm.model.config import HeadConfig
from latentcomm.training.config import TRAIN_HEAD, TrainConfig
from latentcomm.training.queries import (Query, complete_json_items, file_queries, read_queries, split_queries,
                                         write_queries)
from latentcomm.training.responses import GenerationConfig, generate_responses, read_responses, shard_path
from latentcomm.training.targets import compute_targets, targets_path

TINY_TRAIN = ["--teacher", "self", "--num-thought", "2", "--num-compression", "3", "--max-query-tokens", "64",
              "--max-response-tokens", "24", "--micro-batch", "4", "--warmup-steps", "1", "--lr", "3e-3",
              "--threads", "1", "--in-context-share", "0.5", "--align-fit", "0"]


def _queries(n: int) -> list[Query]:
    return [Query(f"q{i}", f"question {i}: what is {i} plus {3 * i}, and why is the sky blue?") for i in range(n)]


# ---- queries ----------------------------------------------------------------------------------------------
def test_truncated_json_array_yields_complete_items_only():
    text = json.dumps([{"id": 1, "x": "a]"}, {"id": 2}, {"id": 3, "x": "cut"}])[:-12]
    assert [item["id"] for item in complete_json_items(text)] == [1, 2]


def test_split_is_deterministic_disjoint_and_order_free():
    pool = _queries(30)
    a = split_queries(pool, heldout=5, train=20, seed=1)
    b = split_queries(list(reversed(pool)), heldout=5, train=20, seed=1)
    assert a == b
    held = {q.id for q in a if q.split == "heldout"}
    train = {q.id for q in a if q.split == "train"}
    assert len(held) == 5 and len(train) == 20 and not held & train
    assert split_queries(pool, heldout=5, seed=2) != split_queries(pool, heldout=5, seed=1)
    with pytest.raises(ValueError, match="no training queries"):
        split_queries(pool, heldout=30)


def test_extra_training_queries_leave_the_heldout_split_alone():
    pool, extra = _queries(30), [Query(f"x{i}", f"extra question {i}") for i in range(10)]
    plain = split_queries(pool, heldout=5, seed=1)
    with_extra = split_queries(pool, heldout=5, seed=1, extra=[*extra, Query("dup", pool[0].text), extra[0]])
    held = [q for q in with_extra if q.split == "heldout"]
    assert held == [q for q in plain if q.split == "heldout"]
    train_ids = [q.id for q in with_extra if q.split == "train"]
    assert train_ids[:25] == [q.id for q in plain if q.split == "train"]
    assert sorted(train_ids[25:]) == sorted(q.id for q in extra)  # the duplicate text and the repeat are dropped
    assert len(split_queries(pool, heldout=5, train=27, seed=1, extra=extra)) == 32


def test_custom_query_files(tmp_path):
    jsonl = tmp_path / "q.jsonl"
    jsonl.write_text('{"id": "a", "text": "hello"}\n{"query": "world"}\n{"text": "hello"}\n')
    assert [q.text for q in file_queries(jsonl)] == ["hello", "world"]
    txt = tmp_path / "q.txt"
    txt.write_text("one\n\ntwo\n")
    assert [q.text for q in file_queries(txt)] == ["one", "two"]
    (tmp_path / "bad.jsonl").write_text('{"nope": 1}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        file_queries(tmp_path / "bad.jsonl")


# ---- generation and targets ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_backbone_dir, ray_local) -> Path:
    """A run directory on the tiny backbone: 40 queries (8 held out), sampled responses, 'self' targets."""
    run = tmp_path_factory.mktemp("tiny_run")
    queries = split_queries(_queries(40), heldout=8)
    write_queries(queries, run / "queries.jsonl")
    config = GenerationConfig(str(tiny_backbone_dir), max_new_tokens=10, temperature=1.0, shard_size=16,
                              batch_size=8)
    generate_responses(queries, run / "responses", config, replicas=2, cpus_per_replica=0.5)
    compute_targets(run / "responses", "self")
    return run


@pytest.mark.slow
def test_generation_skips_finished_shards_and_never_duplicates(tiny_run, tiny_backbone_dir):
    out = tiny_run / "responses"
    queries = read_queries(tiny_run / "queries.jsonl")
    first = read_responses(out)
    assert [r["id"] for r in first] == [q.id for q in queries]
    config = GenerationConfig(str(tiny_backbone_dir), max_new_tokens=10, temperature=1.0, shard_size=16, batch_size=8)
    kept = shard_path(out, 0).stat().st_mtime_ns
    shard_path(out, 2).unlink()  # as if the job had been killed before the last shard finished
    with pytest.raises(ValueError, match="32 of 40"):
        read_responses(out)
    generate_responses(queries, out, config, replicas=1, cpus_per_replica=0.5)
    assert shard_path(out, 0).stat().st_mtime_ns == kept
    assert read_responses(out) == first  # seeded sampling: the regenerated shard is identical
    with pytest.raises(ValueError, match="other settings"):
        generate_responses(queries, out, GenerationConfig(str(tiny_backbone_dir), max_new_tokens=7, shard_size=16))



@pytest.mark.slow
def test_responses_export_and_import_round_trip(tiny_run, tmp_path):
    from latentcomm.training.responses import export_responses, import_responses

    archive = export_responses(tiny_run, tmp_path / "set.jsonl.gz")
    out = import_responses(archive, tmp_path / "again", shard_size=7)
    assert read_responses(out) == read_responses(tiny_run / "responses")
    assert read_queries(tmp_path / "again" / "queries.jsonl") == read_queries(tiny_run / "queries.jsonl")
    assert json.loads((out / "manifest.json").read_text()) == json.loads(
        (tiny_run / "responses" / "manifest.json").read_text())
    (tmp_path / "other").mkdir()
    write_queries([Query("zz", "another query")], tmp_path / "other" / "queries.jsonl")
    with pytest.raises(ValueError, match="other queries"):
        import_responses(archive, tmp_path / "other")


@pytest.mark.slow
def test_targets_are_cached_unit_vectors(tiny_run):
    targets = compute_targets(tiny_run / "responses", "self")
    assert targets.embeddings.shape == (40, 64)
    np.testing.assert_allclose(np.linalg.norm(targets.embeddings, axis=1), 1.0, rtol=1e-5)
    stamp = targets_path(tiny_run / "responses", "self").stat().st_mtime_ns
    compute_targets(tiny_run / "responses", "self")
    assert targets_path(tiny_run / "responses", "self").stat().st_mtime_ns == stamp
    assert len(read_queries(tiny_run / "queries.jsonl", "heldout")) == 8


# ---- training ---------------------------------------------------------------------------------------------
def _train(args: list[str], status: int = 0) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "latentcomm.cli", "train", *args], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == status, done.stderr[-3000:]
    return done


def _head(out: Path) -> dict:
    return load_file(out / "head" / "head.safetensors")


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tiny_run, tiny_backbone_dir, tmp_path_factory) -> tuple[Path, list[str]]:
    """4 optimizer steps of 2 x 4 queries (gradient accumulation 2) in one plain process."""
    out = tmp_path_factory.mktemp("uninterrupted")
    args = ["--run", str(tiny_run), "--backbone", str(tiny_backbone_dir), *TINY_TRAIN, "--max-steps", "4"]
    _train([*args, "--grad-accum", "2", "--out", str(out)])
    return out, args


@pytest.mark.slow
def test_single_process_training_learns_and_writes_outputs(uninterrupted):
    out, _ = uninterrupted
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert records[-1]["align"] < records[0]["align"]
    assert (out / "loss.png").stat().st_size > 0
    from latentcomm.model.embedder import GenerativeEmbedder

    model = GenerativeEmbedder.from_pretrained(out / "head", backbone=str(Path(json.loads(
        (out / "train_config.json").read_text())["backbone"])))
    assert model.config.num_compression == 3 and model.config.embed_dim == 64


@pytest.mark.slow
def test_training_ends_with_a_closed_form_align_head(tiny_run, tiny_backbone_dir, tmp_path):
    from latentcomm.model.embedder import GenerativeEmbedder

    args = ["--run", str(tiny_run), "--backbone", str(tiny_backbone_dir), *TINY_TRAIN, "--max-steps", "1",
            "--out", str(tmp_path)]
    _train([*args, "--align-fit", "32"])
    fit = json.loads((tmp_path / "summary.json").read_text())["align_fit"]
    assert fit["rows"] == 32 and fit["validation_mse"] > 0
    model = GenerativeEmbedder.from_pretrained(tmp_path / "head", backbone=str(tiny_backbone_dir))
    plain = tmp_path / "plain"
    _train([*args[:-1], str(plain)])
    assert not np.allclose(_head(tmp_path)["align.1.weight"].numpy(), _head(plain)["align.1.weight"].numpy())
    assert model.config.embed_dim == 64


@pytest.mark.slow
def test_a_loss_that_stops_being_finite_stops_training_and_saves_no_head(uninterrupted, tmp_path):
    _, args = uninterrupted
    out = tmp_path / "diverged"
    done = _train([*args, "--lr", "1e30", "--out", str(out)], status=2)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("latentcomm train: error: step ") and "the loss is" in last, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and not (out / "head").exists()


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_uninterrupted(uninterrupted, tmp_path):
    reference, args = uninterrupted
    _train([*args, "--grad-accum", "2", "--out", str(tmp_path), "--stop-after", "2"])
    assert not (tmp_path / "head").exists()
    assert len(_losses(tmp_path)) == 2
    _train([*args, "--grad-accum", "2", "--out", str(tmp_path), "--resume"])
    assert _losses(tmp_path) == pytest.approx(_losses(reference), rel=1e-6)
    expected, got = _head(reference), _head(tmp_path)
    for name in expected:
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), rtol=0, atol=1e-7, err_msg=name)


@pytest.mark.slow
def test_ray_train_two_workers_match_gradient_accumulation(uninterrupted, tmp_path):
    """2 workers x micro-batch 4 see the same global batches as 1 process x 4 x accumulation 2."""
    from latentcomm.training.train import train_with_ray

    reference, args = uninterrupted
    ap = __import__("latentcomm.cli.parser", fromlist=["parser"]).parser("train", "")
    TrainConfig.add_arguments(ap)
    cfg = TrainConfig.from_args(ap.parse_args([*args, "--out", str(tmp_path), "--workers", "2",
                                               "--cpus-per-worker", "0.5"]))
    summary = train_with_ray(cfg)
    assert summary["total_steps"] == 4
    assert _losses(tmp_path) == pytest.approx(_losses(reference), rel=1e-4)
    expected, got = _head(reference), _head(tmp_path)
    parameters = [name for name in expected if "running_" not in name and "num_batches" not in name]
    assert parameters  # normalisation statistics are per rank (rank 0's are saved), parameters are shared
    for name in parameters:
        np.testing.assert_allclose(got[name].numpy(), expected[name].numpy(), atol=1e-4, err_msg=name)


@pytest.mark.slow
def test_evaluate_reports_every_method(uninterrupted, tiny_run, tiny_backbone_dir, tmp_path):
    from latentcomm.training.evaluate import evaluate, plot_evaluation
    from latentcomm.training.fidelity import retrieval_scores

    out, _ = uninterrupted
    result = evaluate(tiny_run, out / "head", backbone=str(tiny_backbone_dir), decode_limit=3, max_new_tokens=4)
    assert set(result["retrieval"]) == {"trained head", "untrained head", "teacher (self) on query",
                                        "mean-pooled backbone (query) vs self teacher"}
    for scores in result["retrieval"].values():
        assert 0 <= scores["r@1"] <= scores["mrr"] <= 1 and scores["n"] == 8
    assert set(result["reconstruction"]) == {"trained head", "untrained head"}
    rows = {(r["row"], r["source"]) for r in result["fidelity"]}
    assert rows == {(row, head) for row in ("decode", "in context", "floor: other latent")
                    for head in ("trained head", "untrained head")} | {
        ("floor: no message", "-"), ("reference: query text", "-"), ("ceiling: response text", "-")}
    for row in result["fidelity"]:
        assert -1 <= row["cosine"] <= 1 and 0 <= row["r_at_1"] <= 1 and 0 <= row["loops"] <= 1 and row["n"] == 3
    assert plot_evaluation(result, tmp_path / "eval.png").stat().st_size > 0
    perfect = retrieval_scores(np.eye(4), np.eye(4))
    assert perfect["r@1"] == perfect["mrr"] == 1.0

    from latentcomm.training.release import release

    (tmp_path / "eval.json").write_text(json.dumps(result))
    commands = "latentcomm train --run tiny"
    dest = release(out, out / "head", tmp_path, tmp_path / "shipped", until_step=None, commands=commands, notes="")
    assert {p.name for p in dest.iterdir()} >= {"config.json", "head.safetensors", "metrics.jsonl", "loss.png",
                                                "eval.json", "eval.png", "train_config.json", "TRAINING.md"}
    card = (dest / "TRAINING.md").read_text()
    trained = result["retrieval"]["trained head"]
    assert commands in card and f"| trained head | {trained['r@1']:.3f} | {trained['mrr']:.3f} |" in card
    assert "8 held out; 32 used for training" in card


@pytest.mark.slow
def test_evaluate_restatement_only_writes_the_table(uninterrupted, tiny_run, tiny_backbone_dir, tmp_path):
    from latentcomm.errors import UsageError
    from latentcomm.training.evaluate import main as evaluate_main
    from latentcomm.training.restatement import BOUND, CEILING

    out, _ = uninterrupted
    with pytest.raises(UsageError, match="needs --restatement N"):
        evaluate_main(["--run", str(tiny_run), "--head", str(out / "head"), "--restatement-only"])
    assert evaluate_main(["--run", str(tiny_run), "--head", str(out / "head"), "--backbone", str(tiny_backbone_dir),
                          "--restatement", "2", "--restatement-only", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "restatement.json").read_text())
    assert {(r["set"], r["row"]) for r in rows} == {(s, row) for s in ("held-out notes", "held-out ShareGPT queries")
                                                    for row in (CEILING, "trained head", "untrained head", BOUND)}
    assert all(r["n"] == 2 and 0 <= r["exact"] <= 1 and 0 <= r["token_accuracy"] <= 1 for r in rows)
    assert not (tmp_path / "eval.json").exists() and "| set | latent |" in (tmp_path / "restatement.md").read_text()


def test_grounded_samples_hold_their_response_and_are_drawn_deterministically():
    from latentcomm.training.grounding import grounded_query

    assert grounded_query("k", "Why?", "Because.", 0.0) == "Why?"
    grounded = [grounded_query(f"0:0:{i}", "Why?", "Because.", 0.5) for i in range(200)]
    assert all("Because." in g for g in grounded if g != "Why?") and 70 < sum(g != "Why?" for g in grounded) < 130
    assert grounded == [grounded_query(f"0:0:{i}", "Why?", "Because.", 0.5) for i in range(200)]
    assert all(grounded_query(f"{i}", "Why?", "Because.", 1.0) != "Why?" for i in range(20))
    with pytest.raises(ValueError, match="grounding share"):
        grounded_query("k", "q", "r", 1.5)
    with pytest.raises(ValueError, match="grounding_share"):
        TrainConfig(grounding_share=-0.1)


def _one_still_step(uninterrupted, out: Path, *extra: str) -> tuple[dict, dict, list[str]]:
    """One step at a learning rate of 1e-9 from the saved head of ``uninterrupted``: that head's tensors, the new
    run's, and the names of the trained weights (not the running statistics)."""
    reference, args = uninterrupted
    _train([*args, "--max-steps", "1", "--init-head", str(reference / "head"), *extra, "--align-fit", "0", "--lr",
            "1e-9", "--warmup-steps", "0", "--out", str(out)])
    before = _head(reference)
    return before, _head(out), [k for k in before if "running_" not in k and "num_batches" not in k]


@pytest.mark.slow
def test_a_run_starts_from_a_saved_head_and_refuses_another_shape(uninterrupted, tmp_path):
    reference, args = uninterrupted
    before, after, weights = _one_still_step(uninterrupted, tmp_path / "warm", "--grounding-share", "0.5")
    assert before.keys() == after.keys()
    assert len(weights) >= 3 and all(np.allclose(before[k].numpy(), after[k].numpy(), atol=1e-5) for k in weights)
    done = _train([*args, "--max-steps", "1", "--init-head", str(reference / "head"), "--num-compression", "4",
                   "--out", str(tmp_path / "other")], status=2)
    assert "another head shape" in done.stderr and "num_compression" in done.stderr
    done = _train([*args, "--init-head", str(tmp_path / "nowhere"), "--out", str(tmp_path / "none")], status=2)
    assert done.stderr.strip().splitlines()[-1].startswith("latentcomm train: error: no head at")
    assert "Traceback" not in done.stderr


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="zero_stage"):
        TrainConfig(zero_stage=4)
    with pytest.raises(ValueError, match="head_dtype"):
        TrainConfig(head_dtype="float16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights_dtype"):
        TrainConfig(weights_dtype="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_compression"):
        TrainConfig(head=HeadConfig(num_compression=0))
    with pytest.raises(ValueError, match="embed_dim"):
        TrainConfig(head=HeadConfig(embed_dim=8))  # the teacher's width, set by training
    assert TrainConfig(micro_batch=4, grad_accum=3, workers=2).deepspeed_config()["train_batch_size"] == 24


def test_train_config_holds_the_head_config_with_one_flag_per_field(tmp_path):
    from latentcomm.cli.parser import parser

    ap = parser("train", "")
    TrainConfig.add_arguments(ap)
    args = ["--run", str(tmp_path), "--out", str(tmp_path / "out")]
    cfg = TrainConfig.from_args(ap.parse_args([*args, "--num-compression", "3", "--max-query-tokens", "64",
                                               "--teacher", "self", "--weights-dtype", "float32",
                                               "--head-dtype", "bfloat16"]))
    assert cfg.head == dataclasses.replace(TRAIN_HEAD, num_compression=3, max_query_tokens=64, teacher="self")
    assert cfg.weights_dtype == "float32" and cfg.torch_weights_dtype is torch.float32
    assert cfg.deepspeed_config()["bf16"]["enabled"] and TrainConfig().torch_weights_dtype is None
    assert TrainConfig.from_args(ap.parse_args(args)).head == TRAIN_HEAD
    assert (TRAIN_HEAD.max_query_tokens, TRAIN_HEAD.max_response_tokens) == (256, 96)  # training's own defaults
    with pytest.raises(UsageError, match="--num-compression"):
        TrainConfig.from_args(ap.parse_args([*args, "--num-compression", "0"]))
    with pytest.raises(UsageError):
        ap.parse_args([*args, "--embed-dim", "8"])  # the teacher's width: no flag
    narrow = parser("train", "")
    TrainConfig.add_arguments(narrow, exclude=("max_response_tokens",))
    assert TrainConfig.from_args(narrow.parse_args(args)).head.max_response_tokens == 96  # not HeadConfig's 256
    assert cfg.head_config(384) == dataclasses.replace(cfg.head, embed_dim=384)
    assert TrainConfig(head=HeadConfig(teacher="/models/my-teacher")).head_config(8).teacher == "my-teacher"


def test_train_configs_of_older_runs_still_load(tmp_path):
    """The flat form saved before the head was a HeadConfig (the shipped head's train_config.json) loads."""
    from latentcomm.model.embedder import DEFAULT_HEAD_DIR

    old = TrainConfig.load(DEFAULT_HEAD_DIR / "train_config.json")
    assert old.head == dataclasses.replace(TRAIN_HEAD, max_response_tokens=64)
    assert (old.weights_dtype, old.head_dtype, old.split_prefix, old.workers) == (None, "float32", True, 2)
    assert TrainConfig.from_dict(old.to_dict()) == old
    old.save(tmp_path / "train_config.json")
    assert TrainConfig.load(tmp_path / "train_config.json") == old
    flat = {"backbone_dtype": "bf16", "precision": "bf16", "teacher": "self", "num_compression": 4}
    assert TrainConfig.from_dict(flat) == TrainConfig(weights_dtype="bfloat16", head_dtype="bfloat16",
                                                      head=dataclasses.replace(TRAIN_HEAD, teacher="self",
                                                                               num_compression=4))


def test_objectives_are_drawn_per_key_and_notes_carry_no_target():
    from latentcomm.training.objectives import RESTATE_INSTRUCTIONS, draw_objective, make_sample

    drawn = [draw_objective(f"0:0:{i}", 0.3, 0.2) for i in range(2000)]
    assert drawn == [draw_objective(f"0:0:{i}", 0.3, 0.2) for i in range(2000)]
    shares = {o: drawn.count(o) / len(drawn) for o in ("restate", "qa", "response")}
    assert abs(shares["restate"] - 0.3) < 0.04 and abs(shares["qa"] - 0.2) < 0.04
    assert all(draw_objective(f"{i}", 0.0, 0.0) == "response" for i in range(50))
    samples = [make_sample(f"1:0:{i}", "Why is the sky blue today?", "Rayleigh.", ("A", "B"), restate_share=0.3,
                           qa_share=0.3, restate_text="Why is the sky") for i in range(300)]
    for s in samples:
        if s.objective == "response":
            assert (s.query, s.response, s.instruction, s.aligned) == ("Why is the sky blue today?", "Rayleigh.",
                                                                       ("A", "B"), True)
        elif s.objective == "restate":
            assert s.query == s.response == "Why is the sky" and s.instruction in RESTATE_INSTRUCTIONS and s.aligned
        else:
            assert not s.aligned and s.response.rstrip(".") in s.query and "?" in s.instruction[1]
    assert len({s.query for s in samples if s.objective == "qa"}) > 50
    with pytest.raises(ValueError, match="restate_share"):
        TrainConfig(restate_share=0.7, qa_share=0.5)
    with pytest.raises(ValueError, match="restate_words"):
        TrainConfig(restate_words=0)


def test_alignment_skips_samples_without_a_target(tiny_model):
    import torch

    queries, responses = ["one query", "another query", "a third"], ["an answer", "more", "last one"]
    targets = torch.randn(3, tiny_model.head.embed_dim)
    full = tiny_model(queries, responses, targets)
    masked = targets.clone()
    masked[1] = float("nan")
    with_nan = tiny_model(queries, responses, masked)
    kept = tiny_model([queries[0], queries[2]], [responses[0], responses[2]], targets[[0, 2]], recon_weight=0.0)
    assert with_nan.align == pytest.approx(kept.align, rel=1e-5) and with_nan.align != pytest.approx(full.align)
    assert with_nan.recon == pytest.approx(full.recon, rel=1e-6)
    none = tiny_model(queries, responses, torch.full_like(targets, float("nan")))
    assert none.align == 0.0 and torch.isfinite(none.loss)


@pytest.mark.slow
def test_a_run_of_every_objective_resumes_exactly(uninterrupted, tmp_path):
    _, args = uninterrupted
    mix = ["--restate-share", "0.4", "--qa-share", "0.4", "--in-context-share", "0.5", "--max-steps", "2"]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    _train([*args, *mix, "--out", str(whole)])
    _train([*args, *mix, "--out", str(resumed), "--stop-after", "1"])
    _train([*args, *mix, "--out", str(resumed), "--resume"])
    assert _losses(resumed) == pytest.approx(_losses(whole), rel=1e-6)
    assert all(np.isfinite(_losses(whole)))
    config = json.loads((whole / "train_config.json").read_text())
    assert (config["restate_share"], config["qa_share"]) == (0.4, 0.4)
    records = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    split = {k for r in records for k in r if k.startswith("recon_")}
    assert split and split <= {"recon_response", "recon_restate", "recon_qa"}
    assert all(np.isfinite(r[k]) and r[k] > 0 for r in records for k in split if k in r)


def test_forward_reports_each_samples_loss_and_their_token_weighted_mean(tiny_model):
    queries, responses = ["What is two plus two?", "Name a colour."], ["Four.", "Blue, or perhaps a deep green."]
    targets = torch.zeros(2, tiny_model.head.embed_dim)
    out = tiny_model(queries, responses, targets, align_weight=0.0)
    counts = [len(ids) for ids in tiny_model.response_ids(responses)]
    assert len(out.recon_rows) == 2 and counts[1] > counts[0]
    assert out.recon == pytest.approx(sum(r * c for r, c in zip(out.recon_rows, counts)) / sum(counts), rel=1e-5)
    alone = [tiny_model([q], [r], targets[:1], align_weight=0.0).recon for q, r in zip(queries, responses)]
    assert list(out.recon_rows) == pytest.approx(alone, abs=1e-4)


def test_restatement_table_has_the_ceiling_every_head_and_the_bound(tiny_model):
    from latentcomm.model.optimise import OptimiseConfig
    from latentcomm.training.restatement import (BOUND, CEILING, heldout_sets, restatement_table, table_markdown,
                                                 token_accuracy)

    sets = heldout_sets(2, ["one two three four five six", "seven eight nine"], words=4)
    assert sets["held-out ShareGPT queries"] == ["one two three four", "seven eight nine"]
    assert len(sets["held-out notes"]) == 2
    rows = restatement_table({"trained head": tiny_model, "other": tiny_model}, sets, bound_of="trained head",
                             optimise=OptimiseConfig(steps=2), max_new_tokens=4, batch_size=2)
    assert [(r.set, r.row) for r in rows] == [(s, row) for s in sets for row in (CEILING, "trained head", "other",
                                                                                  BOUND)]
    for r in rows:
        assert r.n == 2 and 0 <= r.exact <= 1 and 0 <= r.token_accuracy <= 1
        assert r.exact_ci95[0] <= r.exact <= r.exact_ci95[1]
    assert "| held-out notes | text (ceiling) | 2 |" in table_markdown(rows)
    assert token_accuracy(tiny_model, "The quick brown fox", "The quick brown fox") == 1.0
    assert token_accuracy(tiny_model, "", "The quick brown fox") == 0.0


@pytest.mark.slow
def test_a_head_without_lora_starts_a_run_that_adds_it(uninterrupted, tmp_path):
    _, args = uninterrupted
    out = tmp_path / "lora"
    before, after, weights = _one_still_step(uninterrupted, out, "--encoder-lora-rank", "2")
    assert set(after) - set(before) and all(k.startswith("encoder_lora.") for k in set(after) - set(before))
    assert all(np.allclose(before[k].numpy(), after[k].numpy(), atol=1e-5) for k in weights)
    done = _train([*args, "--max-steps", "1", "--init-head", str(out / "head"), "--out", str(tmp_path / "back")],
                  status=2)
    assert "another head shape" in done.stderr and "encoder_lora_rank" in done.stderr


def test_the_new_objectives_train_only_the_head(tiny_model):
    import torch

    from latentcomm.training.objectives import make_sample

    samples = [make_sample(f"0:0:{i}", "What is the capital of France?", "Paris.", None, restate_share=0.5,
                           qa_share=0.5, restate_text="What is the capital") for i in range(12)]
    assert {s.objective for s in samples} == {"restate", "qa"}
    targets = torch.randn(len(samples), tiny_model.head.embed_dim)
    targets[[not s.aligned for s in samples]] = float("nan")
    out = tiny_model([s.query for s in samples], [s.response for s in samples], targets,
                     instructions=[s.instruction for s in samples])
    out.loss.backward()
    assert out.recon > 0 and out.align > 0 and torch.isfinite(out.loss)
    for name, param in tiny_model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert tiny_model.head.special.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in tiny_model.backbone.model.parameters())
