"""Research jobs on the tiny model: the chain tasks, a 2-step latent chain end to end, every JEPA variant's head."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from latentcomm.experiments.chain_tasks import ChainTask, extract_answer, is_correct, make_tasks, step_result
from latentcomm.experiments.chain_train import ChainData
from latentcomm.training.config import TrainConfig
from latentcomm.training.queries import Query, split_queries, write_queries
from latentcomm.training.responses import MANIFEST, RESPONSES_DIR, write_shard
from latentcomm.training.targets import compute_targets

STEP = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)\.$")
TINY = ["--num-thought", "2", "--num-compression", "3", "--micro-batch", "4", "--max-steps", "2", "--warmup-steps",
        "1", "--threads", "1", "--max-response-tokens", "16"]


# ---- tasks ---------------------------------------------------------------------------------------------------
def test_tasks_are_deterministic_disjoint_and_solved_by_their_steps():
    train, test = make_tasks(("relations", "arithmetic"), 3, 30, 6, seed=0)
    assert (train, test) == make_tasks(("relations", "arithmetic"), 3, 30, 6, seed=0)
    assert {t.question for t in train}.isdisjoint({t.question for t in test})
    assert len(test) == 2 * 3 * 6 and {(t.family, t.hops) for t in test} == {
        (f, h) for f in ("relations", "arithmetic") for h in (1, 2, 3)}
    for task in train + test:
        assert task.hops == len(task.steps) and task.step(task.hops + 2) == task.steps[-1]
        assert is_correct(task.steps[-1], task) and step_result(task, task.hops) == task.answer
        if task.family == "arithmetic":
            value = int(task.question.split()[2].rstrip("."))
            for step in task.steps:
                a, op, b, result = STEP.match(step).groups()
                assert int(a) == value and eval(f"{a} {op} {b}") == int(result)
                value = int(result)
            assert str(value) == task.answer
        else:
            for earlier, later in zip(task.steps, task.steps[1:]):
                assert later.startswith(earlier.split(" is ")[-1].rstrip("."))
            assert f"of {task.steps[0].split(chr(39))[0]}?" in task.question and task.answer in task.names


def test_answers_are_read_from_the_end_of_the_text():
    task = ChainTask("t", "relations", "q", ("Kalo's mentor is Mine.", "Mine's mentor is Ruta."), "Ruta",
                     ("Kalo", "Mine", "Ruta", "Vozi"))
    assert is_correct("Mine's mentor is Ruta.", task) and not is_correct("Ruta's mentor is Mine.", task)
    assert is_correct("First Kalo, then Mine.\nAnswer: Ruta", task)
    assert extract_answer("nobody", task) is None and not is_correct("", task)
    numbers = ChainTask("n", "arithmetic", "q", ("4 + 3 = 7.",), "7")
    assert is_correct("4 + 3 = 7", numbers) and is_correct("Answer: 7.0", numbers)
    assert not is_correct("7, or maybe 8", numbers)
    with pytest.raises(ValueError, match="families"):
        make_tasks(("riddles",), 2, 1, 1, 0)


def test_chain_samples_follow_the_curriculum_and_the_seed():
    train, _ = make_tasks(("relations",), 3, 10, 1, seed=1)
    data = ChainData(train, embeddings=None, index={}, max_hops=3, curriculum=True)  # type: ignore[arg-type]
    cfg = TrainConfig(micro_batch=32, seed=3)
    assert [data.stage(s, 30) for s in (0, 9, 10, 20, 29)] == [1, 1, 2, 3, 3]
    for step in (0, 15, 29):
        samples = data.samples(cfg, step, 0, 0, 30)
        assert samples == data.samples(cfg, step, 0, 0, 30)
        assert all(1 <= k <= min(data.stage(step, 30), t.hops + 1) for t, k in samples)
    assert data.samples(cfg, 29, 0, 0, 30) != data.samples(cfg, 29, 0, 1, 30)
    assert max(k for _, k in data.samples(cfg, 29, 0, 0, 30)) == 3
    assert len(data) == sum(min(t.hops + 1, 3) for t in train)


def test_an_experiment_recorded_with_the_flat_train_config_resumes(tmp_path):
    """experiment.json written before TrainConfig held a HeadConfig is read in today's form on --resume."""
    from latentcomm.experiments.chain import ChainConfig
    from latentcomm.experiments.jobs import SETTINGS, prepare_folder, settings_of

    settings = settings_of(ChainConfig(train=TrainConfig(out=str(tmp_path))))
    old = json.loads(json.dumps(settings))
    head = old["train"].pop("head")
    old["train"].update({k: v for k, v in head.items() if k not in ("embed_dim", "chat_template")})
    old["train"].update(backbone_dtype="auto", precision="fp32")
    del old["train"]["weights_dtype"], old["train"]["head_dtype"]
    (tmp_path / SETTINGS).write_text(json.dumps(old))
    prepare_folder(tmp_path, settings, resume=True)
    old["train"]["max_response_tokens"] = 7
    (tmp_path / SETTINGS).write_text(json.dumps(old))
    with pytest.raises(ValueError, match="other settings"):
        prepare_folder(tmp_path, settings, resume=True)


def test_the_committed_reports_regenerate_from_their_results():
    from latentcomm.experiments import chain, jepa

    for name, module in (("chain", chain), ("jepa", jepa)):
        folder = Path(__file__).resolve().parent.parent / "reports" / name
        results = json.loads((folder / "results.json").read_text())
        assert module.markdown(results) == (folder / "report.md").read_text(), name


# ---- latent chaining end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_step_chain_runs_end_to_end_and_resumes(tiny_backbone_dir, ray_local, tmp_path):
    from latentcomm.experiments import chain

    out = tmp_path / "chain"
    argv = ["--out", str(out), "--backbone", str(tiny_backbone_dir), "--teacher", "self", "--max-hops", "2",
            "--train-per-hops", "6", "--test-per-hops", "2", "--workers", "1", "--cpus-per-worker", "0.5",
            "--max-new-tokens", "4", "--cot-tokens", "6", "--shard-size", "3", "--batch-size", "4", *TINY]
    assert chain.main(argv) == 0
    report = out / "report"
    results = json.loads((report / "results.json").read_text())
    assert results["questions"] == 8 and results["training"]["steps"] == 2
    assert (out / "train" / "ray").is_dir()  # trained under Ray Train
    methods = results["methods"]
    assert list(methods) == ["direct", "text CoT", "latent chain ×1 → answer", "latent chain ×2 → answer",
                             "latent chain ×hops → answer", "latent chain ×1 → decode", "latent chain ×2 → decode",
                             "latent chain ×hops → decode", "ceiling: gold steps as text"]
    for name, row in methods.items():
        assert row["n"] == 8 and 0 <= row["accuracy"] <= 1 and row["passes_per_question"] >= 1, name
        assert set(row["by_hops"]) == {"1", "2"} and set(row["by_family"]) == {"arithmetic", "relations"}
    assert methods["direct"]["passes_per_question"] <= 4 and methods["text CoT"]["passes_per_question"] <= 6
    assert 2 <= methods["latent chain ×1 → answer"]["passes_per_question"] <= 5
    assert 3 <= methods["latent chain ×2 → decode"]["passes_per_question"] <= 6
    assert all(methods[m]["seconds_per_question"] > 0 for m in ("direct", "text CoT", "latent chain ×2 → answer"))
    text = (report / "report.md").read_text()
    assert "| text CoT |" in text and "| direct |" in text and "latent chain ×2 → answer" in text
    lo, hi = methods["direct"]["interval"]
    assert lo <= methods["direct"]["accuracy"] <= hi and "McNemar p =" in text
    assert set(results["paired"]["latent chain ×2 → answer"]) == {"direct", "text CoT"}
    assert {p.name for p in report.glob("*.png")} == {"accuracy_by_hops.png", "cost_accuracy.png",
                                                      "step_head_loss.png"}
    shards = sorted((out / "eval").glob("shard-*.json"))
    assert len(shards) == 3
    stamps = [p.stat().st_mtime_ns for p in shards]
    with pytest.raises(FileExistsError, match="--resume"):
        chain.main(argv)
    assert chain.main([*argv, "--resume"]) == 0
    assert [p.stat().st_mtime_ns for p in shards] == stamps  # nothing was recomputed
    with pytest.raises(ValueError, match="test_per_hops"):
        chain.main([*argv, "--resume", "--test-per-hops", "3"])


# ---- full JEPA -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jepa_run(tmp_path_factory, tiny_backbone_dir) -> Path:
    """A run directory on the tiny backbone: 36 queries (12 held out), responses, MiniLM and self targets."""
    run = tmp_path_factory.mktemp("jepa_run")
    topics = ["tea", "rain", "chess", "bread", "tides", "orbit"]
    queries = split_queries([Query(f"q{i}", f"How do I think about {topics[i % 6]} number {i}?") for i in range(36)],
                            heldout=12)
    write_queries(queries, run / "queries.jsonl")
    responses = run / RESPONSES_DIR
    responses.mkdir()
    (responses / MANIFEST).write_text(json.dumps({"generation": {"backbone": str(tiny_backbone_dir)},
                                                  "queries": "-", "count": len(queries)}))
    write_shard(responses / "shard-00000.jsonl", [
        {"id": q.id, "split": q.split, "query": q.text, "response": f"Think of {q.text.split()[-3]} as a story."}
        for q in queries])
    for teacher in ("minilm", "self"):
        compute_targets(responses, teacher)
    return run


@pytest.mark.slow
def test_every_jepa_variant_trains_and_saves_a_loadable_head(jepa_run, tiny_backbone_dir, tmp_path):
    from test_bench import write_fixture_data

    from latentcomm import GenerativeEmbedder
    from latentcomm.model.backbone import load_backbone
    from latentcomm.experiments.jepa import VARIANTS

    home = tmp_path / "home"
    write_fixture_data(home / "data")
    out = tmp_path / "jepa"
    env = dict(os.environ, LATENTCOMM_HOME=str(home), PYTHONWARNINGS="ignore")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    argv = ["experiment", "jepa", "--run", str(jepa_run), "--out", str(out), "--backbone", str(tiny_backbone_dir),
            "--workers", "0", "--lora-rank", "2", "--suite-profile", "tiny", "--suite-tasks",
            "MiniMultiEmoClassification", "--suite-baselines", "meanpool", "--heldout", "12",
            "--fidelity-queries", "6", "--max-new-tokens", "4", "--num-cpus", "2", "--max-query-tokens", "64",
            "--in-context-share", "0.5", *TINY]
    done = subprocess.run([sys.executable, "-m", "latentcomm.cli", *argv], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    bb = load_backbone(str(tiny_backbone_dir))
    plain = GenerativeEmbedder(bb, seed=0)
    for name, variant in VARIANTS.items():
        head = GenerativeEmbedder.from_pretrained(out / "heads" / name / "head", backbone=bb)
        assert head.config.teacher == variant.teacher
        assert head.config.encoder_lora_rank == (2 if variant.lora else 0)
        records = [json.loads(line) for line in (out / "heads" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records] == [1, 2]
        assert all((r["recon"] == 0) == (variant.recon_weight == 0) for r in records), name
        if variant.align_loss == "cosine":
            assert all(0 <= r["align"] <= 2 for r in records)
    lora = GenerativeEmbedder.from_pretrained(out / "heads" / "self+recon+lora" / "head", backbone=bb)
    assert any(p.abs().sum() > 0 for p in (a.up.weight for a in lora.head.encoder_lora.adapters))  # it trained
    latent = lora.compress(["How do I think about tea?", "And rain?"])
    assert lora.decode(latent, max_new_tokens=6) == plain.decode(latent, max_new_tokens=6)
    assert lora.respond(["And rain?"], max_new_tokens=6) == plain.respond(["And rain?"], max_new_tokens=6)

    report = out / "report"
    results = json.loads((report / "results.json").read_text())
    assert set(results["variants"]) == set(VARIANTS)
    sources = {(r["source"], r["row"]) for r in results["fidelity"]}
    assert {(n, "decode") for n in VARIANTS} <= sources and ("-", "ceiling: response text") in sources
    assert set(results["suite"]["categories"]["Classification"]) == {*VARIANTS, "meanpool-backbone"}
    for name in VARIANTS:
        assert results["heldout"][name]["retrieval"]["n"] == 12
    text = (report / "report.md").read_text()
    assert "ceiling: response text" in text and "self+recon+lora" in text and "decodable" in text
    assert {p.name for p in report.glob("*.png")} == {"suite.png", "fidelity.png", "training.png"}
